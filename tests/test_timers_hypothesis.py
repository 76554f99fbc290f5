"""Property tests for the TimingWheel and the PendingTable.

The same random operation sequences go to the variant under test (``core``),
to the pure twin when that variant is the compiled one, and to a trivially
correct model (a dict and a sorted list).  Every outcome is compared, errors
included (type and message): the variants must agree exactly (handles, order
of results), and both must agree with the model.  On top of the model, the
contract itself is checked with exact rational arithmetic: nothing fires
before its deadline, nothing is more than one tick late, nothing due is lost.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from fleetrpc import _core
from fleetrpc.errors import UnknownRequestError, WrongDeviceError

from .helpers.wheel_time import tick_start

SETTINGS = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    database=None,  # nothing written into the tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

TICKS = st.sampled_from([0.001, 0.005, 0.01, 0.0037, 1.0, 1 / 3])
DAY = 86400.0


def outcome(fn, *args):
    """What a call did: ("ok", result) or ("err", type, message)."""
    try:
        return ("ok", fn(*args))
    except Exception as e:  # noqa: BLE001 - every error is an outcome
        return ("err", type(e), str(e))


def same(outcomes):
    first = outcomes[0]
    for o in outcomes[1:]:
        assert o == first
    return first


def impls_of(core, cls_name):
    """The variant under test, then the pure twin when testing the compiled one."""
    out = [getattr(core, cls_name)]
    if core.name != "py":
        out.append(_core.VARIANTS["py"][cls_name])
    return out


def offsets(tick):
    """Deadline offsets from the wheel's time, at every scale the wheel has."""
    ticks = st.integers(-3, 2**34).map(lambda k: k * tick)  # exact tick multiples
    return st.one_of(
        st.floats(-2 * tick, 3 * tick),  # around now, across tick borders
        ticks,
        ticks.map(lambda x: math.nextafter(x, -math.inf)),
        st.floats(0, 300 * tick),  # level 0 / 1
        st.floats(0, 2.0**20 * tick),  # levels 1-2
        st.floats(0, 2.0**33 * tick),  # level 3 and overflow
        st.sampled_from([DAY, 30 * DAY, 49.7 * DAY, 60 * DAY, 365 * DAY]),
    )


def steps(tick):
    return st.one_of(
        st.floats(0, 2 * tick),
        st.integers(0, 600).map(lambda k: k * tick),
        st.floats(0, 2.0**17 * tick),
        st.floats(0, 2.0**34 * tick),
        st.sampled_from([DAY, 31 * DAY]),
        st.floats(-5 * tick, 0),  # backwards: returns []
    )


BAD_TIMES = st.sampled_from([math.nan, math.inf, -math.inf, 1e300, "1.0", None])


# -- the model ------------------------------------------------------------------------------


class ModelWheel:
    """Trivially correct: a dict key -> (deadline, due tick, payload).

    An entry is due in tick floor(d / tick) + 1, or in the wheel's current tick
    when d is not later than the wheel's time; advance returns what is due,
    sorted by due tick (the order within a tick is not the model's business).
    """

    def __init__(self, tick: float, now: float):
        self.tick = tick
        self.now = now
        self.entries: dict[object, tuple[float, int, int]] = {}

    def cur(self) -> int:
        return math.floor(self.now / self.tick)

    @staticmethod
    def as_float(x):
        if isinstance(x, str) or x is None:
            raise TypeError(f"must be real number, not {type(x).__name__}")
        return float(x)

    def check_time(self, what, t):
        q = t / self.tick
        if not -(2.0**62) < q < 2.0**62:
            raise ValueError(f"{what} must be finite and within 2**62 ticks of 0, got {t!r}")

    def schedule(self, key, d, payload):
        d = self.as_float(d)
        if not isinstance(payload, int):
            raise TypeError(f"payload must be an int, got {type(payload).__name__}")
        if not 0 <= payload < 2**63:
            raise ValueError(f"payload must be in [0, 2**63), got {payload!r}")
        self.check_time("deadline", d)
        due = self.cur() if d <= self.now else math.floor(d / self.tick) + 1
        self.entries[key] = (d, due, payload)

    def advance(self, now):
        now = self.as_float(now)
        self.check_time("now", now)
        if now < self.now:
            return []
        self.now = now
        cur = self.cur()
        due = sorted((e[1], k) for k, e in self.entries.items() if e[1] <= cur)
        return [(k, self.entries.pop(k)) for _, k in due]


def check_contract(tick, now, fired, pending):
    """The contract, exactly: never early, at most one tick late, nothing lost."""
    fnow, ftick = Fraction(now), Fraction(tick)
    for d, _, _ in fired:
        assert Fraction(d) <= fnow, "fired early"
    for d, _, _ in pending:
        assert fnow < Fraction(d) + ftick, "more than one tick late"


def check_order(results, model_fired):
    """Same payloads as the model; ascending by due tick."""
    due_of = {e[2]: e[1] for _, e in model_fired}
    assert sorted(results) == sorted(due_of)
    dues = [due_of[p] for p in results]
    assert dues == sorted(dues)


# -- TimingWheel ---------------------------------------------------------------------------------


def wheel_machine(core):
    classes = impls_of(core, "TimingWheel")

    class WheelMachine(RuleBasedStateMachine):
        @initialize(tick=TICKS, start=st.floats(-1e6, 1e9))
        def setup(self, tick, start):
            self.tick = tick
            self.wheels = [cls(tick, start) for cls in classes]
            self.model = ModelWheel(tick, start)
            self.handles: list[int] = []  # every handle ever issued (most are stale later)
            self.key_of: dict[int, int] = {}  # live handle -> model key
            self.serial = 0

        def all(self, name, *args):
            return same([outcome(getattr(w, name), *args) for w in self.wheels])

        @rule(data=st.data())
        def schedule(self, data):
            offset = data.draw(offsets(self.tick))
            d = self.model.now + offset
            self.serial += 1
            got = self.all("schedule", d, self.serial)
            expected = outcome(self.model.schedule, self.serial, d, self.serial)
            if got[0] == "ok":
                assert expected[0] == "ok"
                assert got[1] > 0 and got[1] not in self.key_of
                self.handles.append(got[1])
                self.key_of[got[1]] = self.serial
            else:
                assert got == expected

        @rule(data=st.data(), n=st.integers(2, 10))
        def schedule_many(self, data, n):
            for _ in range(n):
                self.schedule(data)

        @rule(bad_time=BAD_TIMES, payload=st.sampled_from([-1, 2**63, 2**64, "7", 1.5, True, 0]))
        def schedule_bad(self, bad_time, payload):
            for d, p in ((bad_time, 1), (1.0, payload), (bad_time, payload)):
                got = self.all("schedule", d, p)
                if got[0] == "ok":  # a valid pair (True / 0 with a fine deadline)
                    assert self.all("cancel", got[1]) == ("ok", True)
                    continue
                key = object()
                assert got == outcome(self.model.schedule, key, d, p)
                self.model.entries.pop(key, None)

        @rule(data=st.data())
        def cancel(self, data):
            if self.handles and data.draw(st.booleans()):
                h = data.draw(st.sampled_from(self.handles))
            else:
                h = data.draw(st.integers(-(2**64), 2**64))
            got = self.all("cancel", h)
            key = self.key_of.pop(h, None)
            assert got == ("ok", key is not None)
            if key is not None:
                del self.model.entries[key]

        def _advance(self, now):
            before = self.model.now
            got = self.all("advance", now)
            expected = outcome(self.model.advance, now)
            if got[0] == "err":
                assert got == expected
                return
            assert expected[0] == "ok"
            results, model_fired = got[1], expected[1]
            check_order(results, model_fired)
            if now >= before:  # not a step backwards (which returns [])
                check_contract(self.tick, self.model.now, [e for _, e in model_fired],
                               self.model.entries.values())
            fired = set(results)
            for h in [h for h, k in self.key_of.items() if k in fired]:
                del self.key_of[h]

        @rule(data=st.data())
        def advance(self, data):
            self._advance(self.model.now + data.draw(steps(self.tick)))

        @rule(bad=BAD_TIMES.filter(lambda x: x != 1e300))
        def advance_bad(self, bad):
            self._advance(bad)

        @rule()
        def advance_to_first_due(self):
            # Straight to the first tick with something due (deadlines may
            # be days away).
            if self.model.entries:
                first = min(due for _, due, _ in self.model.entries.values())
                self._advance(max(self.model.now, tick_start(first, self.tick)))

        @precondition(lambda self: len(self.model.entries) > 0)
        @rule()
        def clear(self):
            assert self.all("clear") == ("ok", None)
            self.model.entries.clear()
            self.key_of.clear()

        @invariant()
        def agree(self):
            if not hasattr(self, "model"):
                return
            assert self.all("__len__") == ("ok", len(self.model.entries))
            assert same([("ok", w.now) for w in self.wheels]) == ("ok", self.model.now)

    return WheelMachine


def test_wheel_agrees_with_model(core):
    run_state_machine_as_test(wheel_machine(core), settings=SETTINGS)


# -- PendingTable ----------------------------------------------------------------------------------


class ModelTable:
    """Trivially correct: a dict rid -> [device, completion, flags] and a model wheel."""

    def __init__(self, tick: float, now: float):
        self.wheel = ModelWheel(tick, now)
        self.entries: dict[int, list] = {}
        self.next_rid = 1

    @staticmethod
    def check_rid(rid):
        if not isinstance(rid, int):
            raise TypeError(f"rid must be an int, got {type(rid).__name__}")

    @staticmethod
    def check_flags(flags):
        if not isinstance(flags, int):
            raise TypeError(f"flags must be an int, got {type(flags).__name__}")
        if not 0 <= flags < 2**32:
            raise ValueError(f"flags must be in [0, 2**32), got {flags!r}")
        return int(flags)

    def get(self, rid):
        if rid not in self.entries:
            raise UnknownRequestError(f"request {rid!r} is not pending")
        return self.entries[rid]

    def add(self, device, completion, deadline, flags):
        deadline = ModelWheel.as_float(deadline)
        if not isinstance(device, str):
            raise TypeError(f"device must be a str, got {type(device).__name__}")
        flags = self.check_flags(flags)
        rid = self.next_rid
        self.wheel.schedule(rid, deadline, rid)
        self.next_rid += 1
        self.entries[rid] = [device, completion, flags]
        return rid

    def resolve(self, rid, device):
        self.check_rid(rid)
        if device is not None and not isinstance(device, str):
            raise TypeError(f"device must be a str or None, got {type(device).__name__}")
        e = self.get(rid)
        if device is not None and device != e[0]:
            raise WrongDeviceError(f"request {rid!r} belongs to device {e[0]!r}, not {device!r}")
        del self.entries[rid]
        del self.wheel.entries[rid]
        return e[1]

    def peek(self, rid):
        self.check_rid(rid)
        e = self.entries.get(rid)
        return None if e is None else tuple(e)

    def set_flags(self, rid, flags):
        self.check_rid(rid)
        flags = self.check_flags(flags)
        self.get(rid)[2] = flags

    def rearm(self, rid, deadline):
        deadline = ModelWheel.as_float(deadline)
        self.check_rid(rid)
        self.get(rid)
        old = self.wheel.entries.pop(rid)
        try:
            self.wheel.schedule(rid, deadline, rid)
        except Exception:
            self.wheel.entries[rid] = old
            raise

    def expire(self, now):
        return [(rid, *self.entries.pop(rid), e) for rid, e in self.wheel.advance(now)]

    def drain(self):
        out = [(rid, *e) for rid, e in sorted(self.entries.items())]
        self.entries.clear()
        self.wheel.entries.clear()
        return out


def table_machine(core):
    pairs = list(zip(impls_of(core, "TimingWheel"), impls_of(core, "PendingTable")))

    class TableMachine(RuleBasedStateMachine):
        @initialize(tick=TICKS, start=st.floats(0, 1e6))
        def setup(self, tick, start):
            self.tick = tick
            self.wheels = [w(tick, start) for w, _ in pairs]
            self.tables = [t(w) for (_, t), w in zip(pairs, self.wheels)]
            self.model = ModelTable(tick, start)
            self.seen: set[int] = set()  # every rid ever handed out

        def all(self, name, *args):
            return same([outcome(getattr(t, name), *args) for t in self.tables])

        def rids(self):
            live = sorted(self.model.entries)
            return st.one_of(
                st.sampled_from(live or [1]),
                st.sampled_from(live or [1]),
                st.sampled_from(sorted(self.seen) or [1]),
                st.integers(-3, max(self.seen, default=0) + 3),
                st.sampled_from([2**53, 2**63, 2**80, True]),
            )

        @rule(data=st.data(), device=st.sampled_from(["a", "b", "c", "dev/1"]),
              flags=st.integers(0, 2**32 - 1),
              completion=st.sampled_from([None, "done", ("future", 1), 42]))
        def add(self, data, device, flags, completion):
            d = self.model.wheel.now + data.draw(offsets(self.tick))
            got = self.all("add", device, completion, d, flags)
            assert got == outcome(self.model.add, device, completion, d, flags)
            if got[0] == "ok":
                rid = got[1]
                assert 0 < rid < 2**53 and rid not in self.seen  # ids never collide
                self.seen.add(rid)

        @rule(data=st.data(), n=st.integers(2, 8))
        def add_many(self, data, n):
            for i in range(n):
                self.add(data, device="abc"[i % 3], flags=i, completion=i)

        @rule(bad=st.sampled_from([b"a", 5, None]), deadline=BAD_TIMES,
              flags=st.sampled_from([-1, 2**32, 2**70, 1.5, "1", True]))
        def add_bad(self, bad, deadline, flags):
            for args in ((bad, 1, 1.0, 0), ("a", 1, deadline, 0), ("a", 1, 1.0, flags),
                         (bad, 1, deadline, flags)):
                got = self.all("add", *args)
                assert got == outcome(self.model.add, *args)
                if got[0] == "ok":
                    self.seen.add(got[1])

        @rule(data=st.data(), device=st.sampled_from([None, None, None, "a", "b", "zzz", 5]))
        def resolve(self, data, device):
            rid = data.draw(self.rids())
            assert self.all("resolve", rid, device) == outcome(self.model.resolve, rid, device)

        @rule(data=st.data())
        def peek_and_contains(self, data):
            rid = data.draw(self.rids())
            assert self.all("peek", rid) == outcome(self.model.peek, rid)
            assert self.all("__contains__", rid) == ("ok", rid in self.model.entries)

        @rule(data=st.data(), flags=st.one_of(st.integers(0, 9), st.sampled_from([2**32, "x"])))
        def set_flags(self, data, flags):
            rid = data.draw(self.rids())
            assert self.all("set_flags", rid, flags) == outcome(self.model.set_flags, rid, flags)

        @rule(data=st.data())
        def rearm(self, data):
            rid = data.draw(self.rids())
            d = data.draw(st.one_of(
                offsets(self.tick).map(lambda o: self.model.wheel.now + o), BAD_TIMES))
            assert self.all("rearm", rid, d) == outcome(self.model.rearm, rid, d)

        @rule(data=st.data())
        def expire(self, data):
            before = self.model.wheel.now
            now = before + data.draw(steps(self.tick))
            got = self.all("expire", now)
            expected = outcome(self.model.expire, now)
            if got[0] == "err":
                assert got == expected
                return
            results, model_fired = got[1], expected[1]
            assert sorted(results) == sorted(r[:4] for r in model_fired)
            dues = {r[0]: r[4][1] for r in model_fired}
            assert [dues[r[0]] for r in results] == sorted(dues[r[0]] for r in results)
            if now >= before:
                check_contract(self.tick, self.model.wheel.now, [r[4] for r in model_fired],
                               self.model.wheel.entries.values())

        @rule()
        def expire_first_due(self):
            entries = self.model.wheel.entries.values()
            if entries:
                nd = max(self.model.wheel.now, tick_start(min(due for _, due, _ in entries), self.tick))
                got = self.all("expire", nd)
                assert got[0] == "ok"
                assert sorted(got[1]) == sorted(r[:4] for r in self.model.expire(nd))

        @precondition(lambda self: len(self.model.entries) > 0)
        @rule()
        def drain(self):
            assert self.all("drain") == ("ok", self.model.drain())

        @invariant()
        def agree(self):
            if not hasattr(self, "model"):
                return
            assert self.all("__len__") == ("ok", len(self.model.entries))
            assert same([("ok", len(w)) for w in self.wheels]) == ("ok", len(self.model.entries))

    return TableMachine


def test_table_agrees_with_model(core):
    run_state_machine_as_test(table_machine(core), settings=SETTINGS)


@pytest.mark.parametrize("tick", [0.001, 0.005])
def test_rids_unique_over_many_adds(core, tick):
    """Ids stay unique and compact over a long add/resolve churn."""
    t = core.PendingTable(core.TimingWheel(tick))
    seen = set()
    live = []
    for i in range(20_000):
        rid = t.add("d", None, 1.0 + (i % 13) * 0.1)
        assert rid not in seen
        seen.add(rid)
        live.append(rid)
        if i % 3:
            t.resolve(live.pop(0))
    assert max(seen) == 20_000  # compact: exactly one id per add
    assert len(t) == len(live)


def test_variants_agree_across_pages(core):
    """Waves of thousands of calls in and out, across the 1,024-entry pages
    of the compiled pool and slab (paged.pxd), the slab freed whenever the
    table empties: both variants give the same rids, the same handles and
    the same results, and nothing pending is lost or returned twice."""
    rng = random.Random(1024)
    wheels = [cls(0.005) for cls in impls_of(core, "TimingWheel")]
    tables = [cls(w) for cls, w in zip(impls_of(core, "PendingTable"), wheels)]
    pending: set[int] = set()
    now = 0.0
    for wave in range(8):
        for i in range(rng.choice([700, 1023, 1025, 2047, 2049, 3100])):
            d = now + rng.uniform(0.0, 4.0)
            rid = same([outcome(t.add, f"d{i % 7}", None, d, i) for t in tables])[1]
            assert rid not in pending
            pending.add(rid)
        for rid in rng.sample(sorted(pending), len(pending) // 3):
            assert same([outcome(t.resolve, rid) for t in tables]) == ("ok", None)
            pending.discard(rid)
        for rid in rng.sample(sorted(pending), 50):
            assert same([outcome(t.rearm, rid, now + 5.0) for t in tables]) == ("ok", None)
        now += 2.0
        got = same([outcome(t.expire, now) for t in tables])[1]
        assert {g[0] for g in got} <= pending and len({g[0] for g in got}) == len(got)
        pending -= {g[0] for g in got}
        if wave % 3 == 2:  # empty: the compiled slab gives its pages back
            got = same([outcome(t.drain) for t in tables])[1]
            assert [g[0] for g in got] == sorted(pending)
            pending.clear()
        assert {len(t) for t in tables} == {len(pending)}
        assert all(rid in t for t in tables for rid in pending)
    got = same([outcome(t.drain) for t in tables])[1]
    assert [g[0] for g in got] == sorted(pending)
    assert {len(w) for w in wheels} == {0}
