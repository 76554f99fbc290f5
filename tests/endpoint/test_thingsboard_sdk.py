"""ThingsBoard's own Python device SDK (tb-mqtt-client), unchanged, against
the endpoint: access token, server-side calls made through a Dispatcher,
client-side calls, getSessionLimits, the gateway API."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tb_device_mqtt import TBDeviceMqttClient
from tb_gateway_mqtt import TBGatewayMqttClient

from fleetrpc.errors import DeviceOfflineError

from .conftest import make_rig, wait_thread_event


@pytest.fixture
async def tb_device(rig):
    """dev-a on ThingsBoard's SDK, answering server-side calls."""
    client = TBDeviceMqttClient("127.0.0.1", port=rig.port, username="token-a")
    calls: list[tuple[str, dict]] = []

    def on_server_side_rpc(request_id, request):
        calls.append((request_id, request))
        if request["method"] == "echo":
            client.send_rpc_reply(request_id, {"echo": request["params"], "id": request_id})
        elif request["method"] == "fail":
            client.send_rpc_reply(request_id, {"error": "no"})

    client.set_server_side_rpc_request_handler(on_server_side_rpc)
    await asyncio.to_thread(client.connect)
    client.calls = calls
    try:
        yield client
    finally:
        await asyncio.to_thread(client.disconnect)
        client.stop()


async def test_server_side_call_reaches_the_sdk_and_its_reply_comes_back(rig, tb_device):
    await rig.online("dev-a")
    statuses = []
    rig.dispatcher.on_status(lambda e: statuses.append(e.type))
    reply = await rig.dispatcher.call("dev-a", "echo", {"x": [1, 2]})
    assert reply["echo"] == {"x": [1, 2]}
    # ThingsBoard's per-session integer ids, as the SDK sees them
    assert reply["id"].isdigit()
    assert statuses[0] == "SENT" and "SUCCESSFUL" in statuses
    # many in a row, concurrently
    replies = await asyncio.gather(*(rig.dispatcher.call("dev-a", "echo", i) for i in range(50)))
    assert [r["echo"] for r in replies] == list(range(50))
    ids = {r["id"] for r in replies}
    assert len(ids) == 50


async def test_sdk_asks_session_limits_on_connect_and_gets_them_from_the_endpoint(rig, tb_device):
    await rig.online("dev-a")
    await asyncio.wait_for(_until(lambda: rig.endpoint.stats.session_limits >= 1), 10)
    # answered by the endpoint itself: the dispatcher saw no client-side call
    assert rig.dispatcher.stats.client_calls == 0


async def test_client_side_call_from_the_sdk(rig, tb_device):
    await rig.online("dev-a")

    @rig.dispatcher.handler("getTime")
    def get_time(device, params):
        return {"device": device, "params": params, "time": 1234}

    done = threading.Event()
    got = {}

    def callback(request_id, response, exception):
        got["response"], got["exception"] = response, exception
        done.set()

    tb_device.send_rpc_call("getTime", {"tz": "UTC"}, callback)
    await wait_thread_event(done)
    assert got["exception"] is None
    assert got["response"] == {"device": "dev-a", "params": {"tz": "UTC"}, "time": 1234}
    # an unknown method gets fleetrpc's error object, not silence
    done.clear()
    tb_device.send_rpc_call("nope", {}, callback)
    await wait_thread_event(done)
    assert got["response"]["error"]["code"] == "METHOD_NOT_FOUND"
    assert rig.endpoint.tracked()["calls"] == 0


async def test_an_attribute_request_is_answered_with_none(rig, tb_device):
    """fleetrpc keeps no attributes; firmware that asks for its shared
    attributes at boot gets an empty answer instead of waiting forever."""
    await rig.online("dev-a")
    done = threading.Event()
    got = {}

    def callback(content, exception):
        got["content"], got["exception"] = content, exception
        done.set()

    tb_device.request_attributes(client_keys=["mode"], shared_keys=["fw_version"], callback=callback)
    await wait_thread_event(done)
    assert got == {"content": {}, "exception": None}
    assert rig.endpoint.stats.attribute_requests >= 1


async def test_sdk_disconnect_makes_the_device_offline(rig):
    client = TBDeviceMqttClient("127.0.0.1", port=rig.port, username="token-a")
    await asyncio.to_thread(client.connect)
    await rig.online("dev-a")
    await asyncio.to_thread(client.disconnect)
    client.stop()
    await rig.offline("dev-a")
    with pytest.raises(DeviceOfflineError):
        await rig.dispatcher.call("dev-a", "echo", {})


async def test_gateway_sdk_with_sub_devices():
    resolved = []

    async def resolve(gateway, name):
        # what the server plugs: the registry's device of that name under the gateway
        resolved.append((gateway, name))
        return {"Pump A": "dev-pump-a", "Pump B": "dev-pump-b"}.get(name)

    async with make_rig(resolve_subdevice=resolve) as rig:
        gw = TBGatewayMqttClient("127.0.0.1", port=rig.port, username="token-gw")
        requests = []

        def on_rpc(gateway, request):
            requests.append(request)
            gateway.gw_send_rpc_reply(request["device"], request["data"]["id"],
                                      {"device": request["device"], "method": request["data"]["method"],
                                       "params": request["data"]["params"]})

        gw.gw_set_server_side_rpc_request_handler(on_rpc)
        await asyncio.to_thread(gw.connect)
        try:
            # The SDK's calls block until its connection is up (its CONNACK may
            # still be on its way when connect() returns): off the loop, which
            # serves the endpoint that has to answer it.
            for name in ("Pump A", "Pump B", "Unknown C"):  # Unknown C: not in the registry, ignored
                await asyncio.to_thread(gw.gw_connect_device, name)
            await rig.online("dev-pump-a")
            await rig.online("dev-pump-b")
            a, b = await asyncio.gather(
                rig.dispatcher.call("dev-pump-a", "open", {"valve": 1}),
                rig.dispatcher.call("dev-pump-b", "close", {"valve": 2}),
            )
            assert a == {"device": "Pump A", "method": "open", "params": {"valve": 1}}
            assert b == {"device": "Pump B", "method": "close", "params": {"valve": 2}}
            assert ("gw-1", "Unknown C") in resolved
            await asyncio.to_thread(gw.gw_disconnect_device, "Pump A")
            await rig.offline("dev-pump-a")
            assert rig.dispatcher.is_online("dev-pump-b")
        finally:
            await asyncio.to_thread(gw.disconnect)
            gw.stop()
        await rig.offline("dev-pump-b")


async def _until(predicate, step: float = 0.01) -> None:
    while not predicate():
        await asyncio.sleep(step)

