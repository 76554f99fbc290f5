"""Job specifications, the reply aggregate and the rollout pacer (no I/O)."""

from __future__ import annotations

import json
import math

import msgspec

import pytest
from hypothesis import given, settings, strategies as st

from fleetrpc.errors import ValidationError
from fleetrpc.jobs import JobStatus, parse_rate, parse_spec
from fleetrpc.jobs.aggregate import MAX_DISTINCT, MAX_FIELDS, add_reply
from fleetrpc.jobs.engine import Pacer, classify
from fleetrpc.jobs.model import MAX_PER_MINUTE, ExponentialRate, Job, JobCounts, Rollout
from fleetrpc.errors import DeviceOfflineError, RpcTimeoutError


def spec(**over):
    body = {"targets": {"deviceIds": ["a", "b"]}, "method": "setValue", "params": 21}
    body.update(over)
    return body


def test_minimal_spec_has_defaults():
    s = parse_spec(spec())
    assert s.targets.selector() == ("deviceIds", ["a", "b"])
    assert s.rollout.max_per_minute is None and s.rollout.max_in_flight == 1000
    assert not s.persistent and not s.oneway and s.abort == []


def test_spec_from_json_bytes_uses_camel_case():
    s = parse_spec(json.dumps(spec(
        rollout={"maxPerMinute": 600, "maxInFlight": 10,
                 "exponentialRate": {"basePerMinute": 60, "incrementFactor": 2, "everySucceeded": 10}},
        abort=[{"failureType": "TIMED_OUT", "thresholdPercentage": 5, "minExecuted": 20}],
        cancelInFlight=True, expirationTime=123,
    )).encode())
    assert s.rollout.max_per_minute == 600 and s.rollout.exponential_rate.increment_factor == 2
    assert s.abort[0].failure_type.value == "TIMED_OUT" and s.cancel_in_flight and s.expiration_time == 123


@pytest.mark.parametrize("body, words", [
    (spec(targets={}), "exactly one of"),
    (spec(targets={"deviceType": "t", "label": "l"}), "exactly one of"),
    (spec(targets={"deviceIds": []}), "deviceIds is empty"),
    (spec(targets={"deviceType": " "}), "deviceType is empty"),
    (spec(targets={"bogus": 1}), "invalid job"),
    (spec(targets={"deviceType": "t\x00"}), "NUL"),
    (spec(targets={"deviceIds": ["a", "b\x00"]}), "NUL"),
    (spec(method=""), "method"),
    (spec(timeout=0), "timeout"),
    (spec(retries=-1), "retries"),
    (spec(rollout={"maxPerMinute": 0}), "maxPerMinute"),
    (spec(rollout={"maxInFlight": 0}), "maxInFlight"),
    (spec(abort=[{"thresholdPercentage": 101}]), "thresholdPercentage"),
    (spec(abort=[{"minExecuted": 0}]), "minExecuted"),
    (spec(abort=[{"failureType": "NOPE"}]), "invalid job"),
    (spec(rollout={"exponentialRate": {"basePerMinute": 1, "incrementFactor": 1, "everySucceeded": 1}}),
     "incrementFactor"),
])
def test_bad_specs_say_which_field(body, words):
    with pytest.raises(ValidationError, match=words):
        parse_spec(body)


def test_not_json_is_a_validation_error():
    with pytest.raises(ValidationError, match="not valid JSON"):
        parse_spec(b"{nope")


@settings(max_examples=300, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(
        ["targets", "method", "params", "rollout", "abort", "timeout", "deviceIds", "maxPerMinute",
         "maxInFlight", "thresholdPercentage", "failureType", "all", "persistent"]), c, max_size=5),
    max_leaves=20,
))
def test_any_input_is_accepted_or_a_validation_error(body):
    try:
        parse_spec(body)
    except ValidationError:
        pass


@pytest.mark.parametrize("text, per_min", [("100/s", 6000), ("5/min", 5), ("0.5/sec", 30), ("10 / minute", 10)])
def test_rates(text, per_min):
    assert parse_rate(text) == per_min


@pytest.mark.parametrize("text", ["100", "0/s", "-1/s", "1/h", "x/s"])
def test_bad_rates(text):
    with pytest.raises(ValidationError):
        parse_rate(text)


def test_aggregate_counts_enums_and_numbers():
    state: dict = {}
    for v in ["1.2", "1.2", "1.3"]:
        add_reply(state, {"fw": v, "temp": 20.5, "blob": "x" * 100, "nested": {"a": 1}})
    add_reply(state, True)
    assert state["fw"]["values"] == {"1.2": 2, "1.3": 1}
    assert state["temp"]["numeric"] == {"count": 3, "min": 20.5, "max": 20.5, "sum": 61.5}
    assert "blob" not in state and "nested" not in state
    assert state["$"]["values"] == {"true": 1}


def test_aggregate_overflows_past_max_distinct_but_keeps_numbers():
    state: dict = {}
    for i in range(MAX_DISTINCT + 5):
        add_reply(state, i)
    entry = state["$"]
    assert entry["overflow"] and entry["values"] == {} and entry["count"] == MAX_DISTINCT + 5
    assert entry["numeric"]["min"] == 0 and entry["numeric"]["max"] == MAX_DISTINCT + 4


def test_aggregate_keys_and_numbers_are_bounded():
    """A device's reply decides the aggregate's keys: a key (a field's name
    or a value's text) over 64 characters is not counted, as a string
    value over 64 characters never was.  A 100,000-character key was kept
    as a field, and an integer of 4,300 digits as a value's key, in every
    write of the job and in every view of it."""
    state: dict = {}
    add_reply(state, {"k" * 65: 1, "ok": 1, "n": 10 ** 70, "m": -(10 ** 64), "edge": 10 ** 63})
    add_reply(state, 10 ** 64)
    add_reply(state, {"k" * 100_000: "v"})
    assert set(state) == {"ok", "edge"}
    assert state["edge"]["values"] == {str(10 ** 63): 1}
    # however the devices answer, the aggregate stays small
    state = {}
    for i in range(2000):  # the most there can be: MAX_DISTINCT values of 64 characters a field
        add_reply(state, {f"{j:02d}" + "k" * 70 * (i % 2) + "x" * 62: "v" * 65 + str(i) for j in range(20)})
        add_reply(state, {f"{j:02d}" + "y" * 62: str(i % MAX_DISTINCT).rjust(64, "0") for j in range(20)})
        add_reply(state, 10 ** 63 + i % MAX_DISTINCT)
    assert len(state) == MAX_FIELDS + 1  # and "$", the scalar replies
    assert all(len(e["values"]) == MAX_DISTINCT for e in state.values())
    assert len(msgspec.json.encode(state)) < 48 * 1024


def test_aggregate_sum_past_the_largest_float_is_null_and_stays_null():
    """Two devices answering 1.7e308 made the sum infinity, which JSON has
    not: stored as null, and the next number after a restart (the state
    read back) failed the job with a TypeError.  Such a sum is null, in
    memory and stored, and stays null; count, min and max go on."""
    state: dict = {}
    add_reply(state, {"t": 1.7e308})
    add_reply(state, {"t": 1.7e308})
    assert state["t"]["numeric"]["sum"] is None
    state = msgspec.json.decode(msgspec.json.encode(state))  # stored and read back
    add_reply(state, {"t": -1.0})
    add_reply(state, {"t": 2})
    assert state["t"]["numeric"] == {"count": 4, "min": -1.0, "max": 1.7e308, "sum": None}


def test_job_json_has_thingsboard_counters():
    job = Job(id="j", tenant_id="t", customer_id=None, created_by=None, spec=parse_spec(spec()),
              status=JobStatus.RUNNING, counts=JobCounts(total=10, succeeded=4, failed=1, timed_out=1,
                                                          offline=1, skipped=2, cancelled=1))
    view = msgspec.to_builtins(job.to_json())
    r = view["result"]
    assert (r["successfulCount"], r["failedCount"], r["discardedCount"], r["totalCount"]) == (4, 3, 3, 10)
    assert view["id"] == {"entityType": "JOB", "id": "j"} and view["status"] == "RUNNING"
    assert view["configuration"]["targets"] == {"deviceIds": ["a", "b"]}


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_pacer_unlimited_gives_what_is_asked():
    p = Pacer(Rollout(), FakeClock())
    assert p.take(500, 0) == 500 and p.delay(0) is None


def test_pacer_holds_the_rate_over_a_simulated_minute():
    clock = FakeClock()
    p = Pacer(Rollout(max_per_minute=6000), clock)  # 100/s
    started = 0
    while clock.t < 60:
        started += p.take(1000, 0)
        clock.t += 0.0137  # an uneven wake-up period
    assert 6000 * 0.95 <= started <= 6000 * 1.05


def test_pacer_starts_in_batches_of_a_tick_yet_holds_the_rate():
    clock = FakeClock()
    p = Pacer(Rollout(max_per_minute=12000), clock)  # 200/s: batches of 10 (50 ms)
    assert p.take(1000, 0) == 1  # the first device at once
    sizes = []
    while clock.t < 60:
        clock.t += p.delay(0, 1000)
        n = p.take(1000, 0)
        if n:
            sizes.append(n)
    assert min(sizes) >= 10 and len(sizes) <= 60 * 20 + 1
    assert 12000 * 0.99 <= sum(sizes) + 1 <= 12000 * 1.01


def test_pacer_exponential_ramp_speeds_up_with_successes_and_respects_the_cap():
    ramp = ExponentialRate(base_per_minute=60, increment_factor=2, every_succeeded=10)
    p = Pacer(Rollout(max_per_minute=600, exponential_rate=ramp), FakeClock())
    assert p.rate(0) == 1.0 and p.rate(10) == 2.0 and p.rate(25) == 4.0
    assert p.rate(1000) == 10.0  # capped by maxPerMinute


def test_pacer_exponential_ramp_stops_at_the_highest_rate_instead_of_overflowing():
    # factor 2 every 10 successes: 2 ** 1024 is past a float, and the
    # OverflowError failed the job after its 10,240th success
    ramp = ExponentialRate(base_per_minute=60, increment_factor=2, every_succeeded=10)
    clock = FakeClock()
    p = Pacer(Rollout(exponential_rate=ramp), clock)
    assert p.rate(10_240) == p.rate(10**9) == MAX_PER_MINUTE / 60
    assert p.take(1000, 10_240) == 1
    clock.t += 1
    assert p.take(1000, 10_240) == 1000 and p.delay(10_240, 1000) > 0
    capped = Pacer(Rollout(max_per_minute=600, exponential_rate=ramp), FakeClock())
    assert capped.rate(10_240) == 10.0
    # a product past a float is inf, not an error: capped too
    steep = ExponentialRate(base_per_minute=MAX_PER_MINUTE, increment_factor=5, every_succeeded=1)
    assert Pacer(Rollout(exponential_rate=steep), FakeClock()).rate(440) == MAX_PER_MINUTE / 60


def test_classify_outcomes():
    assert classify(True, {"v": 1}, None)[0].value == "SUCCEEDED"
    assert classify(True, {"error": {"code": "X", "message": "m"}}, None)[0].value == "FAILED"
    assert classify(False, None, RpcTimeoutError("t"))[0].value == "TIMED_OUT"
    assert classify(False, None, DeviceOfflineError("o"))[0].value == "OFFLINE"
    assert classify(False, None, ValueError("v"))[0].value == "FAILED"


@given(st.uuids(), st.text(min_size=1, max_size=60))
def test_job_rpc_id_is_uuid5_of_job_and_device(job_id, device):
    # The stored persistent RPC ids of jobs started before the fast path
    # must be found again after an upgrade and a restart.
    import uuid

    from fleetrpc.jobs import job_rpc_id

    assert job_rpc_id(str(job_id), device) == str(uuid.uuid5(job_id, device))


def _aggregate_reference(state: dict, reply) -> None:
    """The aggregate's rules written plainly (what the fast path must keep)."""
    def scalar(v):
        if isinstance(v, str):
            return len(v) <= 64
        if isinstance(v, int) and not isinstance(v, bool):
            return len(str(v)) <= 64
        return isinstance(v, (bool, int, float)) and v == v

    def add(field, v):
        e = state.setdefault(field, {"count": 0, "values": {}, "overflow": False})
        e["count"] += 1
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            n = e.get("numeric")
            if n is None:
                e["numeric"] = {"count": 1, "min": v, "max": v, "sum": v}
            else:
                n["count"] += 1
                n["min"], n["max"] = min(n["min"], v), max(n["max"], v)
                if n["sum"] is not None:
                    n["sum"] += v
                    if n["sum"] in (math.inf, -math.inf):
                        n["sum"] = None
        if e["overflow"]:
            return
        key = v if isinstance(v, str) else ("true" if v is True else "false" if v is False
                                            else repr(v) if isinstance(v, float) else str(v))
        if key in e["values"]:
            e["values"][key] += 1
        elif len(e["values"]) < MAX_DISTINCT:
            e["values"][key] = 1
        else:
            e["overflow"], e["values"] = True, {}

    if isinstance(reply, dict):
        for k, v in reply.items():
            if len(k) <= 64 and scalar(v) and (k in state or len(state) < 16):
                add(k, v)
    elif scalar(reply):
        add("$", reply)


_scalars = st.one_of(st.booleans(), st.integers(-5, 5), st.floats(allow_infinity=False),
                     st.sampled_from(["a", "b", "1.2", "x" * 65, 10 ** 63, -(10 ** 63), 10 ** 64, -(10 ** 64),
                                     1.7e308, -1.7e308]),
                     st.none())
_replies = st.one_of(_scalars, st.dictionaries(st.sampled_from([f"k{i}" for i in range(20)] + ["k" * 65]),
                                               st.one_of(_scalars, st.lists(st.integers(), max_size=2))))


@given(st.lists(_replies, max_size=60))
def test_aggregate_matches_its_plain_rules(replies):
    fast: dict = {}
    plain: dict = {}
    for r in replies:
        add_reply(fast, r)
        _aggregate_reference(plain, r)
    assert json.dumps(fast, sort_keys=True) == json.dumps(plain, sort_keys=True)
