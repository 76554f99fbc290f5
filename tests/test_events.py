"""Event sinks: hooks, an MQTT topic, a webhook with retries; bounded buffers."""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgspec
import pytest

from tests.helpers.http_receiver import post_receiver
from tests.helpers.waiting import wait_until as _wait
from aiohttp import web

from fleetrpc.config import Settings
from fleetrpc.device import DeviceClient
from fleetrpc.dispatch import Dispatcher
from fleetrpc.events import EventBus, HookSink, MqttSink, WebhookSink, forward_client_calls


@contextlib.asynccontextmanager
async def _webhook_receiver(handle):
    """``handle`` on POST /hook of a throwaway server; yields the hook's URL."""
    async with post_receiver(handle, "/hook") as port:
        yield f"http://127.0.0.1:{port}/hook"


async def test_hook_sink_sync_and_async():
    bus = EventBus()
    got = []

    async def ahook(e):
        got.append(("a", e.type))

    bus.add(lambda e: got.append(("s", e.type)))
    bus.add(ahook)
    bus.start()
    bus.emit("RPC_QUEUED", {"id": 1})
    await _wait(lambda: len(got) == 2)
    assert sorted(got) == [("a", "RPC_QUEUED"), ("s", "RPC_QUEUED")]
    await bus.close()


async def test_failing_and_slow_sinks_never_block_emit():
    bus = EventBus()
    good = []

    def bad(e):
        raise RuntimeError("sink broken")

    async def slow(e):
        await asyncio.sleep(10)

    bus.add(bad)
    slow_sink = bus.add(HookSink(slow, buffer=5))
    bus.add(lambda e: good.append(e.body["n"]))
    bus.start()
    t0 = time.perf_counter()
    for n in range(100):
        bus.emit("RPC_SENT", {"n": n})
    assert time.perf_counter() - t0 < 1.0  # emit never waits for a sink
    await _wait(lambda: len(good) == 100)
    assert good == list(range(100))
    # the slow sink holds at most its buffer; the rest is dropped and counted
    assert slow_sink.dropped >= 90 and bus.dropped == slow_sink.dropped
    await bus.close()


async def test_webhook_retries_until_delivered():
    received = []
    failures = [2]

    async def handle(request):
        if failures[0]:
            failures[0] -= 1
            return web.Response(status=503)
        received.extend(await request.json())
        return web.Response(status=204)

    async with _webhook_receiver(handle) as url:
        bus = EventBus()
        sink = bus.add(WebhookSink(url, retries=5))
        bus.start()
        bus.emit("RPC_SUCCESSFUL", {"id": "x", "response": {"ok": True}})
        await _wait(lambda: len(received) == 1)
        assert received[0]["type"] == "RPC_SUCCESSFUL" and received[0]["body"]["response"] == {"ok": True}
        assert sink.delivered == 1 and sink.failed == 0
        await bus.close()


async def test_webhook_gives_up_and_counts():
    bus = EventBus()
    sink = bus.add(WebhookSink("http://127.0.0.1:9/nothing-listens", retries=1, timeout=0.5))
    bus.start()
    bus.emit("RPC_FAILED", {})
    await _wait(lambda: sink.failed == 1, timeout=10)
    await bus.close()


@pytest.mark.mqtt
async def test_mqtt_sink_and_client_side_requests(mqtt_url):
    d = Dispatcher(Settings(mqtt_url=mqtt_url, node_id="evt", min_timeout_ms=0))
    await d.start()
    bus = EventBus()
    bus.add(MqttSink(d.publish, topic="fleetrpc/events"))
    bus.start()
    forward_client_calls(bus, d)

    @d.handler("getCurrentTime")
    def now(device, params):
        return 1

    listener = DeviceClient("evt-listener", mqtt_url)
    got = []
    await listener.connect()
    original = listener._transport.on_message

    probe = "fleetrpc/events/_probe"
    probes = []

    def on_message(topic, payload, props):
        if topic == probe:
            probes.append(payload)
        elif topic.startswith("fleetrpc/events/"):
            got.append((topic, msgspec.json.decode(payload)))
        else:
            original(topic, payload, props)

    listener._transport.on_message = on_message
    listener._transport.subscribe([("fleetrpc/events/#", 1)])
    # The subscription is in force once a message sent under it comes back
    # (not after a guessed time: an event sent before would be missed).
    for _ in range(200):
        listener._transport.publish(probe, b"", 1, False)
        await asyncio.sleep(0.05)
        if probes:
            break
    assert probes, "the events subscription was not granted in 10 s"
    try:
        assert await listener.call("getCurrentTime") == 1
        await _wait(lambda: got)
        topic, event = got[0]
        assert topic == "fleetrpc/events/TO_SERVER_RPC_REQUEST"
        assert event["body"]["method"] == "getCurrentTime"
        assert event["body"]["deviceId"]["id"] == "evt-listener"
    finally:
        await bus.close()
        await listener.close()
        await d.close()


async def test_a_hook_failing_on_every_event_is_logged_once_then_summarised(caplog):
    # One ERROR with a traceback per event: a device sending client-side
    # calls that a hook cannot handle flooded the log.
    import logging

    def bad(e):
        raise ValueError("cannot handle " + str(e.body["n"]))

    bus = EventBus()
    sink = bus.add(HookSink(bad))
    bus.start()
    caplog.set_level(logging.WARNING, logger="fleetrpc.events")
    for n in range(1000):
        bus.emit("TO_SERVER_RPC_REQUEST", {"n": n})
        if n % 100 == 0:
            await asyncio.sleep(0)
    await _wait(lambda: sink.failed == 1000)
    lines = [r for r in caplog.records if r.name == "fleetrpc.events"]
    assert len(lines) <= 2, [r.getMessage() for r in lines]
    assert lines[0].exc_info is not None and "cannot handle 0" in lines[0].getMessage() + str(lines[0].exc_info[1])
    await bus.close()


async def test_a_stalled_sink_holds_at_most_its_bytes():
    """Large params behind a stalled sink: the buffer is bounded in bytes
    as well as in events, the oldest leave first and are counted, and an
    event larger than the whole buffer is dropped by itself."""
    release = asyncio.Event()
    got = []

    async def stalled(e):
        await release.wait()
        got.append(e.body["n"])

    bus = EventBus()
    sink = bus.add(HookSink(stalled, buffer=10_000, buffer_bytes=100_000))
    bus.start()
    bus.emit("RPC_SENT", {"n": -1})
    await asyncio.sleep(0.05)  # the worker holds that one, waiting
    for n in range(50):
        bus.emit("RPC_SENT", {"n": n, "params": "x" * 10_000})
    assert sink.pending_bytes <= 100_000 and sink.pending == 9
    assert sink.dropped == 41
    bus.emit("RPC_SENT", {"n": 99, "params": "y" * 200_000})  # larger than the buffer
    assert sink.dropped == 42 and sink.pending == 9
    release.set()
    await _wait(lambda: len(got) == 10)
    assert got == [-1, *range(41, 50)]
    assert sink.pending_bytes == 0
    await bus.close()
    with pytest.raises(ValueError):
        HookSink(stalled, buffer_bytes=0)


async def test_a_webhook_far_behind_posts_batches_its_receiver_accepts():
    """3,000 events of 1 KB queued at once: they go in batches under an
    aiohttp receiver's default 1 MiB request limit, not in one 3 MB POST
    refused with 413 (and lost after its retries)."""
    received, sizes = [], []

    async def handle(request):
        body = await request.json()
        sizes.append(len(body))
        received.extend(e["body"]["n"] for e in body)
        return web.Response(status=204)

    async with _webhook_receiver(handle) as url:
        bus = EventBus()
        sink = bus.add(WebhookSink(url, retries=0))
        bus.start()
        for n in range(3000):
            bus.emit("RPC_SENT", {"n": n, "params": "p" * 1000})
        await _wait(lambda: len(received) == 3000 or sink.failed, timeout=20)
        assert sink.failed == 0 and received == list(range(3000))
        assert max(sizes) <= 500 and len(sizes) >= 6
        await bus.close()
