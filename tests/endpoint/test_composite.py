"""One dispatcher reaching devices both through Mosquitto and connected
directly to the endpoint (CompositeTransport)."""

from __future__ import annotations

import asyncio

from fleetrpc import Dispatcher, Settings
from fleetrpc.device import DeviceClient
from fleetrpc.transport import MqttTransport
from fleetrpc.transport.endpoint import CompositeTransport, DeviceEndpoint, EndpointSettings

from .conftest import Rig, authenticate


async def test_broker_and_direct_devices_through_one_dispatcher_and_direct_wins(mqtt_url):
    node = f"n{id(object())}"
    ep = DeviceEndpoint(EndpointSettings(host="127.0.0.1", port=0), authenticate=authenticate)
    broker = MqttTransport(mqtt_url, client_id=f"fleetrpc-{node}")
    d = Dispatcher(Settings(node_id=node, mqtt_url=mqtt_url), transport=CompositeTransport(ep, broker))
    await d.start()
    rig = Rig(ep, d)
    direct_url = f"mqtt://127.0.0.1:{ep.ports['tcp']}"
    devices = []
    try:
        # dev-b only through the broker, dev-a both ways
        via_broker_b = DeviceClient("dev-b", mqtt_url)
        via_broker_b.add_method("where", lambda p: "broker")
        via_broker_a = DeviceClient("dev-a", mqtt_url)
        via_broker_a.add_method("where", lambda p: "broker")
        direct_a = DeviceClient("dev-a", direct_url, username="token-a")
        direct_a.add_method("where", lambda p: "direct")
        for dev in (via_broker_b, via_broker_a):
            await dev.connect()
            devices.append(dev)
        await rig.online("dev-b")
        await rig.online("dev-a")
        assert await d.call("dev-b", "where") == "broker"
        assert await d.call("dev-a", "where") == "broker"

        await direct_a.connect()
        devices.append(direct_a)
        await _until(lambda: ep.reaches("dev-a"))
        # the same id known both ways: the direct connection wins
        assert await d.call("dev-a", "where") == "direct"
        # a client-side call answers the way it came
        d.add_handler("via", lambda device, params: params)
        assert await direct_a.call("via", "direct") == "direct"
        assert await via_broker_a.call("via", "broker") == "broker"

        # the direct connection goes: back to the broker, never offline in between
        went_offline = []
        d.on_presence(lambda dev, online: went_offline.append(dev) if not online else None)
        await direct_a.close()
        devices.remove(direct_a)
        await _until(lambda: not ep.reaches("dev-a"))
        assert d.is_online("dev-a") and went_offline == []
        assert await d.call("dev-a", "where") == "broker"
    finally:
        for dev in devices:
            await dev.close()
        await d.close()


async def _until(predicate, timeout: float = 10.0) -> None:
    async def poll():
        while not predicate():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout)
