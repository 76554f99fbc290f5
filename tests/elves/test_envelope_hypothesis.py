"""Property-based tests of what the network feeds the Elves parser and router."""

from __future__ import annotations

import asyncio
import re

import msgspec
from hypothesis import given, settings, strategies as st

from fleetrpc.services.elves.envelope import Instruction, parse_envelope
from fleetrpc.services.elves.errors import ElvesError
from fleetrpc.services.elves.router import Alias, ElvesCall, ElvesRouter

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
ERROR = re.compile(r"^\[\d{3}(\.\d+)?\]\S")


def _router() -> ElvesRouter:
    r = ElvesRouter()

    async def strict(env, call):
        class Args(msgspec.Struct):
            agentip: str
            ins: Instruction

        args = env.args(Args)
        args.ins.normalised()
        return {"ok": 1}

    r.register("scheduler", "sendSync", strict)
    r.register("scheduler", "sendAsync", strict, aliases=[Alias("sendsync", when=lambda e: e.get("async") is True)])
    return r


ROUTER = _router()


def _dispatch(body):
    return asyncio.run(ROUTER.dispatch(body, ElvesCall()))


def _check_reply(reply):
    assert reply["mqt"] == "back" and reply["flag"] in ("true", "false")
    assert isinstance(reply["mqs"], str) and isinstance(reply["mqf"], str)
    if reply["flag"] == "false":
        assert ERROR.match(reply["error"]), reply["error"]
    msgspec.json.encode(reply)  # always serialisable


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_get_a_reply(payload):
    _check_reply(_dispatch(payload))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["call", "back", "CALL", "x", 1, None]),
    st.sampled_from(["scheduler", "sheduler", "SCHEDULER", "nope", "", 3]),
    st.sampled_from(["sendSync", "sendsync", "SENDASYNC", "nope", "", None]),
    st.dictionaries(st.sampled_from(["agentip", "ins", "async", "key", "x"]), json_values, max_size=4),
)
def test_any_envelope_gets_a_reply(mqt, mqs, mqf, args):
    body = {**args}
    for name, value in (("mqt", mqt), ("mqs", mqs), ("mqf", mqf)):
        if value is not None:
            body[name] = value
    reply = _dispatch(body)
    _check_reply(reply)
    # And the same through JSON bytes.
    _check_reply(_dispatch(msgspec.json.encode(body)))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["app", "func", "mode", "param", "timeout", "proxy", "x"]), json_values, max_size=6))
def test_instruction_is_normalised_or_refused_with_a_403(ins):
    env = parse_envelope({"mqt": "call", "mqs": "scheduler", "mqf": "sendSync", "agentip": "1.2.3.4", "ins": ins})

    class Args(msgspec.Struct):
        agentip: str
        ins: Instruction

    try:
        n = env.args(Args).ins.normalised()
    except ElvesError as err:
        assert err.code.startswith("403."), err
        return
    assert n.mode in ("P", "NP") and isinstance(n.param, str) and isinstance(n.timeout, int) and n.timeout >= 0
    assert n.app and n.func and "/" not in n.app


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["sendSync", "sendAsync", "sendsync"]), st.booleans(), st.randoms())
def test_names_are_case_insensitive(name, is_async, rnd):
    written = "".join(c.upper() if rnd.random() < 0.5 else c.lower() for c in name)
    env = parse_envelope({"mqt": "call", "mqs": "sheduler", "mqf": written, "async": is_async})
    ROUTER.resolve(env)
    if name.lower() == "sendsync":
        # sendSync in any case is the seed's ambiguous name: the arguments decide.
        assert env.function == ("sendAsync" if is_async else "sendSync")
    else:
        assert env.function == name
