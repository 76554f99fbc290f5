"""The compiled core's leak counters (a FLEETRPC_DEBUG=1 build; setup.py).

A normal build compiles them out (the C macro FLEETRPC_DEBUG is 0) and
``debug_counters()`` is None.  ``tools/dev test`` builds the debug core once
more and runs the core's tests on it (FLEETRPC_EXPECT_DEBUG_CORE=1): then the
counters must exist, count what is alive, and every core test ends with all
of them at 0 (conftest's ``_core_leak_check``).
"""

from __future__ import annotations

import os

import pytest

from fleetrpc import _core
from fleetrpc._core.constants import DeliveryStrategy

from .conftest import core_leaks

EXPECT_DEBUG = bool(os.environ.get("FLEETRPC_EXPECT_DEBUG_CORE"))
KEYS = {"wheel_entries", "wheel_pages", "pending_entries", "pending_pages",
        "queue_states", "queue_rings", "queued_calls"}

debug_only = pytest.mark.skipif(
    not EXPECT_DEBUG, reason="a debug-build check: tools/dev test runs it on the FLEETRPC_DEBUG=1 core"
)


def test_counters_match_the_build():
    counters = _core.debug_counters()
    if EXPECT_DEBUG:
        assert counters is not None and set(counters) == KEYS
    else:
        assert counters is None  # compiled out of a normal build


@debug_only
def test_wheel_entries_are_counted():
    wheel = _core.TimingWheelC(0.005)
    handles = [wheel.schedule(1.0 + i, i) for i in range(3)]
    assert core_leaks() == {"wheel_entries": 3, "wheel_pages": 2}  # page 0 + directory
    wheel.cancel(handles[0])
    assert core_leaks() == {"wheel_entries": 2, "wheel_pages": 2}
    assert wheel.advance(2.5) == [1]
    assert core_leaks() == {"wheel_entries": 1, "wheel_pages": 2}
    del wheel  # the last entry goes with its wheel
    assert core_leaks() == {}


@debug_only
def test_pending_entries_are_counted():
    table = _core.PendingTableC(_core.TimingWheelC(0.005))
    rids = [table.add("dev", object(), 10.0) for _ in range(2)]
    pages = {"pending_pages": 2, "wheel_pages": 2}  # page 0 + directory, each
    assert core_leaks() == {"pending_entries": 2, "wheel_entries": 2, **pages}
    table.resolve(rids[0], "dev")
    assert core_leaks() == {"pending_entries": 1, "wheel_entries": 1, **pages}
    del table
    assert core_leaks() == {}


@debug_only
def test_queued_calls_are_counted():
    queues = _core.DeviceQueuesC(DeliveryStrategy.SEQUENTIAL_ON_RESPONSE)
    assert queues.submit("dev", 1) is True  # sent at once
    assert [queues.submit("dev", i) for i in (2, 3, 4)] == [False, False, False]
    assert core_leaks() == {"queue_states": 1, "queue_rings": 1, "queued_calls": 3}
    assert queues.discard("dev", 3) is True
    assert core_leaks() == {"queue_states": 1, "queue_rings": 1, "queued_calls": 2}
    assert queues.on_end("dev", False) == 2
    assert core_leaks()["queued_calls"] == 1
    queues.drain()
    del queues
    assert core_leaks() == {}


@debug_only
def test_pool_pages_are_counted_and_freed():
    """The wheel's pool and the table's slab grow a 1,024-entry page at a
    time (paged.pxd); an emptied slab gives every page back, cycle after
    cycle; the pool keeps its pages until the wheel goes."""
    wheel = _core.TimingWheelC(0.005)
    table = _core.PendingTableC(wheel)
    assert core_leaks() == {}
    rids = [table.add("dev", None, 10.0) for _ in range(1025)]  # one past page 0
    leaks = core_leaks()
    assert leaks["pending_pages"] == leaks["wheel_pages"] == 3  # 2 pages + directory
    for rid in rids:
        table.resolve(rid)
    assert core_leaks() == {"wheel_pages": 3}
    for cycle in range(6):  # grow past several pages, empty, again
        n = 2500 + 1024 * cycle
        rids = [table.add("dev", None, 10.0 + i * 1e-3) for i in range(n)]
        assert core_leaks()["pending_pages"] == 1 + -(-n // 1024)
        if cycle % 2:
            assert len(table.drain()) == n
        else:
            assert len(table.expire(30.0)) == n
        assert "pending_pages" not in core_leaks()
    pages = 1 + -(-(2500 + 1024 * 5) // 1024)
    assert core_leaks() == {"wheel_pages": pages}
    del table, wheel
    assert core_leaks() == {}
