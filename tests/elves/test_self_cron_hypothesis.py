"""The agent's self-cron methods take whatever the network sends: they
answer ``{"ok": true}`` or an INVALID_PARAMS error, never raise, and keep
nothing they refused."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetrpc.agent.crons import SelfCrons
from fleetrpc.services.elves.clock import ManualClock

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
entries = st.fixed_dictionaries(
    {}, optional={"Rule": st.sampled_from(["0 * * * * ?", "0/10 * * * * ?", "* * * *", "0 0 12 ? * 6L"]) | st.text(max_size=30),
                  "App": st.text(max_size=10) | st.integers(), "Func": st.text(max_size=10),
                  "Flag": st.sampled_from(["true", "false", "1"]) | st.integers(), "Timeout": json_values,
                  "Param": st.text(max_size=10) | st.integers(), "Extra": json_values})
params = st.fixed_dictionaries({}, optional={"id": st.text(max_size=70) | st.integers(), "cron": entries | json_values}) | json_values


async def _run(p) -> None:  # never awaited: the loop is not started
    raise AssertionError("no firing here")


@settings(max_examples=300, deadline=None)
@given(p=params, d=params)
def test_self_cron_methods_never_raise(p, d):
    crons = SelfCrons(None, _run, clock=ManualClock(1.9e9), timezone="UTC")
    answer = crons.on_set(p)
    assert answer == {"ok": True} or answer["error"]["code"] == "INVALID_PARAMS"
    assert len(crons.entries) == (1 if answer == {"ok": True} else 0)
    listing = crons.listing()
    assert len(listing) == len(crons.entries)
    answer = crons.on_delete(d)
    assert answer == {"ok": True} or answer["error"]["code"] == "INVALID_PARAMS"
