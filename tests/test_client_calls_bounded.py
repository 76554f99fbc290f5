"""Client-side calls whose handler takes its time, through a real broker:
each was a task on the server for as long as the handler ran, however many
a device sent.  A device has at most ``queue_cap`` (what getSessionLimits
tells it as maxInflightMessages) of them running, the node
``client_call_window``; a call beyond gets a clear error at once."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from fleetrpc.config import Settings
from fleetrpc.device import DeviceClient
from fleetrpc.dispatch import Dispatcher
from fleetrpc.errors import RemoteError
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.mqtt


async def test_running_client_calls_are_bounded_per_device_and_per_node(mqtt_url):
    gate = asyncio.Event()

    async def hang(device, params):
        await gate.wait()
        return params

    d = Dispatcher(Settings(mqtt_url=mqtt_url, node_id=f"b{uuid.uuid4().hex[:6]}", queue_cap=5,
                            client_call_window=8))
    d.add_handler("hang", hang)
    d.add_handler("quick", lambda device, params: params)
    await d.start()
    devices = [DeviceClient(str(uuid.uuid4()), mqtt_url) for _ in range(2)]
    try:
        for device in devices:
            await device.connect()
        first = [asyncio.ensure_future(devices[0].call("hang", i, timeout=10)) for i in range(10)]
        await wait_until(lambda: sum(t.done() for t in first) >= 5)
        second = [asyncio.ensure_future(devices[1].call("hang", i, timeout=10)) for i in range(10)]
        await wait_until(lambda: sum(t.done() for t in second) >= 7)
        refused = [t for t in first + second if t.done()]
        assert len(refused) == 12
        for t in refused:
            assert isinstance(t.exception(), RemoteError) and "busy" in str(t.exception())
        assert len(d._tasks) <= 8
        # A call whose handler answers at once takes no room.
        assert await devices[1].call("quick", 7) == 7
        gate.set()
        done = await asyncio.gather(*[t for t in first + second if t not in refused])
        assert sorted(done) == [0, 0, 1, 1, 2, 2, 3, 4]
        assert d.client_calls.running == 0 and not d.client_calls._per_device
        # and there is room again
        gate.clear()
        again = asyncio.ensure_future(devices[0].call("hang", "x", timeout=10))
        await asyncio.sleep(0.2)
        gate.set()
        assert await again == "x"
    finally:
        gate.set()
        for device in devices:
            await device.close()
        await d.close()
