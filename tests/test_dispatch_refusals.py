"""Every refusal names its real cause, and one device cannot starve the
others (issue 9): queue full, window full, broker unavailable, device
offline, device did not answer; rejected inbound messages are counted per
reason and logged in summaries, not one line each."""

from __future__ import annotations

import asyncio
import logging

import pytest

from fleetrpc import DeviceClient, Dispatcher, MemoryHub, Settings
from fleetrpc.errors import (
    BrokerUnavailableError,
    DeviceOfflineError,
    QueueFullError,
    RpcTimeoutError,
    WindowFullError,
)
from fleetrpc.transport.memory import MemoryTransport
from tests.helpers.waiting import wait_until


def settings(**kw) -> Settings:
    kw.setdefault("node_id", "n1")
    kw.setdefault("min_timeout_ms", 0)
    kw.setdefault("presence", False)
    return Settings(**kw)


async def healthy_device(hub: MemoryHub, name: str = "healthy") -> DeviceClient:
    dev = DeviceClient(name, hub)
    dev.add_method("echo", lambda params: params)
    await dev.connect()
    return dev


async def test_a_silent_device_cannot_starve_a_healthy_one():
    """The issue's case at a small scale: more calls to a device that never
    answers than the node's window holds; a call to a healthy device is
    still sent and answered, and the surplus to the silent one is refused
    as "queue full", naming that device."""
    hub = MemoryHub()
    async with Dispatcher(settings(inflight_window=50, queue_cap=20), transport=hub.transport("server")) as d:
        dev = await healthy_device(hub)
        silent = [asyncio.ensure_future(d.call("silent", "work", {"i": i}, timeout=30)) for i in range(200)]
        await asyncio.sleep(0)
        assert await d.call("healthy", "echo", {"x": 1}, timeout=2) == {"x": 1}
        assert d.device_window == 5  # a tenth of the window by default
        refused = [t for t in silent if t.done() and isinstance(t.exception(), QueueFullError)]
        assert len(refused) == 200 - 5 - 20  # 5 in flight, 20 queued
        assert "'silent'" in str(refused[0].exception())
        for t in silent:
            t.cancel()
        await dev.close()


@pytest.mark.parametrize("strategy", ["BURST", "SEQUENTIAL_ON_ACK", "SEQUENTIAL_ON_RESPONSE"])
async def test_the_per_device_cap_applies_under_every_strategy(strategy):
    hub = MemoryHub()
    async with Dispatcher(settings(strategy=strategy, queue_cap=10, inflight_window=1000),
                          transport=hub.transport("server")) as d:
        calls = [asyncio.ensure_future(d.call("silent", "work", None, timeout=30)) for _ in range(300)]
        await asyncio.sleep(0)
        refused = sum(1 for t in calls if t.done() and isinstance(t.exception(), QueueFullError))
        in_flight = 100 if strategy == "BURST" else 1
        assert refused == 300 - in_flight - 10
        for t in calls:
            t.cancel()


async def test_a_call_never_sent_for_a_full_window_says_so():
    hub = MemoryHub()
    async with Dispatcher(settings(inflight_window=4, device_window=4), transport=hub.transport("server")) as d:
        hold = [asyncio.ensure_future(d.call("silent", "work", None, timeout=30)) for _ in range(4)]
        await asyncio.sleep(0)
        with pytest.raises(WindowFullError, match="in-flight window \\(4\\)"):
            await d.call("other", "work", None, timeout=0.05)
        assert d.stats.window_full == 1
        for t in hold:
            t.cancel()


async def test_a_device_that_does_not_answer_is_blamed_and_an_offline_one_is_named():
    hub = MemoryHub()
    async with Dispatcher(settings(presence=True), transport=hub.transport("server")) as d:
        with pytest.raises(DeviceOfflineError, match="'gone' is not connected"):
            await d.call("gone", "work", None, timeout=0.05)
        d.presence.set_online("mute", True)
        with pytest.raises(RpcTimeoutError, match="device 'mute' did not answer") as info:
            await d.call("mute", "work", None, timeout=0.05)
        assert type(info.value) is RpcTimeoutError


class FlakyTransport(MemoryTransport):
    """A hub client whose broker connection can go down (publishes are then lost)."""

    def go_down(self) -> None:
        self._connected = False
        self.hub._detach(self)
        self.on_connection(False)


async def test_broker_down_fail_refuses_at_once():
    hub = MemoryHub()
    t = FlakyTransport(hub, "server")
    async with Dispatcher(settings(broker_down="fail"), transport=t) as d:
        dev = await healthy_device(hub)
        assert await d.call("healthy", "echo", 1, timeout=2) == 1
        t.go_down()
        with pytest.raises(BrokerUnavailableError, match="broker connection is down"):
            await d.call("healthy", "echo", 1, timeout=30)
        assert d.stats.broker_unavailable == 1
        await dev.close()


async def test_broker_down_wait_blames_the_broker_not_the_device():
    hub = MemoryHub()
    t = FlakyTransport(hub, "server")
    async with Dispatcher(settings(), transport=t) as d:
        dev = await healthy_device(hub)
        t.go_down()
        with pytest.raises(BrokerUnavailableError, match="broker connection was down"):
            await d.call("healthy", "echo", 1, timeout=0.05)
        await dev.close()


async def test_rejected_messages_are_counted_and_logged_in_summaries(caplog):
    hub = MemoryHub()
    async with Dispatcher(settings(reject_log_interval_s=3600), transport=hub.transport("server")) as d:
        pending = asyncio.ensure_future(d.call("a", "work", None, timeout=30))
        await asyncio.sleep(0)
        with caplog.at_level(logging.WARNING, logger="fleetrpc.dispatcher"):
            for i in range(1000):
                d._on_message(f"fleetrpc/d/b/res/{d.node}/1", b"{}", None)  # forged: a's call
                d._on_message(f"fleetrpc/d/b/res/{d.node}/{10_000 + i}", b"{}", None)  # not pending
                d._on_message("fleetrpc/d/b/res", b"{", None)  # malformed
        assert (d.stats.wrong_device, d.stats.unknown_request, d.stats.malformed) == (1000, 1000, 1000)
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1  # the first at once; the rest go into the interval's summary
        assert "wrong_device" in warnings[0].getMessage()
        d._rejects._flush()
        summary = caplog.records[-1].getMessage()
        assert "rejected 2999 inbound messages" in summary and "malformed 1000" in summary
        assert not pending.done()
        pending.cancel()


async def test_replies_to_ended_calls_are_counted_not_logged(caplog):
    """A device answering a one-way call (fleetrpc's SDK and ThingsBoard
    firmware do: the demo's tour printed a WARNING for its one-way
    setValue), answering after the call timed out, or answering twice: its
    reply is dropped and counted as late, with no log line.  A request id
    this node never made is still an unknown request, logged."""
    hub = MemoryHub()
    async with Dispatcher(settings(), transport=hub.transport("server")) as d:
        dev = DeviceClient("healthy", hub, ack=False)  # acks of ended calls count too: left out
        dev.add_method("echo", lambda params: params)
        dev.add_method("slow", lambda params: asyncio.sleep(0.2, "late"))
        await dev.connect()
        with caplog.at_level(logging.DEBUG, logger="fleetrpc.dispatcher"):
            assert await d.call("healthy", "echo", 1, oneway=True, timeout=2) is None
            await wait_until(lambda: d.stats.late_replies == 1)  # the one-way call's answer
            with pytest.raises(RpcTimeoutError):
                await d.call("healthy", "slow", None, timeout=0.05)
            await wait_until(lambda: d.stats.late_replies == 2)  # after its deadline
            assert await d.call("healthy", "echo", 3, timeout=2) == 3
            rid = d._pending.next_rid - 1
            d._on_message(f"fleetrpc/d/healthy/res/{d.node}/{rid}", b"3", None)  # answered twice
            assert d.stats.late_replies == 3
            assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
            d._on_message(f"fleetrpc/d/healthy/res/{d.node}/{rid + 1000}", b"{}", None)  # never made
            assert (d.stats.unknown_request, d.stats.late_replies) == (1, 3)
            (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert "never made" in warning.getMessage()
        await dev.close()


@pytest.mark.parametrize("strategy", ["SEQUENTIAL_ON_ACK", "SEQUENTIAL_ON_RESPONSE"])
async def test_queued_calls_expiring_in_the_same_tick_as_the_one_ahead(strategy):
    """Found by the fault suite's slow-device probe: calls queued behind a
    device that does not answer, all expiring in one tick, used to release a
    call the same tick had already expired and kill the dispatcher's timer
    (every later timeout was then lost)."""
    hub = MemoryHub()
    # A coarse tick: the five deadlines, microseconds apart, share one.
    async with Dispatcher(settings(strategy=strategy, tick_ms=300), transport=hub.transport("server")) as d:
        calls = [asyncio.ensure_future(d.call("mute", "work", {"i": i}, timeout=0.01)) for i in range(5)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(type(r) is RpcTimeoutError for r in results), results
        assert "did not answer" in str(results[0]) and any("never sent" in str(r) for r in results[1:])
        # the timer still runs: a later call still times out
        with pytest.raises(RpcTimeoutError):
            await d.call("mute", "work", None, timeout=0.01)
        assert d._queues.inflight("mute") == 0


def test_the_servers_activity_record_is_bounded():
    """Presence for made-up ids reaches the server's activity record: it is
    bounded like presence, the least recently active leaving first."""
    from fleetrpc.server.context import Activity

    a = Activity(max_devices=100)
    for i in range(10_000):
        a.touch(f"flood-{i}", i)
    assert len(a) == 100 and a.last("flood-9999") == 9999 and a.last("flood-0") is None
    assert len(a.take_changes()) == 100
