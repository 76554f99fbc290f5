"""The endpoint inside the server (``[endpoint] enabled``), end to end: a
device created through the REST API connects ThingsBoard's device SDK with
its token and answers a two-way call made through the REST API; a gateway's
sub-devices are the registry's devices by name; a replaced token stops
working at once (the cache hears the registry); the counters are in
/metrics."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from tb_device_mqtt import TBDeviceMqttClient
from tb_gateway_mqtt import TBGatewayMqttClient

from tests.helpers.waiting import wait_until
from tests.server.conftest import sqlite_url, start_server, store_url, world  # noqa: F401 (fixtures)

from . import rawmqtt as raw

pytestmark = pytest.mark.mqtt

ENDPOINT = {"enabled": True, "host": "127.0.0.1", "port": 0}


async def _create_device(api, token: str, name: str, **extra) -> tuple[str, str]:
    """A device made through the REST API: (its id, its access token)."""
    status, body, _ = await api.request("POST", "/api/device", token, json={"name": name, "type": "default", **extra})
    assert status == 200, body
    device_id = json.loads(body)["id"]["id"]
    status, body, _ = await api.request("GET", f"/api/device/{device_id}/credentials", token)
    assert status == 200, body
    return device_id, json.loads(body)["credentialsId"]


async def test_thingsboard_sdk_answers_a_rest_call_through_the_servers_endpoint(start_server, world):
    async with start_server(endpoint=ENDPOINT) as (server, api):
        ctx = server.ctx
        port = ctx.endpoint.ports["tcp"]
        # ready: the broker is reached beside the endpoint
        status, body, _ = await api.request("GET", "/readyz")
        assert status == 200 and json.loads(body)["checks"]["broker"] is True, body
        admin = await api.login(world.tenant.email)
        device_id, access_token = await _create_device(api, admin, "Thermostat 7")

        client = TBDeviceMqttClient("127.0.0.1", port=port, username=access_token)
        seen = []

        def on_server_side_rpc(request_id, request):
            seen.append(request)
            client.send_rpc_reply(request_id, {"setpoint": request["params"]["setpoint"], "ok": True})

        client.set_server_side_rpc_request_handler(on_server_side_rpc)
        await asyncio.to_thread(client.connect)
        try:
            await wait_until(lambda: ctx.dispatcher.is_online(device_id))
            status, body, _ = await api.request("POST", f"/api/rpc/twoway/{device_id}", admin,
                                                json={"method": "setSetpoint", "params": {"setpoint": 21.5}})
            assert (status, json.loads(body)) == (200, {"setpoint": 21.5, "ok": True})
            assert seen == [{"method": "setSetpoint", "params": {"setpoint": 21.5}}]
            # another tenant cannot reach it, direct connection or not
            other = await api.login(world.tenant2.email)
            status, _, _ = await api.request("POST", f"/api/rpc/twoway/{device_id}", other,
                                             json={"method": "setSetpoint", "params": {}})
            assert status in (403, 404)
            # a client-side call from the SDK reaches the server and comes back
            done = threading.Event()
            got = {}

            def callback(request_id, response, exception):
                got["response"] = response
                done.set()

            client.send_rpc_call("getSessionLimits", {}, callback)
            assert await asyncio.to_thread(done.wait, 10)
            assert got["response"]["maxPayloadSize"] == 65536
        finally:
            await asyncio.to_thread(client.disconnect)
            client.stop()
        await wait_until(lambda: not ctx.dispatcher.is_online(device_id))

        status, body, _ = await api.request("GET", "/metrics")
        text = body.decode()
        assert "fleetrpc_endpoint_requests_total 1.0" in text
        assert "fleetrpc_endpoint_responses_total 1.0" in text
        assert "fleetrpc_endpoint_connections 0.0" in text


async def test_a_device_on_one_nodes_endpoint_answers_rest_calls_made_at_another_node(start_server, world, tmp_path):
    """Two servers on one broker and one database; the device connects to
    the second one's endpoint, the REST calls go to the first."""
    node_b = {"endpoint": ENDPOINT, "dispatch": {"node_id": "node-b"}, "server": {"data_dir": str(tmp_path / "b")}}
    async with start_server(endpoint=ENDPOINT, dispatch={"node_id": "node-a"}) as (a, api), \
            start_server(seed=False, **node_b) as (b, api_b):
        admin = await api.login(world.tenant.email)
        device_id, access_token = await _create_device(api, admin, "Pump 3")
        client = TBDeviceMqttClient("127.0.0.1", port=b.ctx.endpoint.ports["tcp"], username=access_token)
        seen = []

        def on_server_side_rpc(request_id, request):
            seen.append(request["method"])
            client.send_rpc_reply(request_id, {"at": "node-b", "speed": request["params"]["speed"]})

        client.set_server_side_rpc_request_handler(on_server_side_rpc)
        await asyncio.to_thread(client.connect)
        try:
            await wait_until(lambda: a.ctx.dispatcher.is_online(device_id))
            for at in (api, api_b):  # where it is connected, as either node tells
                status, body, _ = await at.request("GET", f"/api/device/info/{device_id}", admin)
                assert (status, json.loads(body)["connectedVia"]) == (200, "node-b")
            status, body, _ = await api.request("POST", f"/api/rpc/twoway/{device_id}", admin,
                                                json={"method": "setSpeed", "params": {"speed": 3}})
            assert (status, json.loads(body)) == (200, {"at": "node-b", "speed": 3})
            status, _, _ = await api.request("POST", f"/api/rpc/oneway/{device_id}", admin,
                                             json={"method": "stop", "params": {"speed": 0}})
            assert status == 200
            await wait_until(lambda: seen == ["setSpeed", "stop"])
            expected = 2
            if a.ctx.settings.store.url.startswith("postgres"):
                # clustered: the persistent call is sent by its partition's
                # owner, either node, and ends SUCCESSFUL
                status, body, _ = await api.request("POST", f"/api/rpc/twoway/{device_id}", admin, json={
                    "method": "setSpeed", "params": {"speed": 5}, "persistent": True, "timeout": 10000})
                assert status == 200, body
                rpc_id = json.loads(body)["rpcId"]

                async def call_status() -> dict:
                    _, body, _ = await api.request("GET", f"/api/rpc/persistent/{rpc_id}", admin)
                    return json.loads(body)

                await wait_until(lambda: seen[-1:] == ["setSpeed"] and len(seen) == 3)
                for _ in range(100):
                    call = await call_status()
                    if call["status"] == "SUCCESSFUL":
                        break
                    await asyncio.sleep(0.05)
                assert call["status"] == "SUCCESSFUL" and call["response"] == {"at": "node-b", "speed": 5}, call
                expected = 3
            assert b.ctx.endpoint.stats.requests == expected and a.ctx.endpoint.stats.requests == 0
            assert a.ctx.endpoint.connected_devices == frozenset()
        finally:
            await asyncio.to_thread(client.disconnect)
            client.stop()
        await wait_until(lambda: not a.ctx.dispatcher.is_online(device_id))
        status, body, _ = await api.request("GET", f"/api/device/info/{device_id}", admin)
        assert json.loads(body)["connectedVia"] is None


async def test_share_devices_off_keeps_the_devices_to_this_node(start_server, world, mqtt_url):
    """``[endpoint] share_devices = false``: no presence of a directly
    connected device reaches the broker (one node, nothing to share)."""
    from fleetrpc.transport import MqttTransport

    async with start_server(endpoint={**ENDPOINT, "share_devices": False}) as (server, api):
        ctx = server.ctx
        assert ctx.dispatcher._transport.node is None
        admin = await api.login(world.tenant.email)
        device_id, access_token = await _create_device(api, admin, "Local only")
        seen = []
        watcher = MqttTransport(mqtt_url)
        watcher.on_message = lambda topic, payload, props: seen.append(topic)
        await watcher.start([(f"{ctx.settings.dispatch.prefix}/d/{device_id}/#", 1)])
        c = await raw.RawClient.open(ctx.endpoint.ports["tcp"])
        try:
            assert (await c.connect(access_token))[1] == b"\x00\x00"
            c.send(raw.subscribe(1, ("v1/devices/me/rpc/request/+", 1)))
            await c.read_packet()  # SUBACK
            await wait_until(lambda: ctx.dispatcher.is_online(device_id))
            # a barrier: a marker the server's own broker connection sends now
            # arrives after anything it published for the device before
            marker = f"{ctx.settings.dispatch.prefix}/d/{device_id}/test-marker"
            ctx.dispatcher._transport.broker.publish(marker, b"", 1)
            await wait_until(lambda: marker in seen)
            assert seen == [marker]
        finally:
            c.close()
            await watcher.close()
    async with start_server(seed=False, endpoint=ENDPOINT) as (server, _):
        assert server.ctx.dispatcher._transport.node == server.ctx.dispatcher.node  # on by default


async def test_wrong_and_replaced_tokens_are_refused(start_server, world):
    async with start_server(endpoint=ENDPOINT) as (server, api):
        ctx = server.ctx
        port = ctx.endpoint.ports["tcp"]
        admin = await api.login(world.tenant.email)
        device_id, old_token = await _create_device(api, admin, "Meter 1")

        async def connack(token: str) -> bytes:
            c = await raw.RawClient.open(port)
            try:
                return (await c.connect(token, client_id="m1"))[1]
            finally:
                c.close()

        assert await connack("no-such-token") == b"\x00\x05"
        assert await connack(old_token) == b"\x00\x00"  # now cached
        status, body, _ = await api.request("GET", f"/api/device/{device_id}/credentials", admin)
        creds = json.loads(body)
        creds["credentialsId"] = "replacement-token-1"
        status, body, _ = await api.request("POST", "/api/device/credentials", admin, json=creds)
        assert status == 200, body
        assert await connack(old_token) == b"\x00\x05"
        assert await connack("replacement-token-1") == b"\x00\x00"
        assert ctx.endpoint.stats.refused_auth == 2


async def test_a_deleted_device_or_one_given_new_credentials_is_disconnected(start_server, world):
    """As ThingsBoard's transports do: the open connections of a device the
    registry deleted or gave a new token close (MQTT 5 hears "not
    authorized"), a gateway stops answering for a deleted sub-device, an
    HTTP poll of a deleted device ends; a deleted tenant's devices too."""
    async with start_server(endpoint=ENDPOINT) as (server, api):
        ctx = server.ctx
        port = ctx.endpoint.ports["tcp"]
        admin = await api.login(world.tenant.email)
        replaced_id, replaced_token = await _create_device(api, admin, "Meter R")
        deleted_id, deleted_token = await _create_device(api, admin, "Meter D")
        polled_id, polled_token = await _create_device(api, admin, "Meter H")
        _, gw_token = await _create_device(api, admin, "Gateway D", additionalInfo={"gateway": True})
        sub_id, _ = await _create_device(api, admin, "Pump D")
        sysadmin = await api.login(world.sysadmin.email)
        other = await api.login(world.tenant2.email)
        foreign_id, foreign_token = await _create_device(api, other, "Meter T2")

        clients = {}
        for name, token, version in (("replaced", replaced_token, 5), ("deleted", deleted_token, 4),
                                     ("gateway", gw_token, 4), ("foreign", foreign_token, 4)):
            c = clients[name] = await raw.RawClient.open(port)
            assert (await c.connect(token, client_id=name, version=version))[1][1:2] == b"\x00"
            topic = "v1/gateway/rpc" if name == "gateway" else "v1/devices/me/rpc/request/+"
            c.send(raw.subscribe(1, (topic, 1), version=version))
            await c.read_packet()
        clients["gateway"].send(raw.publish("v1/gateway/connect", b'{"device": "Pump D"}'))
        poll = asyncio.ensure_future(api.request("GET", f"/api/v1/{polled_token}/rpc?timeout=30000"))
        for device in (replaced_id, deleted_id, sub_id, polled_id, foreign_id):
            await wait_until(lambda: ctx.dispatcher.is_online(device))

        status, body, _ = await api.request("GET", f"/api/device/{replaced_id}/credentials", admin)
        creds = {**json.loads(body), "credentialsId": "replacement-token-2"}
        assert (await api.request("POST", "/api/device/credentials", admin, json=creds))[0] == 200
        assert (await clients["replaced"].closed())[:3] == b"\xe0\x02\x87"  # DISCONNECT, not authorized
        for device in (deleted_id, sub_id, polled_id):
            assert (await api.request("DELETE", f"/api/device/{device}", admin))[0] == 200
        assert await clients["deleted"].closed() == b""
        assert (await poll)[0] == 408
        await wait_until(lambda: not ctx.endpoint.reaches(sub_id))
        assert not ctx.endpoint.sessions_of(replaced_id) and not ctx.endpoint.sessions_of(deleted_id)
        # the gateway itself stays connected; the deleted tenant's device does not
        assert ctx.endpoint.reaches(foreign_id)
        assert (await api.request("DELETE", f"/api/tenant/{world.t2}", sysadmin))[0] == 200
        assert await clients["foreign"].closed() == b""
        assert not ctx.endpoint.reaches(foreign_id) and len(ctx.endpoint.http) == 0
        clients["gateway"].close()


async def test_a_device_created_on_another_node_is_online_as_soon_as_it_connects(start_server, world):
    """Presence keeps state for registered devices only; a device another
    node created is not in this node's view yet, but the token check that
    let it in just found it in the database: it is online at once."""
    from fleetrpc.store.entities import DeviceRepository

    async with start_server(endpoint=ENDPOINT) as (server, api):
        ctx = server.ctx
        other_node = DeviceRepository(ctx.db)  # its listeners are not this node's
        device = await other_node.create(world.t1, "Made elsewhere", access_token="made-elsewhere-1")
        assert device.id not in ctx.registered_devices
        c = await raw.RawClient.open(ctx.endpoint.ports["tcp"])
        try:
            assert (await c.connect("made-elsewhere-1", client_id="e1"))[1] == b"\x00\x00"
            c.send(raw.subscribe(1, ("v1/devices/me/rpc/request/+", 1)))  # reachable once subscribed
            await c.read_packet()  # SUBACK
            await wait_until(lambda: ctx.dispatcher.is_online(device.id))
            assert device.id in ctx.registered_devices
        finally:
            c.close()


async def test_gateway_sub_devices_are_registry_devices_by_name(start_server, world):
    async with start_server(endpoint=ENDPOINT) as (server, api):
        ctx = server.ctx
        port = ctx.endpoint.ports["tcp"]
        admin = await api.login(world.tenant.email)
        _, gw_token = await _create_device(api, admin, "Gateway 1", additionalInfo={"gateway": True})
        pump_id, _ = await _create_device(api, admin, "Pump A")
        # a device of that name in another tenant is never the gateway's
        other = await api.login(world.tenant2.email)
        foreign_id, _ = await _create_device(api, other, "Pump B")

        gw = TBGatewayMqttClient("127.0.0.1", port=port, username=gw_token)

        def on_rpc(gateway, request):
            gateway.gw_send_rpc_reply(request["device"], request["data"]["id"],
                                      {"device": request["device"], "params": request["data"]["params"]})

        gw.gw_set_server_side_rpc_request_handler(on_rpc)
        await asyncio.to_thread(gw.connect)
        try:
            # the SDK's calls block until it hears back: never on the server's loop
            await asyncio.to_thread(gw.gw_connect_device, "Pump A")
            await asyncio.to_thread(gw.gw_connect_device, "Pump B")
            await wait_until(lambda: ctx.dispatcher.is_online(pump_id))
            status, body, _ = await api.request("POST", f"/api/rpc/twoway/{pump_id}", admin,
                                                json={"method": "open", "params": {"valve": 3}})
            assert (status, json.loads(body)) == (200, {"device": "Pump A", "params": {"valve": 3}})
            assert not ctx.endpoint.reaches(foreign_id)
        finally:
            await asyncio.to_thread(gw.disconnect)
            gw.stop()


async def test_only_the_tenant_administrator_makes_gateways_and_a_device_connected_itself_answers_for_itself(
        start_server, world):
    async with start_server(endpoint=ENDPOINT) as (server, api):
        ctx = server.ctx
        port = ctx.endpoint.ports["tcp"]
        admin = await api.login(world.tenant.email)
        customer_b = await api.login(world.customer2.email)
        # customer B's own device: a customer user may edit it, but not turn it
        # into a gateway (a gateway binds any device of the tenant by name)
        status, body, _ = await api.request("GET", f"/api/device/{world.dev_c2.id}", customer_b)
        assert status == 200, body
        own = json.loads(body)
        status, body, _ = await api.request("POST", "/api/device", customer_b,
                                            json={**own, "additionalInfo": {"gateway": True}})
        assert status == 403, body
        status, body, _ = await api.request("GET", f"/api/device/{world.dev_c2.id}", admin)
        assert json.loads(body)["additionalInfo"] in (None, {}), body
        status, body, _ = await api.request("POST", "/api/device", customer_b,
                                            json={**own, "label": "by the customer"})
        assert status == 200 and json.loads(body)["label"] == "by the customer", body

        # a gateway the tenant administrator made binds customer A's device by
        # name; while that device is connected itself, the requests are its own
        _, gw_token = await _create_device(api, admin, "Gateway 2", additionalInfo={"gateway": True})
        status, body, _ = await api.request("GET", f"/api/device/{world.dev_c1.id}/credentials", admin)
        dev_token = json.loads(body)["credentialsId"]
        device = await raw.RawClient.open(port)
        gw = await raw.RawClient.open(port)
        try:
            assert (await device.connect(dev_token, client_id="c1-itself"))[1] == b"\x00\x00"
            assert (await gw.connect(gw_token, client_id="gateway-2"))[1] == b"\x00\x00"
            device.send(raw.subscribe(1, ("v1/devices/me/rpc/request/+", 1)))
            await device.read_packet()  # SUBACK
            gw.send(raw.subscribe(1, ("v1/gateway/rpc", 1)))
            await gw.read_packet()  # SUBACK
            gw.send(raw.publish("v1/gateway/connect", json.dumps({"device": world.dev_c1.name}).encode(), qos=0))
            await wait_until(lambda: len(raw_routes(ctx, world.dev_c1.id)) == 2)

            call = asyncio.ensure_future(api.request("POST", f"/api/rpc/twoway/{world.dev_c1.id}", admin,
                                                     json={"method": "whoAmI", "params": {}}))
            topic, payload = await read_publish(device)
            assert topic.startswith("v1/devices/me/rpc/request/") and json.loads(payload)["method"] == "whoAmI"
            device.send(raw.publish(topic.replace("request", "response"), b'{"me": "the device"}', qos=0))
            status, body, _ = await call
            assert (status, json.loads(body)) == (200, {"me": "the device"})

            # once the device has gone, the gateway's binding takes its requests
            device.close()
            await wait_until(lambda: len(raw_routes(ctx, world.dev_c1.id)) == 1)
            call = asyncio.ensure_future(api.request("POST", f"/api/rpc/twoway/{world.dev_c1.id}", admin,
                                                     json={"method": "whoAmI", "params": {}}))
            topic, payload = await read_publish(gw)
            request = json.loads(payload)
            assert topic == "v1/gateway/rpc" and request["device"] == world.dev_c1.name
            gw.send(raw.publish("v1/gateway/rpc", json.dumps(
                {"device": world.dev_c1.name, "id": request["data"]["id"], "data": {"me": "the gateway"}}).encode(),
                qos=0))
            status, body, _ = await call
            assert (status, json.loads(body)) == (200, {"me": "the gateway"})
        finally:
            device.close()
            gw.close()


async def read_publish(c: raw.RawClient) -> tuple[str, bytes]:
    """The next PUBLISH (QoS 1: acknowledged): (topic, payload)."""
    while True:
        first, body = await c.read_packet()
        if first >> 4 == 3:
            topic, payload, mid = raw.publish_topic(body, (first >> 1) & 3, False)
            if mid:
                c.send(raw.puback(mid))
            return topic, payload


async def no_more_publishes(c: raw.RawClient, quiet: float = 0.5) -> None:
    """Nothing but non-PUBLISH packets arrives until ``quiet`` s of silence:
    a request was not sent again."""
    with pytest.raises(asyncio.TimeoutError):
        while True:
            first, _ = await c.read_packet(timeout=quiet)
            assert first >> 4 != 3, "the request was sent again"


def raw_routes(ctx, device_id: str) -> tuple:
    """The endpoint's routes to a device (its sessions and gateway bindings)."""
    routes = ctx.endpoint._routes.get(device_id)
    return () if routes is None else routes if isinstance(routes, tuple) else (routes,)


async def test_a_retry_of_a_call_thingsboard_firmware_has_not_answered_is_not_sent_twice(start_server, world):
    """ThingsBoard firmware knows no request ids: a persistent call's retry,
    sent as a new request, would run the command again. The endpoint keeps
    the retry and lets the device's answer to the first copy answer it."""
    async with start_server(endpoint=ENDPOINT) as (server, api):
        ctx = server.ctx
        admin = await api.login(world.tenant.email)
        device_id, token = await _create_device(api, admin, "Valve 9")
        c = await raw.RawClient.open(ctx.endpoint.ports["tcp"])
        try:
            assert (await c.connect(token, client_id="valve-9"))[1] == b"\x00\x00"
            c.send(raw.subscribe(1, ("v1/devices/me/rpc/request/+", 1)))
            await c.read_packet()  # SUBACK
            await wait_until(lambda: ctx.dispatcher.is_online(device_id))
            status, body, _ = await api.request(
                "POST", f"/api/rpc/twoway/{device_id}", admin,
                json={"method": "open", "params": {"turns": 1}, "persistent": True, "timeout": 300, "retries": 3,
                      "expirationTime": int(time.time() * 1000) + 30_000})
            assert status == 200, body
            rpc_id = json.loads(body)["rpcId"]
            topic, payload = await read_publish(c)
            assert json.loads(payload)["method"] == "open"
            # the first attempt times out (the device is slow); its retry stays here
            await wait_until(lambda: ctx.endpoint.stats.retries_merged >= 1)
            c.send(raw.publish(topic.replace("request", "response"), b'{"opened": true}', qos=1, mid=7))
            record = await ctx.engine.wait(rpc_id, 10, tenant_id=world.t1)
            assert (record.status.value, record.response) == ("SUCCESSFUL", {"opened": True})
            assert record.attempts >= 2
            await no_more_publishes(c)  # the device got the command once
        finally:
            c.close()


async def test_a_gateway_gets_a_persistent_call_for_its_sub_device_once(start_server, world):
    async with start_server(endpoint=ENDPOINT) as (server, api):
        ctx = server.ctx
        admin = await api.login(world.tenant.email)
        _, gw_token = await _create_device(api, admin, "Gateway 3", additionalInfo={"gateway": True})
        pump_id, _ = await _create_device(api, admin, "Pump G")
        gw = await raw.RawClient.open(ctx.endpoint.ports["tcp"])
        try:
            assert (await gw.connect(gw_token, client_id="gateway-3"))[1] == b"\x00\x00"
            gw.send(raw.subscribe(1, ("v1/gateway/rpc", 1)))
            await gw.read_packet()  # SUBACK
            gw.send(raw.publish("v1/gateway/connect", b'{"device": "Pump G"}'))
            await wait_until(lambda: ctx.dispatcher.is_online(pump_id))
            status, body, _ = await api.request(
                "POST", f"/api/rpc/twoway/{pump_id}", admin,
                json={"method": "prime", "persistent": True, "timeout": 300, "retries": 3,
                      "expirationTime": int(time.time() * 1000) + 30_000})
            rpc_id = json.loads(body)["rpcId"]
            _, payload = await read_publish(gw)
            request = json.loads(payload)
            await wait_until(lambda: ctx.endpoint.stats.retries_merged >= 1)
            gw.send(raw.publish("v1/gateway/rpc", json.dumps(
                {"device": "Pump G", "id": request["data"]["id"], "data": {"primed": True}}).encode()))
            record = await ctx.engine.wait(rpc_id, 10, tenant_id=world.t1)
            assert (record.status.value, record.response) == ("SUCCESSFUL", {"primed": True})
            await no_more_publishes(gw)
        finally:
            gw.close()


async def test_a_gateway_announcing_an_unknown_name_creates_that_device(start_server, world):
    """ThingsBoard creates the sub-devices a gateway announces (the IoT
    Gateway's Modbus or OPC-UA devices appear this way): in the gateway's
    tenant, for the gateway's customer; a name the registry refuses is
    ignored."""
    async with start_server(endpoint=ENDPOINT) as (server, api):
        ctx = server.ctx
        admin = await api.login(world.tenant.email)
        gw_id, gw_token = await _create_device(api, admin, "Gateway 4", additionalInfo={"gateway": True})
        status, _, _ = await api.request("POST", f"/api/customer/{world.c1}/device/{gw_id}", admin)
        assert status == 200
        gw = TBGatewayMqttClient("127.0.0.1", port=ctx.endpoint.ports["tcp"], username=gw_token)
        gw.gw_set_server_side_rpc_request_handler(
            lambda gateway, request: gateway.gw_send_rpc_reply(request["device"], request["data"]["id"], {"ok": 1}))
        await asyncio.to_thread(gw.connect)
        try:
            await asyncio.to_thread(gw.gw_connect_device, "Modbus Meter 17")
            await asyncio.to_thread(gw.gw_connect_device, "x" * 300)  # too long a name: ignored
            found = {}

            async def created() -> bool:
                status, body, _ = await api.request("GET", "/api/tenant/devices?deviceName=Modbus%20Meter%2017", admin)
                if status == 200:
                    found.update(json.loads(body))
                return status == 200

            for _ in range(400):  # (a busy machine: up to 20 s)
                if await created():
                    break
                await asyncio.sleep(0.05)
            assert found["type"] == "default" and found["customerId"]["id"] == world.c1
            assert found["additionalInfo"] == {"lastConnectedGateway": gw_id}
            device_id = found["id"]["id"]
            await wait_until(lambda: ctx.dispatcher.is_online(device_id))
            # the gateway's customer sees it, and calls it through the gateway
            customer = await api.login(world.customer.email)
            status, body, _ = await api.request("POST", f"/api/rpc/twoway/{device_id}", customer,
                                                json={"method": "read", "params": {}})
            assert (status, json.loads(body)) == (200, {"ok": 1})
            assert ctx.endpoint_directory.created == 1
        finally:
            await asyncio.to_thread(gw.disconnect)
            gw.stop()
