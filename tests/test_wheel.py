"""TimingWheel: the contract of docs/core.md, for both variants (``core``)."""

from __future__ import annotations

import math
import tracemalloc
from fractions import Fraction

import pytest

from .helpers.wheel_time import tick_start

DAY = 86400.0


def fire_tick(t: float, tick: float) -> int:
    """The tick in which an entry with deadline ``t`` is due (see wheel_py)."""
    return math.floor(t / tick) + 1


# -- construction -------------------------------------------------------------------


def test_defaults(core):
    w = core.TimingWheel()
    assert w.tick == 0.005
    assert w.now == 0.0
    assert len(w) == 0
    assert w.advance(1.0) == []
    assert w.now == 1.0
    assert repr(w) == "<TimingWheel tick=0.005 now=1.0 live=0>"


def test_tick_and_now_are_read_only(core):
    w = core.TimingWheel(0.001, 5.0)
    with pytest.raises(AttributeError):
        w.tick = 0.002
    with pytest.raises(AttributeError):
        w.now = 1.0
    assert (w.tick, w.now) == (0.001, 5.0)


@pytest.mark.parametrize("tick", [0, 0.0, -0.005, math.nan, math.inf, -math.inf])
def test_bad_tick(core, tick):
    with pytest.raises(ValueError) as e:
        core.TimingWheel(tick)
    assert str(e.value) == f"tick must be a positive finite number, got {float(tick)!r}"


def test_bad_types(core):
    with pytest.raises(TypeError, match="must be real number, not str"):
        core.TimingWheel("0.005")
    with pytest.raises(TypeError, match="must be real number, not NoneType"):
        core.TimingWheel(0.005, None)
    with pytest.raises(ValueError) as e:
        core.TimingWheel(0.005, math.nan)
    assert str(e.value) == "now must be finite and within 2**62 ticks of 0, got nan"


def test_int_arguments_are_floats(core):
    w = core.TimingWheel(1, 3)
    assert (w.tick, w.now) == (1.0, 3.0)
    assert type(w.tick) is float


# -- schedule / advance ---------------------------------------------------------------


def test_handles_positive_and_distinct(core):
    w = core.TimingWheel()
    handles = [w.schedule(1.0 + i * 0.01, i) for i in range(1000)]
    assert all(type(h) is int and h > 0 for h in handles)
    assert len(set(handles)) == 1000
    assert len(w) == 1000


@pytest.mark.parametrize("tick", [0.001, 0.005, 0.01, 0.0037, 1.0])
def test_never_early_at_most_one_tick_late(core, tick):
    w = core.TimingWheel(tick)
    deadlines = [i * tick / 7 for i in range(1, 400)] + [k * tick for k in range(1, 60)]
    for p, d in enumerate(deadlines):
        w.schedule(d, p)
    fired: dict[int, float] = {}
    now = 0.0
    step = tick / 5
    while len(fired) < len(deadlines):
        now += step
        for p in w.advance(now):
            assert p not in fired
            fired[p] = now
    for p, d in enumerate(deadlines):
        assert fired[p] >= d  # never early
        assert fired[p] < d + tick + step  # at the first advance at or after d + tick
        assert fired[p] == w_first_due(d, tick, step)


def w_first_due(d: float, tick: float, step: float) -> float:
    # The first of the test's advance times whose tick reaches d's due tick.
    k = fire_tick(d, tick)
    now = 0.0
    while True:
        now += step
        if math.floor(now / tick) >= k:
            return now


def test_past_deadline_due_at_next_advance(core):
    w = core.TimingWheel(0.005, 10.0)
    w.schedule(10.0, 1)  # at the wheel's time
    w.schedule(3.0, 2)  # long past
    w.schedule(-1e9, 3)
    assert w.advance(10.0) == [1, 2, 3]  # same time: still returned
    assert len(w) == 0


def test_deadline_just_after_now_waits_for_its_tick(core):
    w = core.TimingWheel(0.005, 10.0)
    w.schedule(10.0001, 1)
    assert w.advance(10.0002) == []
    assert w.advance(10.0049) == []
    assert w.advance(10.005) == [1]


def test_advance_backwards_returns_nothing(core):
    w = core.TimingWheel(0.005)
    w.schedule(0.5, 1)
    assert w.advance(0.2) == []
    assert w.advance(0.1) == []
    assert w.now == 0.2
    w.schedule(0.1, 2)  # before the wheel's time: due at the next advance
    assert w.advance(0.0) == []  # ... but not at an earlier one
    assert w.advance(0.2) == [2]
    assert w.advance(0.51) == [1]


def test_order_ascending_by_tick(core):
    w = core.TimingWheel(0.01)
    deadlines = [5.0, 0.5, 3.0, 0.05, 100.0, 0.051, 2.5, 0.049]
    for p, d in enumerate(deadlines):
        w.schedule(d, p)
    got = w.advance(1000.0)
    ticks = [fire_tick(deadlines[p], 0.01) for p in got]
    assert ticks == sorted(ticks)
    assert sorted(got) == list(range(len(deadlines)))


def test_same_tick_keeps_insertion_order(core):
    w = core.TimingWheel(1.0)
    for p in range(10):
        w.schedule(1000.5, p)  # level 1, cascaded into level 0 together
    assert w.advance(1001.0) == list(range(10))


def test_payload_range_and_type(core):
    w = core.TimingWheel()
    h = w.schedule(1.0, 2**63 - 1)
    assert w.schedule(1.0, 0) > 0
    assert w.schedule(1.0, True) > 0  # bool is an int
    for bad in (-1, 2**63, 2**100, -(2**70)):
        with pytest.raises(ValueError) as e:
            w.schedule(1.0, bad)
        assert str(e.value) == f"payload must be in [0, 2**63), got {bad!r}"
    for bad, name in ((1.0, "float"), ("1", "str"), (None, "NoneType")):
        with pytest.raises(TypeError) as e:
            w.schedule(1.0, bad)
        assert str(e.value) == f"payload must be an int, got {name}"
    got = w.advance(2.0)
    assert got == [2**63 - 1, 0, 1]
    assert [type(p) for p in got] == [int, int, int]
    assert not w.cancel(h)


def test_deadline_range_and_type(core):
    w = core.TimingWheel(0.005)
    for bad in (math.nan, math.inf, -math.inf, 1e300, 0.005 * 2.0**62, -0.005 * 2.0**62):
        with pytest.raises(ValueError) as e:
            w.schedule(bad, 1)
        assert str(e.value) == f"deadline must be finite and within 2**62 ticks of 0, got {bad!r}"
    with pytest.raises(TypeError, match="must be real number, not str"):
        w.schedule("1.0", 1)
    with pytest.raises(OverflowError):
        w.schedule(10**400, 1)
    # The deadline is converted before the payload is checked.
    with pytest.raises(TypeError, match="must be real number"):
        w.schedule(None, "x")
    # The payload is checked before the deadline's range.
    with pytest.raises(TypeError, match="payload must be an int"):
        w.schedule(math.nan, "x")
    assert len(w) == 0
    assert w.schedule(0.005 * (2.0**62 - 2**12), 7) > 0  # just inside the range


def test_advance_range(core):
    w = core.TimingWheel()
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError) as e:
            w.advance(bad)
        assert str(e.value) == f"now must be finite and within 2**62 ticks of 0, got {bad!r}"
    with pytest.raises(TypeError, match="must be real number, not list"):
        w.advance([])
    assert w.now == 0.0


def test_negative_times(core):
    w = core.TimingWheel(0.5, -1000.0)
    w.schedule(-999.9, 1)
    w.schedule(-0.2, 2)
    w.schedule(0.2, 3)
    w.schedule(1e6, 4)  # different sign: past the current block
    assert w.advance(-999.6) == []
    assert w.advance(-999.5) == [1]
    assert w.advance(-0.01) == []
    assert w.advance(0.0) == [2]
    assert w.advance(0.49) == []
    assert w.advance(0.5) == [3]
    assert w.advance(1e6 + 0.5) == [4]


# -- cancel and handles --------------------------------------------------------------------


def test_cancel(core):
    w = core.TimingWheel()
    h1 = w.schedule(1.0, 1)
    h2 = w.schedule(1.0, 2)
    assert w.cancel(h1) is True
    assert w.cancel(h1) is False
    assert len(w) == 1
    assert w.advance(2.0) == [2]
    assert w.cancel(h2) is False  # fired: stale


def test_stale_handle_never_cancels_a_reused_slot(core):
    w = core.TimingWheel()
    h1 = w.schedule(1.0, 1)
    assert w.cancel(h1)
    h2 = w.schedule(1.0, 2)  # LIFO free list: same slot, next generation
    assert h2 & 0xFFFFFFFF == h1 & 0xFFFFFFFF
    assert h2 != h1
    assert w.cancel(h1) is False
    assert len(w) == 1
    assert w.advance(1.01) == [2]
    h3 = w.schedule(2.0, 3)
    assert w.cancel(h2) is False  # fired, slot reused again
    assert w.cancel(h1) is False
    assert w.advance(2.01) == [3]
    assert w.cancel(h3) is False


@pytest.mark.parametrize(
    "handle", [0, -1, -(2**40), 2**63, 2**100, 1, 2**32 - 1, (5 << 32) | 3, True, False]
)
def test_cancel_unknown_handles(core, handle):
    w = core.TimingWheel()
    h = w.schedule(1.0, 1)
    assert w.cancel(handle) is False
    assert len(w) == 1
    assert w.cancel(h) is True


def test_cancel_type(core):
    w = core.TimingWheel()
    for bad, name in (("1", "str"), (1.0, "float"), (None, "NoneType")):
        with pytest.raises(TypeError) as e:
            w.cancel(bad)
        assert str(e.value) == f"handle must be an int, got {name}"


def test_cancel_everywhere(core):
    # Cancel entries in every bucket kind: due list, each level, overflow.
    w = core.TimingWheel(0.001, 1.0)
    deadlines = [0.5, 1.0005, 1.1, 30.0, 3600.0, 20 * DAY, 60 * DAY, 400 * DAY]
    handles = [w.schedule(d, p) for p, d in enumerate(deadlines)]
    keep = {1, 3, 5, 7}
    for p, h in enumerate(handles):
        if p not in keep:
            assert w.cancel(h)
    assert len(w) == len(keep)
    assert w.advance(500 * DAY) == sorted(keep)


def test_clear(core):
    w = core.TimingWheel(0.001)
    handles = [w.schedule(d, p) for p, d in enumerate([-1.0, 0.01, 10.0, 10 * DAY, 100 * DAY])]
    w.clear()
    assert len(w) == 0
    assert all(w.cancel(h) is False for h in handles)
    assert w.advance(200 * DAY) == []
    h = w.schedule(200 * DAY + 1, 9)
    assert h not in handles
    assert w.advance(200 * DAY + 2) == [9]


def test_pool_grows_and_reuses(core):
    w = core.TimingWheel()
    handles = [w.schedule(1.0 + (i % 97) * 0.01, i) for i in range(5000)]
    assert sum(w.cancel(h) for h in handles[::2]) == 2500
    more = [w.schedule(3.0, 10_000 + i) for i in range(2500)]
    assert {h & 0xFFFFFFFF for h in more} == {h & 0xFFFFFFFF for h in handles[::2]}
    assert set(w.advance(10.0)) == set(range(1, 5000, 2)) | set(range(10_000, 12_500))


PAGE = 1024  # entries per page of the compiled pool (paged.pxd); the pure twin grows alike


def test_pool_grows_across_pages(core):
    """The pool grows a page at a time past its first 1,024 entries: fresh
    entries keep coming in index order, and every handle taken before a
    growth still cancels (or fires) its own entry after it, exactly once."""
    w = core.TimingWheel(0.01)
    n = 3 * PAGE + 5
    handles = [w.schedule(1.0 + (i % 50) * 0.01, i) for i in range(n)]
    assert [h & 0xFFFFFFFF for h in handles] == list(range(n))
    assert {h >> 32 for h in handles} == {1}
    edges = {k * PAGE + d for k in (1, 2, 3) for d in (-1, 0)}  # each side of each boundary
    gone_at = sorted(set(range(0, n, 3)) | edges)
    gone = [handles[i] for i in gone_at]
    assert all(w.cancel(h) for h in gone)
    assert not any(w.cancel(h) for h in gone)  # stale now
    again = [w.schedule(2.0, n + i) for i in range(len(gone))]  # the freed slots, LIFO
    assert [h & 0xFFFFFFFF for h in again] == [h & 0xFFFFFFFF for h in reversed(gone)]
    assert {h >> 32 for h in again} == {2}
    more = [w.schedule(3.0, 10 * n + i) for i in range(PAGE + 1)]  # past the next boundary
    assert [h & 0xFFFFFFFF for h in more] == list(range(n, n + PAGE + 1))
    assert not any(w.cancel(h) for h in gone)
    assert w.cancel(handles[PAGE + 1]) and w.cancel(again[0]) and w.cancel(more[-1])
    live = ((set(range(n)) - set(gone_at) - {PAGE + 1}) | set(range(n + 1, n + len(gone)))
            | set(range(10 * n, 10 * n + PAGE)))
    assert len(w) == len(live)
    got = w.advance(3.5)
    assert len(got) == len(live) and set(got) == live
    assert len(w) == 0 and not any(w.cancel(h) for h in handles + again + more)


def test_generation_retires_slot(core):
    if core.name != "py":
        pytest.skip("white-box: drives a generation to its limit through pure internals")
    w = core.TimingWheel()
    h = w.schedule(1.0, 1)
    i = h & 0xFFFFFFFF
    w._gens[i] = (1 << 31) - 1
    h = w.schedule(1.0, 2)  # next free slot; set it to the last generation
    j = h & 0xFFFFFFFF
    w.cancel(h)
    w._gens[j] = (1 << 31) - 1
    h = w.schedule(1.0, 3)
    assert h >> 32 == (1 << 31) - 1
    assert w.cancel(h)
    h2 = w.schedule(1.0, 4)
    assert h2 & 0xFFFFFFFF != j  # retired, never handed out again
    assert w.cancel(h) is False


# -- cascading and long horizons ------------------------------------------------------------


@pytest.mark.parametrize("start", [0.0, 200.0, 65_500.0, 16_777_000.0])
def test_cascade_fires_on_exact_tick(core, start):
    # tick = 1 s makes ticks integers: a deadline of n + 0.5 is due in tick n + 1.
    w = core.TimingWheel(1.0, start)
    offsets = [1, 2, 255, 256, 257, 511, 1000, 65535, 65536, 65537, 70_000]
    for o in offsets:
        w.schedule(start + o - 0.5, o)
    fired = {}
    for k in range(1, 70_001):
        for p in w.advance(start + k):
            fired[p] = k
    assert fired == {o: o for o in offsets}


def test_big_jumps_cross_levels(core):
    w = core.TimingWheel(1.0)
    w.schedule(300.5, 1)
    w.schedule(70_000.5, 2)
    w.schedule(2**24 + 0.5, 3)
    w.schedule(2**32 + 0.5, 4)  # overflow
    w.schedule(2**33 + 7.5, 5)
    assert w.advance(300.0) == []
    assert w.advance(301.0) == [1]
    assert w.advance(70_000.0) == []
    assert w.advance(70_001.0) == [2]
    assert w.advance(2.0**24) == []
    assert w.advance(2.0**24 + 1) == [3]
    assert w.advance(2.0**32) == []
    assert w.advance(2.0**32 + 1) == [4]
    assert w.advance(2.0**33 + 8) == [5]


def test_level_edges(core):
    # Due ticks on both sides of every level's border, seen from tick 0: the
    # level is the highest 8-bit group in which the due tick and now differ.
    w = core.TimingWheel(1.0)
    dues = [2**k + e for k in (8, 16, 24, 32, 33) for e in (-1, 0, 1)]
    for p, due in enumerate(dues):
        w.schedule(due - 0.5, p)  # due in tick `due`
    for p, due in enumerate(dues):
        assert w.advance(due - 1.0) == []
        assert w.advance(float(due)) == [p]


@pytest.mark.parametrize("tick", [0.001, 0.005, 0.01])
def test_horizons_of_days(core, tick):
    w = core.TimingWheel(tick, 1000.0)
    horizons = [tick / 2, tick, 1.0, 3600.0, DAY, 30 * DAY, 49.7 * DAY, 50 * DAY, 365 * DAY]
    for p, h in enumerate(horizons):
        w.schedule(1000.0 + h, p)
    fired = {}
    for p, h in sorted(enumerate(horizons), key=lambda ph: ph[1]):
        # Just before its tick: nothing; at its tick's first float time: it.
        now = tick_start(fire_tick(1000.0 + h, tick), tick)
        assert w.advance(math.nextafter(now, -math.inf)) == []
        assert w.advance(now) == [p]
        fired[p] = now
    for p, h in enumerate(horizons):
        d = 1000.0 + h
        assert d <= fired[p]  # never early
        # at most one tick late, exactly: the float before is short of d + tick
        assert Fraction(math.nextafter(fired[p], -math.inf)) < Fraction(d) + Fraction(tick)


def test_overflow_beyond_two_to_32_ticks(core):
    tick = 0.001
    w = core.TimingWheel(tick)
    far = [2**32 * tick * m + 0.0005 for m in (1, 1.5, 3, 10)]
    for p, d in enumerate(far):
        w.schedule(d, p)
    w.schedule(1.0, 99)
    assert w.advance(1.0) == []
    assert w.advance(1.002) == [99]  # 1.001 / 0.001 is 1000.999...: tick 1000
    out = []
    for p, d in enumerate(far):
        now = tick_start(fire_tick(d, tick), tick)
        assert w.advance(math.nextafter(now, -math.inf)) == []
        got = w.advance(now)
        assert got == [p] and d <= now
        assert Fraction(math.nextafter(now, 0)) < Fraction(d) + Fraction(tick)
        out += got
    assert out == [0, 1, 2, 3] and len(w) == 0


# -- memory ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1 << 16, 20_000, (1 << 16) + 1])
def test_entry_memory(core, n):
    if core.name != "c":
        pytest.skip("the 64-byte bound is the compiled pool's")
    w = core.TimingWheel()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        sched = w.schedule
        for i in range(n):
            sched(1.0 + i * 1e-4, i)
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert used / n <= 64
    assert used / n == pytest.approx(32, abs=1)
    # Less than a page of slack at any size, also just past a power of two
    # (a pool that doubled had 64 B per entry allocated at 65,537).
    assert used / n <= 32 * (1 + PAGE / n) + 0.1
