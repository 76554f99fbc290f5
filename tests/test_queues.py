"""DeviceQueues (docs/core.md): every test runs against both variants."""

from __future__ import annotations

import tracemalloc

import pytest

from fleetrpc._core.constants import DeliveryStrategy
from fleetrpc.errors import FleetRpcError, QueueFullError


BURST = DeliveryStrategy.BURST
ON_ACK = DeliveryStrategy.SEQUENTIAL_ON_ACK
ON_RESPONSE = DeliveryStrategy.SEQUENTIAL_ON_RESPONSE


def send_all(q, device, items):
    return [q.submit(device, i) for i in items]


# -- construction and defaults ------------------------------------------------------


def test_defaults(core):
    q = core.DeviceQueues()
    assert q.strategy is BURST
    assert (q.cap, q.window, q.assume_online) == (100, 0, True)
    assert len(q) == 0 and q.total_held == 0
    assert q.is_online("a") is True
    assert q.held("a") == 0 and q.inflight("a") == 0
    assert repr(q) == "<DeviceQueues devices=0 held=0>"


def test_constructor_accepts_plain_ints(core):
    q = core.DeviceQueues(2, 7, 3, False)
    assert q.strategy is ON_RESPONSE
    assert (q.cap, q.window, q.assume_online) == (7, 3, False)


@pytest.mark.parametrize(
    "kwargs, exc, message",
    [
        ({"strategy": 3}, ValueError, "unknown delivery strategy 3"),
        ({"strategy": -1}, ValueError, "unknown delivery strategy -1"),
        ({"strategy": "BURST"}, ValueError, "unknown delivery strategy 'BURST'"),
        ({"strategy": 1.0}, ValueError, "unknown delivery strategy 1.0"),
        ({"cap": -1}, ValueError, "cap must be in [0, 2**31), got -1"),
        ({"cap": 2**31}, ValueError, "cap must be in [0, 2**31), got 2147483648"),
        ({"cap": 1.5}, TypeError, "cap must be an int, got float"),
        ({"window": -5}, ValueError, "window must be in [0, 2**31), got -5"),
        ({"window": None}, TypeError, "window must be an int, got NoneType"),
    ],
)
def test_constructor_rejects(core, kwargs, exc, message):
    with pytest.raises(exc) as info:
        core.DeviceQueues(**kwargs)
    assert str(info.value) == message


# -- BURST ---------------------------------------------------------------------------


def test_burst_unlimited_sends_everything(core):
    q = core.DeviceQueues()
    assert send_all(q, "a", range(500)) == [True] * 500
    assert q.inflight("a") == 500 and q.held("a") == 0 and len(q) == 1
    for _ in range(500):
        assert q.on_end("a", False) is None
    assert len(q) == 0


def test_burst_window_holds_fifo(core):
    q = core.DeviceQueues(window=2)
    assert send_all(q, "a", [10, 11, 12, 13]) == [True, True, False, False]
    assert (q.inflight("a"), q.held("a"), q.total_held) == (2, 2, 2)
    assert q.on_ack("a") is None  # BURST frees a slot only at the end
    assert q.on_end("a", True) == 12
    assert q.on_end("a", False) == 13
    assert q.on_end("a", False) is None
    assert q.on_end("a", False) is None
    assert len(q) == 0


def test_burst_devices_are_independent(core):
    q = core.DeviceQueues(window=1)
    assert send_all(q, "a", [1, 2]) == [True, False]
    assert send_all(q, "b", [3, 4]) == [True, False]
    assert q.on_end("b", False) == 4
    assert q.held("a") == 1 and q.held("b") == 0


# -- SEQUENTIAL_ON_ACK ---------------------------------------------------------------


def test_on_ack_releases_next_on_ack(core):
    q = core.DeviceQueues(strategy=ON_ACK)
    assert send_all(q, "a", [1, 2, 3]) == [True, False, False]
    assert q.on_ack("a") == 2  # slot freed by the ack, 1 still in flight
    assert q.inflight("a") == 2
    assert q.on_end("a", True) is None  # 1 ends: no slot was held any more
    assert q.on_end("a", False) == 3  # 2 never acked (timeout): frees its slot
    assert q.on_ack("a") is None
    assert q.on_end("a", True) is None
    assert len(q) == 0


def test_on_ack_new_item_waits_for_ack(core):
    q = core.DeviceQueues(strategy=ON_ACK)
    assert q.submit("a", 1) is True
    assert q.submit("a", 2) is False
    assert q.on_ack("a") == 2
    assert q.on_ack("a") is None
    assert q.submit("a", 3) is True  # both acked: slot free although 2 in flight
    assert q.inflight("a") == 3


# -- SEQUENTIAL_ON_RESPONSE ----------------------------------------------------------


def test_on_response_waits_for_end(core):
    q = core.DeviceQueues(strategy=ON_RESPONSE, window=5)  # window ignored
    assert send_all(q, "a", [1, 2, 3]) == [True, False, False]
    assert q.on_ack("a") is None
    assert q.on_end("a", True) == 2
    # The head timed out: the caller reports it as on_end; the queue moves on.
    assert q.on_end("a", False) == 3
    assert q.on_end("a", False) is None
    assert len(q) == 0


# -- caps ----------------------------------------------------------------------------


def test_queue_full_message_and_type(core):
    q = core.DeviceQueues(window=1)
    assert q.submit("a", 0) is True
    for i in range(1, 101):
        assert q.submit("a", i) is False
    with pytest.raises(QueueFullError) as info:
        q.submit("a", 101)
    assert str(info.value) == "queue of device 'a' is full (100 calls)"
    assert isinstance(info.value, FleetRpcError)
    assert q.held("a") == 100 and q.total_held == 100  # nothing changed


def test_cap_zero_never_holds(core):
    q = core.DeviceQueues(cap=0, window=1)
    assert q.submit("a", 1) is True
    with pytest.raises(QueueFullError, match=r"^queue of device 'a' is full \(0 calls\)$"):
        q.submit("a", 2)
    q.set_online("b", False)
    with pytest.raises(QueueFullError):
        q.submit("b", 3)


def test_full_queue_of_idle_offline_device_keeps_no_state(core):
    q = core.DeviceQueues(cap=0, assume_online=False)
    with pytest.raises(QueueFullError):
        q.submit("a", 1)
    assert len(q) == 0


def test_lowering_cap_keeps_held_items(core):
    q = core.DeviceQueues()
    q.set_online("a", False)
    send_all(q, "a", range(5))
    q.configure("a", cap=2)
    assert q.held("a") == 5
    with pytest.raises(QueueFullError, match=r"\(2 calls\)"):
        q.submit("a", 9)
    assert q.set_online("a", True) == [0, 1, 2, 3, 4]


# -- presence ------------------------------------------------------------------------


def test_offline_holds_and_online_releases_fifo(core):
    q = core.DeviceQueues(window=3)
    assert q.set_online("a", False) == []
    assert q.is_online("a") is False
    assert send_all(q, "a", range(6)) == [False] * 6
    assert q.set_online("a", True) == [0, 1, 2]
    assert q.held("a") == 3 and q.inflight("a") == 3
    assert q.on_end("a", False) == 3


def test_calls_in_flight_stay_in_flight_offline(core):
    q = core.DeviceQueues(strategy=ON_RESPONSE)
    assert send_all(q, "a", [1, 2]) == [True, False]
    q.set_online("a", False)
    assert q.inflight("a") == 1
    assert q.on_end("a", False) is None  # slot free, but the device is away
    assert q.inflight("a") == 0 and q.held("a") == 1
    assert q.set_online("a", True) == [2]
    assert q.on_end("a", False) is None
    assert len(q) == 0


def test_set_online_twice_is_harmless(core):
    q = core.DeviceQueues()
    assert q.set_online("a", True) == []
    assert len(q) == 0
    q.set_online("a", False)
    q.set_online("a", False)
    assert len(q) == 1
    q.set_online("a", True)
    assert len(q) == 0


def test_assume_online_false(core):
    q = core.DeviceQueues(assume_online=False)
    assert q.is_online("a") is False
    assert q.submit("a", 1) is False  # unknown devices are offline: held
    assert len(q) == 1
    assert q.set_online("a", True) == [1]
    assert q.is_online("a") is True and len(q) == 1  # online is not the default
    assert q.on_end("a", False) is None
    assert len(q) == 1
    assert q.set_online("a", False) == []
    assert len(q) == 0  # offline is the default presence here: no state


def test_online_truthiness(core):
    q = core.DeviceQueues()
    q.set_online("a", 0)
    assert q.is_online("a") is False
    q.set_online("a", "yes")
    assert q.is_online("a") is True


# -- idle devices keep no state ------------------------------------------------------


def test_idle_devices_keep_no_state(core):
    q = core.DeviceQueues(strategy=ON_ACK)
    for n in range(1000):
        dev = f"dev-{n}"
        assert q.submit(dev, n) is True
        assert q.on_ack(dev) is None
        assert q.on_end(dev, True) is None
    assert len(q) == 0
    assert q.held("dev-1") == 0 and q.inflight("dev-1") == 0
    assert len(q) == 0  # queries do not create state


def test_configure_override_and_back_to_default(core):
    q = core.DeviceQueues()
    q.configure("a")
    assert len(q) == 0
    q.configure("a", strategy=BURST, cap=100, window=0)  # equals the defaults
    assert len(q) == 0
    q.configure("a", window=1)
    assert len(q) == 1
    assert send_all(q, "a", [1, 2]) == [True, False]
    assert send_all(q, "b", [3, 4]) == [True, True]
    q.configure("a", window=0)
    assert len(q) == 2  # still busy
    assert q.set_online("a", True) == [2]  # the widened window takes effect
    q.on_end("a", False)
    q.on_end("a", False)
    assert q.inflight("a") == 0
    assert len(q) == 1  # only "b" is busy


def test_configure_does_not_release(core):
    q = core.DeviceQueues(window=1)
    assert send_all(q, "a", [1, 2, 3]) == [True, False, False]
    assert q.configure("a", window=0) is None
    assert q.held("a") == 2
    assert q.submit("a", 4) is False  # never overtakes held items
    assert q.on_end("a", False) == 2  # each end releases one
    assert q.set_online("a", True) == [3, 4]  # or release all that fit now


def test_configure_strategy_mid_flight(core):
    q = core.DeviceQueues(strategy=ON_ACK)
    assert send_all(q, "a", [1, 2, 3]) == [True, False, False]
    assert q.on_ack("a") == 2
    # ON_RESPONSE counts both calls in flight against its single slot.
    q.configure("a", strategy=ON_RESPONSE)
    assert q.on_ack("a") is None
    assert q.on_end("a", True) is None
    assert q.on_end("a", True) == 3


def test_configure_is_all_or_nothing(core):
    q = core.DeviceQueues()
    with pytest.raises(ValueError, match=r"^window must be in \[0, 2\*\*31\), got -1$"):
        q.configure("a", strategy=ON_ACK, window=-1)
    assert len(q) == 0
    q.configure("a", strategy=ON_ACK)
    with pytest.raises(ValueError, match="^unknown delivery strategy 7$"):
        q.configure("a", strategy=7, cap=3)
    assert send_all(q, "a", [1, 2]) == [True, False]  # still ON_ACK


# -- discard and drain ---------------------------------------------------------------


def test_discard(core):
    q = core.DeviceQueues()
    q.set_online("a", False)
    send_all(q, "a", [1, 2, 3, 2])
    assert q.discard("a", 2) is True  # the first occurrence
    assert q.discard("a", 9) is False
    assert q.discard("b", 1) is False
    assert len(q) == 1 and q.total_held == 3
    assert q.set_online("a", True) == [1, 3, 2]


def test_discard_last_item_drops_state(core):
    q = core.DeviceQueues(assume_online=False)
    q.submit("a", 5)
    assert len(q) == 1
    assert q.discard("a", 5) is True
    assert len(q) == 0 and q.total_held == 0


def test_drain(core):
    q = core.DeviceQueues(window=1)
    send_all(q, "a", [1, 2, 3])
    send_all(q, "b", [4])
    q.set_online("c", False)
    send_all(q, "c", [5, 6])
    q.set_online("d", False)
    assert q.drain() == [("a", 2), ("a", 3), ("c", 5), ("c", 6)]
    assert q.total_held == 0 and q.held("a") == 0
    assert q.inflight("a") == 1  # calls in flight are the caller's business
    assert len(q) == 4  # a, b busy; c, d offline
    assert q.on_end("a", False) is None
    assert q.drain() == []
    assert len(q) == 3


def test_drain_drops_idle_devices(core):
    q = core.DeviceQueues(assume_online=False)
    send_all(q, "a", [1, 2])
    assert q.drain() == [("a", 1), ("a", 2)]
    assert len(q) == 0


# -- ring buffer ---------------------------------------------------------------------


def test_many_held_items_keep_order(core):
    q = core.DeviceQueues(cap=5000)
    q.set_online("a", False)
    items = [(i * 7919) % 10007 for i in range(5000)]
    send_all(q, "a", items)
    assert q.set_online("a", True) == items


def test_ring_wraps_around(core):
    q = core.DeviceQueues(window=1, cap=6)
    assert q.submit("a", 0) is True
    out = []
    expected = []
    n = 1
    for round_ in range(50):
        for _ in range(round_ % 5 + 1):
            q.submit("a", n)
            expected.append(n)
            n += 1
        if round_ % 3 == 0 and q.held("a") > 1:
            victim = expected[-2]  # discard inside a wrapped ring
            assert q.discard("a", victim) is True
            expected.remove(victim)
        while q.held("a") > 1:
            out.append(q.on_end("a", False))
    while q.held("a"):
        out.append(q.on_end("a", False))
    assert out == expected
    assert q.on_end("a", False) is None
    assert len(q) == 0


def _wrapped(core):
    """A device whose held items wrap around the end of a 4-item ring."""
    q = core.DeviceQueues(window=1, cap=20)
    assert send_all(q, "a", [0, 1, 2, 3]) == [True, False, False, False]
    assert q.on_end("a", False) == 1  # the ring's head moves on
    send_all(q, "a", [4, 5])  # 2, 3, 4, 5: wraps
    return q


def test_ring_grows_while_wrapped(core):
    q = _wrapped(core)
    send_all(q, "a", [6, 7, 8, 9, 10])  # grows twice
    assert [q.on_end("a", False) for _ in range(9)] == [2, 3, 4, 5, 6, 7, 8, 9, 10]


def test_drain_and_discard_in_a_wrapped_ring(core):
    q = _wrapped(core)
    assert q.discard("a", 3) is True
    assert q.drain() == [("a", 2), ("a", 4), ("a", 5)]
    q = _wrapped(core)
    assert q.discard("a", 5) is True
    assert q.discard("a", 2) is True
    assert q.set_online("a", True) == []  # window 1, one call in flight
    assert q.on_end("a", False) == 3
    assert q.on_end("a", False) == 4


def test_extreme_items(core):
    q = core.DeviceQueues()
    q.set_online("a", False)
    big = 2**63 - 1
    send_all(q, "a", [0, big, True])
    assert q.discard("a", big) is True
    released = q.set_online("a", True)
    assert released == [0, 1]
    assert [type(x) for x in released] == [int, int]  # True came back as a plain int


# -- bad input and protocol misuse ---------------------------------------------------


@pytest.mark.parametrize(
    "item, exc, message",
    [
        (-1, ValueError, "item must be in [0, 2**63), got -1"),
        (2**63, ValueError, "item must be in [0, 2**63), got 9223372036854775808"),
        (2**100, ValueError, f"item must be in [0, 2**63), got {2**100}"),
        (1.0, TypeError, "item must be an int, got float"),
        ("1", TypeError, "item must be an int, got str"),
        (None, TypeError, "item must be an int, got NoneType"),
    ],
)
def test_bad_items(core, item, exc, message):
    q = core.DeviceQueues()
    for call in (q.submit, q.discard):
        with pytest.raises(exc) as info:
            call("a", item)
        assert str(info.value) == message
    assert len(q) == 0


@pytest.mark.parametrize("device", [1, None, b"a"])
def test_bad_device(core, device):
    q = core.DeviceQueues()
    message = f"device must be a str, got {type(device).__name__}"
    calls = [
        lambda: q.submit(device, 1),
        lambda: q.on_ack(device),
        lambda: q.on_end(device, True),
        lambda: q.set_online(device, True),
        lambda: q.is_online(device),
        lambda: q.discard(device, 1),
        lambda: q.held(device),
        lambda: q.inflight(device),
        lambda: q.configure(device, cap=1),
    ]
    for call in calls:
        with pytest.raises(TypeError) as info:
            call()
        assert str(info.value) == message
    assert len(q) == 0


def test_misuse_nothing_in_flight(core):
    q = core.DeviceQueues()
    with pytest.raises(ValueError) as info:
        q.on_end("a", False)
    assert str(info.value) == "device 'a' has no call in flight"
    with pytest.raises(ValueError) as info:
        q.on_ack("a")
    assert str(info.value) == "device 'a' has no unacknowledged call in flight"
    assert len(q) == 0


def test_misuse_ack_twice(core):
    q = core.DeviceQueues(strategy=ON_ACK)
    send_all(q, "a", [1, 2])
    assert q.on_ack("a") == 2
    assert q.on_ack("a") is None
    with pytest.raises(ValueError, match="^device 'a' has no unacknowledged call in flight$"):
        q.on_ack("a")
    assert (q.inflight("a"), q.held("a")) == (2, 0)


def test_misuse_end_with_wrong_ack_flag(core):
    q = core.DeviceQueues()
    q.submit("a", 1)
    with pytest.raises(ValueError) as info:
        q.on_end("a", True)
    assert str(info.value) == "device 'a' has no acknowledged call in flight"
    q.on_ack("a")
    with pytest.raises(ValueError) as info:
        q.on_end("a", False)
    assert str(info.value) == "device 'a' has no unacknowledged call in flight"
    assert q.inflight("a") == 1  # nothing changed
    assert q.on_end("a", True) is None
    assert len(q) == 0


def test_misuse_message_uses_repr(core):
    q = core.DeviceQueues()
    with pytest.raises(ValueError) as info:
        q.on_end("it's", False)
    assert str(info.value) == 'device "it\'s" has no call in flight'


# -- memory (compiled): no Python object per held item -----------------------------


def test_held_items_are_compact(core):
    if core.name != "c":
        pytest.skip("memory layout is a property of the compiled variant")
    q = core.DeviceQueues(cap=100_000)
    q.set_online("a", False)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2**40, 2**40 + 50_000):  # ints that are not cached
            q.submit("a", i)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used < 50_000 * 8 * 2 + 4096  # the ring doubles: at most 16 bytes an item
