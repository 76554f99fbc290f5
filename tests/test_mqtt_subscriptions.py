"""MqttTransport's subscriptions after start: added and dropped at any time
(before start, while connected, while the connection is down), and made
again on every reconnect, in packets of up to SUBSCRIBE_CHUNK filters."""

from __future__ import annotations

import asyncio
import uuid

from fleetrpc.transport.mqtt import SUBSCRIBE_CHUNK, MqttTransport
from tests.helpers.waiting import wait_until


async def _publisher(mqtt_url: str) -> MqttTransport:
    t = MqttTransport(mqtt_url)
    await t.start()
    return t


async def _barrier(t: MqttTransport, pub: MqttTransport, barriers: list[str], topic: str) -> None:
    """Return once the broker has handled every (un)subscription ``t`` sent
    before: Mosquitto takes one connection's packets in order, so a message
    under a filter subscribed last arriving means the earlier ones hold (a
    guessed sleep lost messages on a loaded machine)."""
    t.subscribe([(topic, 1)])
    for _ in range(200):
        pub.publish(topic, b"", 1)
        await asyncio.sleep(0.05)
        if topic in barriers:
            return
    raise AssertionError(f"{topic} was not subscribed in 10 s")


async def test_subscriptions_follow_every_change_and_every_reconnect(mqtt_url):
    root = f"subs{uuid.uuid4().hex[:8]}"
    got: list[str] = []
    barriers: list[str] = []
    t = MqttTransport(mqtt_url, reconnect_delay=0.05)
    t.on_message = lambda topic, payload, props: (barriers if "/barrier/" in topic else got).append(topic)
    t.subscribe([(f"{root}/before", 1), (f"{root}/dropped-before", 1)])
    t.unsubscribe([f"{root}/dropped-before"])
    await t.start([(f"{root}/start", 1)])
    many = [(f"{root}/many/{i}", 1) for i in range(SUBSCRIBE_CHUNK + 7)]  # two packets
    t.subscribe(many + [(f"{root}/dropped", 1)])
    t.unsubscribe([f"{root}/dropped"])
    pub = await _publisher(mqtt_url)
    try:
        await _barrier(t, pub, barriers, f"{root}/barrier/1")
        wanted = {f"{root}/before", f"{root}/start", f"{root}/many/0", f"{root}/many/{SUBSCRIBE_CHUNK + 6}"}
        for topic in sorted(wanted | {f"{root}/dropped-before", f"{root}/dropped"}):
            pub.publish(topic, b"1", 1)
        await wait_until(lambda: set(got) == wanted)

        # the connection drops; a subscription made and one dropped while it
        # is down count on the next connection
        got.clear()
        t._proto.socket.abort()
        await wait_until(lambda: not t._up)
        t.subscribe([(f"{root}/while-down", 1)])
        t.unsubscribe([f"{root}/before"])
        await wait_until(lambda: t.reconnects == 1 and t._up)
        await _barrier(t, pub, barriers, f"{root}/barrier/2")
        wanted = {f"{root}/while-down", f"{root}/start", f"{root}/many/{SUBSCRIBE_CHUNK}"}
        for topic in sorted(wanted | {f"{root}/before"}):
            pub.publish(topic, b"2", 1)
        await wait_until(lambda: set(got) == wanted)
        await asyncio.sleep(0.1)
        assert f"{root}/before" not in got
    finally:
        await pub.close()
        await t.close()
