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
KEYS = {"wheel_entries", "pending_entries", "queue_states", "queue_rings", "queued_calls"}

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
    assert core_leaks() == {"wheel_entries": 3}
    wheel.cancel(handles[0])
    assert core_leaks() == {"wheel_entries": 2}
    assert wheel.advance(2.5) == [1]
    assert core_leaks() == {"wheel_entries": 1}
    del wheel  # the last entry goes with its wheel
    assert core_leaks() == {}


@debug_only
def test_pending_entries_are_counted():
    table = _core.PendingTableC(_core.TimingWheelC(0.005))
    rids = [table.add("dev", object(), 10.0) for _ in range(2)]
    assert core_leaks() == {"pending_entries": 2, "wheel_entries": 2}
    table.resolve(rids[0], "dev")
    assert core_leaks() == {"pending_entries": 1, "wheel_entries": 1}
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
