"""A dispatcher's start returns once the broker's retained presence is in:
a job resumed or a call made right after a (re)start must not find online
devices "offline" because their retained presence was still on its way."""

from __future__ import annotations

import asyncio
import uuid

from fleetrpc import Dispatcher, MemoryHub, Settings
from fleetrpc.dispatch import engine
from fleetrpc.transport.mqtt import MqttTransport
from fleetrpc.wire import presence_topic
from tests.helpers.waiting import wait_until

#: Enough that the broker is still sending them when its SUBACK arrives
#: (without the wait, none of 20,000 was known when start returned).
DEVICES = 20_000


async def test_start_returns_with_every_retained_presence_known(mqtt_url):
    prefix = f"sync{uuid.uuid4().hex[:8]}"
    ids = [f"dev-{i}" for i in range(DEVICES)]
    pub = MqttTransport(mqtt_url)
    await pub.start()
    seen: set[str] = set()
    watcher = MqttTransport(mqtt_url)
    watcher.on_message = lambda topic, payload, props: seen.add(topic)
    try:
        for device in ids:
            pub.publish(presence_topic(prefix, device), b'{"status":"online"}', 1, retain=True)
        await watcher.start([(f"{prefix}/d/+/presence", 0)])
        await wait_until(lambda: len(seen) == DEVICES, timeout=30)  # the broker holds them all

        for _ in range(2):  # a first start, and a restart
            d = Dispatcher(Settings(mqtt_url=mqtt_url, prefix=prefix, node_id=f"n{uuid.uuid4().hex[:6]}"))
            await d.start()
            try:
                assert sum(d.is_online(device) for device in ids) == DEVICES
                assert d.stats.presence_synced == 1 and d.stats.malformed == 0  # the marker is not a message
            finally:
                await d.close()
    finally:
        for device in ids:  # leave the broker as found
            pub.publish(presence_topic(prefix, device), b"", 1, retain=True)
        await watcher.close()
        await pub.close()


async def test_the_memory_hub_returns_the_marker_too():
    hub = MemoryHub()
    device = hub.transport("dev")
    await device.start()
    device.publish(presence_topic("fleetrpc", "dev-1"), b'{"status":"online"}', 1, retain=True)
    async with Dispatcher(Settings(node_id="n1"), transport=hub.transport("server")) as d:
        assert d.is_online("dev-1") and d.stats.presence_synced == 1


class _Mute:
    """A transport that takes publishes and hands nothing back."""

    connected = True

    async def start(self, filters=()) -> None:
        self.filters = list(filters)

    async def close(self) -> None:
        pass

    def publish(self, topic, payload, qos=1, retain=False, token=-1, properties=None) -> None:
        pass


async def test_a_marker_that_never_returns_costs_a_bounded_wait(monkeypatch):
    monkeypatch.setattr(engine, "PRESENCE_SYNC_S", 0.05)
    t = _Mute()
    d = Dispatcher(Settings(node_id="n1"), transport=t)
    await d.start()
    try:
        assert (d.stats.presence_synced, d.stats.presence_sync_timeouts) == (0, 1)
        assert ("fleetrpc/n/" + d.node + "/sync", 0) in t.filters
    finally:
        await d.close()


async def test_close_ends_a_start_waiting_for_presence():
    d = Dispatcher(Settings(node_id="n1"), transport=_Mute())
    start = asyncio.ensure_future(d.start())
    await wait_until(lambda: d._synced is not None)
    await d.close()
    await asyncio.wait_for(start, 1)  # not the whole PRESENCE_SYNC_S
    assert (d.stats.presence_synced, d.stats.presence_sync_timeouts) == (0, 0)


async def test_a_node_that_does_not_track_presence_does_not_wait():
    t = _Mute()
    d = Dispatcher(Settings(node_id="n1", presence=False), transport=t)
    await d.start()
    try:
        assert d.stats.presence_synced == d.stats.presence_sync_timeouts == 0
        assert not any(f.endswith("/sync") for f, _ in t.filters)
    finally:
        await d.close()


async def test_a_dispatcher_on_the_device_endpoint_alone_does_not_wait():
    """The endpoint holds no retained messages: presence arrives as devices
    connect, and nothing would return the marker."""
    from fleetrpc.transport.endpoint import DeviceEndpoint, EndpointSettings

    ep = DeviceEndpoint(EndpointSettings(host="127.0.0.1", port=0), authenticate=lambda u, p, c: None)
    d = Dispatcher(Settings(node_id="n1"), transport=ep)
    await d.start()
    try:
        assert d.stats.presence_synced == d.stats.presence_sync_timeouts == 0
    finally:
        await d.close()


def test_the_benchmark_runs_and_knows_every_device(mqtt_url):
    """benchmarks/bench_presence_sync.py, tiny (docs/reliability.md quotes it)."""
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_presence_sync.py"
    out = subprocess.run([sys.executable, str(bench), "--url", mqtt_url, "--devices", "300", "--starts", "1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "known at return 300/300  synced=1 timeouts=0" in out.stdout
