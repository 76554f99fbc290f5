"""MqttTransport.close is a clean DISCONNECT: the broker discards the Last
Will, and what was published just before, at QoS 0, still arrives.  (Its
writes wait for the end of the loop iteration; the DISCONNECT once did too,
and the socket closed under it, so every clean close published the Will.)
abort() is the other way out: no DISCONNECT, and the Will is published."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from fleetrpc.transport.mqtt import MqttTransport
from tests.helpers.waiting import wait_until


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("ending", ["close", "abort"])
async def test_only_an_abort_publishes_the_will(mqtt_url, version, ending):
    root = f"close{uuid.uuid4().hex[:8]}"
    got: list[tuple[str, bytes]] = []
    watcher = MqttTransport(mqtt_url)
    watcher.on_message = lambda topic, payload, props: got.append((topic, payload))
    await watcher.start([(f"{root}/#", 1)])
    t = MqttTransport(mqtt_url, version=version, will=(f"{root}/will", b"gone", 1, False))
    await t.start()
    try:
        t.publish(f"{root}/last", b"words", 0)
        if ending == "close":
            await t.close()
        else:
            t.abort()
        if ending == "abort":  # (as power lost: what was not written yet is lost too)
            await wait_until(lambda: (f"{root}/will", b"gone") in got)
        else:
            await wait_until(lambda: (f"{root}/last", b"words") in got)
            await asyncio.sleep(0.3)
            assert (f"{root}/will", b"gone") not in got
    finally:
        await t.close()
        await watcher.close()
