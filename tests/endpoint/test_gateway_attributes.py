"""A gateway's attribute requests (``v1/gateway/attributes/request``):
answered as ThingsBoard answers keys that have no value, on
``v1/gateway/attributes/response`` at the QoS the gateway subscribed with;
malformed ones are ignored and counted.  Real clients (paho, ThingsBoard's
gateway SDK) against the real endpoint."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from tb_gateway_mqtt import TBGatewayMqttClient

from tests.helpers.waiting import wait_until

from .conftest import make_rig, wait_thread_event
from .test_clients import Paho

RESPONSE = "v1/gateway/attributes/response"
REQUEST = "v1/gateway/attributes/request"


async def _request(client: Paho, payload: bytes) -> None:
    info = client.client.publish(REQUEST, payload, qos=1)
    await asyncio.to_thread(info.wait_for_publish, 5)


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("qos", [0, 1])
async def test_an_attribute_request_is_answered_with_its_id_and_device_at_the_subscriptions_qos(rig, version, qos):
    gw = Paho(rig.port, "token-gw", version)
    assert await gw.start() == 0
    assert await gw.subscribe(RESPONSE, qos) == [qos]
    # ThingsBoard's answer when no key has a value: {"id", "device"} with
    # neither "value" (one key asked) nor "values" (several)
    await _request(gw, b'{"id": 7, "device": "Pump A", "client": false, "key": "fw_version"}')
    assert await gw.next_message() == (RESPONSE, b'{"id":7,"device":"Pump A"}', qos)
    await _request(gw, json.dumps({"id": 8, "device": "Meter \u00e9", "client": True,
                                   "keys": ["mode", "interval"]}).encode())
    topic, payload, got_qos = await gw.next_message()
    assert (topic, json.loads(payload), got_qos) == (RESPONSE, {"id": 8, "device": "Meter \u00e9"}, qos)
    assert rig.endpoint.stats.attribute_requests == 2
    await gw.stop()


async def test_malformed_attribute_requests_are_ignored_and_the_gateway_stays_connected(rig):
    gw = Paho(rig.port, "token-gw", 5)
    await gw.start()
    await gw.subscribe(RESPONSE, 1)
    bad = [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"device": "Pump A", "client": false, "key": "k"}',              # no id
        b'{"id": "7", "device": "Pump A", "client": false, "key": "k"}',   # id not a number
        b'{"id": 7, "client": false, "key": "k"}',                         # no device
        b'{"id": 7, "device": "", "client": false, "key": "k"}',           # empty device
        b'{"id": 7, "device": 3, "client": false, "key": "k"}',
        b'{"id": 7, "device": "Pump A", "key": "k"}',                      # no client
        b'{"id": 7, "device": "Pump A", "client": "no", "key": "k"}',
        b'{"id": 7, "device": "Pump A", "client": false}',                 # neither key nor keys
        b'{"id": 7, "device": "Pump A", "client": false, "keys": "k"}',
        b'{"id": 7, "device": "Pump A", "client": false, "keys": [1]}',
        b'{"id": 7, "device": "Pump A", "client": false, "key": null}',
        b'{"id": 123456789012345678901234567890, "device": "Pump A", "client": false, "key": "k"}',
        b'{"id": 2147483648, "device": "Pump A", "client": false, "key": "k"}',  # not a Java int
        b'{"id": 1.5, "device": "Pump A", "client": false, "key": "k"}',
    ]
    for payload in bad:
        await _request(gw, payload)
    await _request(gw, b'{"id": 9, "device": "Pump A", "client": false, "keys": []}')
    # the first answer is the good request's: nothing came for the others
    assert await gw.next_message() == (RESPONSE, b'{"id":9,"device":"Pump A"}', 1)
    assert rig.endpoint.stats.ignored == len(bad)
    assert rig.endpoint.stats.attribute_requests == 1
    assert not any(n for k, n in rig.endpoint.stats.as_dict().items() if k.startswith("closed_"))
    await gw.stop()


async def test_only_a_subscribed_gateway_is_answered(rig):
    # a plain device: ThingsBoard ignores its gateway API, and so does fleetrpc
    dev = Paho(rig.port, "token-a", 4)
    await dev.start()
    assert await dev.subscribe(RESPONSE, 1) == [1]
    await _request(dev, b'{"id": 1, "device": "Pump A", "client": false, "key": "k"}')
    # a gateway that never subscribed to the answers' topic is sent none
    gw = Paho(rig.port, "token-gw", 4)
    await gw.start()
    await _request(gw, b'{"id": 2, "device": "Pump A", "client": false, "key": "k"}')
    await gw.subscribe(RESPONSE, 0)
    await _request(gw, b'{"id": 3, "device": "Pump A", "client": false, "key": "k"}')
    assert await gw.next_message() == (RESPONSE, b'{"id":3,"device":"Pump A"}', 0)
    assert dev.messages.empty()
    assert rig.endpoint.stats.attribute_requests == 2
    await dev.stop()
    await gw.stop()


async def test_thingsboard_gateway_sdk_gets_its_attribute_answers(rig):
    gw = TBGatewayMqttClient("127.0.0.1", port=rig.port, username="token-gw")
    await asyncio.to_thread(gw.connect)
    try:
        # it subscribes to the answers' topic once connected: wait for that
        await wait_until(lambda: any(session.granted(RESPONSE) == 1 for session in rig.endpoint.sessions_of("gw-1")))
        got: dict[str, tuple] = {}
        done = {kind: threading.Event() for kind in ("shared", "client")}

        def callback(kind):
            def on_answer(content, exception):
                got[kind] = (content, exception)
                done[kind].set()
            return on_answer

        await asyncio.to_thread(gw.gw_request_shared_attributes, "Pump A", ["fw_version"], callback("shared"))
        await asyncio.to_thread(gw.gw_request_client_attributes, "Pump B", ["mode", "interval"], callback("client"))
        await wait_thread_event(done["shared"])
        await wait_thread_event(done["client"])
        shared, error = got["shared"]
        assert error is None and set(shared) == {"id", "device"} and shared["device"] == "Pump A"
        client, error = got["client"]
        assert error is None and set(client) == {"id", "device"} and client["device"] == "Pump B"
        assert shared["id"] != client["id"]
    finally:
        await asyncio.to_thread(gw.disconnect)
        gw.stop()


@pytest.mark.parametrize("resolver", ["sync", "async"])
async def test_a_name_is_answered_only_once_bound_to_the_gateway(resolver):
    """ThingsBoard treats a request for a name the gateway never announced
    as its announcement (AbstractGatewaySessionHandler.process ->
    onDeviceConnect: get or create the device, then answer from it).  The
    endpoint does the same through resolve_subdevice, and answers only a
    name now bound to the gateway: one the resolver refuses (another
    tenant's, a tenant at its device limit, a refused name) gets no answer,
    and is not bound."""
    known = {"Pump A": "dev-pump-a", "Pump B": "dev-pump-b"}
    asked: list[str] = []

    def resolve(gateway: str, name: str):
        asked.append(name)
        found = known.get(name) if gateway == "gw-1" else None
        if resolver == "sync":
            return found

        async def later():
            await asyncio.sleep(0.05)
            return found
        return later()

    async with make_rig(resolve_subdevice=resolve) as rig:
        gw = Paho(rig.port, "token-gw", 5)
        assert await gw.start() == 0
        await gw.subscribe(RESPONSE, 1)
        session = rig.endpoint.sessions_of("gw-1")[0]
        await _request(gw, b'{"id": 1, "device": "Stranger", "client": false, "key": "fw_version"}')
        await _request(gw, b'{"id": 2, "device": "Pump A", "client": false, "key": "fw_version"}')
        # the first answer is the bound name's: none came for the stranger
        assert await gw.next_message() == (RESPONSE, b'{"id":2,"device":"Pump A"}', 1)
        assert set(session.subdevices) == {"Pump A"}
        assert session.subdevices["Pump A"].device == "dev-pump-a"
        # bound now: asked again, answered without resolving again
        await _request(gw, b'{"id": 3, "device": "Pump A", "client": true, "keys": ["a"]}')
        assert await gw.next_message() == (RESPONSE, b'{"id":3,"device":"Pump A"}', 1)
        assert asked == ["Stranger", "Pump A"]
        # announced first: answered at once
        gw.client.publish("v1/gateway/connect", b'{"device": "Pump B"}', qos=1)
        await wait_until(lambda: "Pump B" in (session.subdevices or {}))
        await _request(gw, b'{"id": 4, "device": "Pump B", "client": false, "key": "k"}')
        assert await gw.next_message() == (RESPONSE, b'{"id":4,"device":"Pump B"}', 1)
        await _request(gw, b'{"id": 5, "device": "Stranger", "client": false, "key": "k"}')
        await asyncio.sleep(0.3)
        assert gw.messages.empty()
        assert "Stranger" not in session.subdevices
        assert rig.endpoint.stats.attribute_requests == 5
        await gw.stop()
