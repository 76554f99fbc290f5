"""A dispatcher's start returns once the broker's retained presence is in:
a job resumed or a call made right after a (re)start must not find online
devices "offline" because their retained presence was still on its way."""

from __future__ import annotations

import uuid

from fleetrpc import Dispatcher, Settings
from fleetrpc.transport.mqtt import MqttTransport
from fleetrpc.wire import presence_topic
from tests.helpers.waiting import wait_until

DEVICES = 20000


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
                online = [device for device in ids if d.is_online(device)]
                assert len(online) == DEVICES
                assert d.stats.presence_synced == 1
            finally:
                await d.close()
    finally:
        for device in ids:  # leave the broker as found
            pub.publish(presence_topic(prefix, device), b"", 1, retain=True)
        await watcher.close()
        await pub.close()


async def test_start_without_presence_or_broker_presence_does_not_wait(mqtt_url):
    prefix = f"sync{uuid.uuid4().hex[:8]}"
    d = Dispatcher(Settings(mqtt_url=mqtt_url, prefix=prefix, presence=False))
    await d.start()
    try:
        assert d.stats.presence_synced == 0
    finally:
        await d.close()
