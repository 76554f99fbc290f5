"""ThingsBoard's RPC endpoints through real HTTP, a real broker and real
devices: every status of the REST section, each role, other tenants' and
other customers' devices."""

from __future__ import annotations

import asyncio
import json

import pytest

from fleetrpc.device import DeviceClient
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.mqtt

V1, V2 = "/api/plugins/rpc", "/api/rpc"


class RawDevice(DeviceClient):
    """A device whose handlers may answer raw bytes (not JSON, empty)."""

    def _send_reply(self, key, topic, props, result):
        if isinstance(result, bytes):
            self._transport.publish(topic, result, self.qos, False, -1, props)
            return
        super()._send_reply(key, topic, props, result)


async def device(mqtt_url: str, ctx, device_id: str) -> RawDevice:
    dev = RawDevice(device_id, mqtt_url)
    dev.add_method("echo", lambda p: p)
    dev.add_method("empty", lambda p: b"")
    dev.add_method("notJson", lambda p: b"ok")

    async def hang(p):
        await asyncio.sleep(3600)

    dev.add_method("hang", hang)
    await dev.connect()
    await wait_until(lambda: ctx.dispatcher.is_online(device_id))
    return dev


async def test_two_way_one_way_and_replies(start_server, world, mqtt_url):
    async with start_server() as (server, api):
        ctx = server.ctx
        dev = await device(mqtt_url, ctx, world.dev_c1.id)
        try:
            for who in (world.tenant, world.customer):
                token = await api.login(who.email)
                for prefix in (V1, V2):
                    status, body, r = await api.request("POST", f"{prefix}/twoway/{dev.device_id}", token,
                                                        json={"method": "echo", "params": {"a": [1, 2]}})
                    assert (status, json.loads(body)) == (200, {"a": [1, 2]})
                    assert r.content_type == "application/json"
                    status, body, _ = await api.request("POST", f"{prefix}/oneway/{dev.device_id}", token,
                                                        json={"method": "echo", "params": 1})
                    assert (status, body) == (200, b"")
            token = await api.login(world.tenant.email)
            # an empty reply: empty 200; a reply that is not JSON: empty 406
            assert (await api.request("POST", f"{V2}/twoway/{dev.device_id}", token, json={"method": "empty"}))[:2] == (200, b"")
            assert (await api.request("POST", f"{V1}/twoway/{dev.device_id}", token, json={"method": "notJson"}))[:2] == (406, b"")
            # sent, no reply in time: 408 (v1) / 504 (v2), empty
            for prefix, code in ((V1, 408), (V2, 504)):
                status, body, _ = await api.request("POST", f"{prefix}/twoway/{dev.device_id}", token,
                                                    json={"method": "hang", "timeout": 200})
                assert (status, body) == (code, b"")
        finally:
            await dev.close()


async def test_offline_device_waits_out_the_timeout_then_409_or_504(start_server, world, mqtt_url):
    async with start_server() as (server, api):
        token = await api.login(world.tenant.email)
        for prefix, code in ((V1, 409), (V2, 504)):
            status, body, _ = await api.request("POST", f"{prefix}/twoway/{world.dev_t1.id}", token,
                                                json={"method": "echo", "timeout": 200})
            assert (status, body) == (code, b"")
        # ThingsBoard holds the call: a device that connects in time gets it
        call = asyncio.ensure_future(api.request("POST", f"{V2}/twoway/{world.dev_t1.id}", token,
                                                 json={"method": "echo", "params": "late", "timeout": 20000}))
        await wait_until(lambda: server.ctx.http_inflight == 1)
        dev = await device(mqtt_url, server.ctx, world.dev_t1.id)
        try:
            status, body, _ = await call
            assert (status, json.loads(body)) == (200, "late")
        finally:
            await dev.close()


async def test_offline_fail_fast(start_server, world):
    async with start_server(rpc={"offline_fail_fast": True}) as (server, api):
        token = await api.login(world.tenant.email)
        for prefix, code in ((V1, 409), (V2, 504)):
            status, body, _ = await api.request("POST", f"{prefix}/twoway/{world.dev_t1.id}", token,
                                                json={"method": "echo", "timeout": 600000})
            assert (status, body) == (code, b"")


async def test_access_rules_on_the_rpc_path(start_server, world):
    async with start_server(rpc={"offline_fail_fast": True}) as (server, api):
        body = {"method": "echo"}
        sysadmin = await api.login(world.sysadmin.email)
        customer = await api.login(world.customer.email)
        customer2 = await api.login(world.customer2.email)
        tenant2 = await api.login(world.tenant2.email)
        for prefix in (V1, V2):
            for kind in ("oneway", "twoway"):
                path = f"{prefix}/{kind}"
                assert (await api.request("POST", f"{path}/{world.dev_c1.id}", sysadmin, json=body))[:2] == (
                    403, b"System administrator is not allowed to perform this operation!")
                # another customer's device, and a device of no customer
                for token, dev in ((customer2, world.dev_c1), (customer, world.dev_t1)):
                    assert (await api.request("POST", f"{path}/{dev.id}", token, json=body))[:2] == (
                        403, b"You don't have permission to perform this operation!")
                # another tenant's device is not found, exactly like an unknown one
                for dev_id in (world.dev_c1.id, "8a7e4f10-0000-4000-8000-000000000000"):
                    status, text, r = await api.request("POST", f"{path}/{dev_id}", tenant2, json=body)
                    assert (status, text) == (404, b"Device with requested id wasn't found!")
                    assert r.content_type == "text/plain"


async def test_bad_requests(start_server, world):
    async with start_server(http={"max_body_bytes": 1000}) as (server, api):
        token = await api.login(world.tenant.email)
        path = f"{V2}/twoway/{world.dev_t1.id}"

        async def error(status_expected, **kw):
            status, body, _ = await api.request("POST", kw.pop("path", path), token, **kw)
            assert status == status_expected, body
            return json.loads(body)

        assert (await error(400, data=b"{not json", headers={"Content-Type": "application/json"}))["errorCode"] == 31
        assert (await error(400, json={"params": {}}))["message"].startswith("method")
        assert (await error(400, json={"method": "x", "timeout": "soon"}))["errorCode"] == 31
        e = await error(400, json={"method": "x"}, path=f"{V2}/twoway/not-a-uuid")
        assert (e["status"], e["message"], e["errorCode"]) == (400, "Invalid UUID string: not-a-uuid", 31)
        assert list(e) == ["status", "message", "errorCode", "timestamp"]

        # the size limit, on Content-Length: at the limit passes, one byte over is 413
        def body_of(size: int) -> bytes:
            raw = json.dumps({"method": "x", "params": ""}).encode()
            return json.dumps({"method": "x", "params": "p" * (size - len(raw))}).encode()

        assert len(body_of(1000)) == 1000
        status, _, _ = await api.request("POST", path.replace("twoway", "oneway"), token, data=body_of(1000),
                                         headers={"Content-Type": "application/json"})
        assert status != 413
        status, body, r = await api.request("POST", path, token, data=body_of(1001),
                                            headers={"Content-Type": "application/json"})
        assert (status, body) == (413, b'"Payload size exceeds the limit of 1000 bytes"')
        assert r.content_type == "text/plain"


async def test_queue_full_is_429(start_server, world, mqtt_url):
    # One call in flight, one held: the queue is full.
    async with start_server(dispatch={"queue_cap": 1, "strategy": "SEQUENTIAL_ON_RESPONSE"}) as (server, api):
        ctx = server.ctx
        dev = await device(mqtt_url, ctx, world.dev_t1.id)
        try:
            token = await api.login(world.tenant.email)
            path = f"{V2}/twoway/{dev.device_id}"
            first = asyncio.ensure_future(api.request("POST", path, token, json={"method": "hang", "timeout": 300}))
            await wait_until(lambda: ctx.dispatcher.stats.sent == 1)
            second = asyncio.ensure_future(api.request("POST", path, token, json={"method": "echo", "params": 2}))
            await wait_until(lambda: ctx.dispatcher.stats.calls == 2)
            status, body, _ = await api.request("POST", path, token, json={"method": "echo"})
            assert status == 429 and json.loads(body)["errorCode"] == 33
            assert (await first)[0] == 504
            status, body, _ = await second
            assert (status, json.loads(body)) == (200, 2)
        finally:
            await dev.close()


async def test_device_online_state_and_last_activity(start_server, world, mqtt_url):
    async with start_server() as (server, api):
        path = f"/api/plugins/telemetry/DEVICE/{world.dev_c1.id}/values/attributes/SERVER_SCOPE"
        token = await api.login(world.customer.email)
        status, body, _ = await api.request("GET", path, token)
        assert status == 200
        assert {kv["key"]: kv["value"] for kv in json.loads(body)} == {"active": False, "lastActivityTime": 0}
        dev = await device(mqtt_url, server.ctx, world.dev_c1.id)
        try:
            await api.request("POST", f"{V2}/twoway/{dev.device_id}", token, json={"method": "echo"})
            status, body, _ = await api.request("GET", path + "?keys=active,lastActivityTime", token)
            values = {kv["key"]: kv["value"] for kv in json.loads(body)}
            assert values["active"] is True and values["lastActivityTime"] > 0
            status, body, _ = await api.request("GET", f"/api/device/info/{dev.device_id}", token)
            assert json.loads(body)["connectedVia"] == "broker"
        finally:
            await dev.close()
        # the rules of reading a device
        other = await api.login(world.customer2.email)
        status, body, _ = await api.request("GET", path, other)
        assert status == 403 and json.loads(body)["errorCode"] == 20
        status, body, _ = await api.request("GET", path, await api.login(world.tenant2.email))
        assert status == 404 and json.loads(body)["errorCode"] == 32


async def test_a_device_created_on_another_node_is_served_at_once(start_server, world, mqtt_url):
    """Presence keeps state for registered devices only.  A device another
    node created (this node's listeners did not hear of it) connects and
    announces itself: its presence is held aside.  The first REST call that
    finds it in the database makes it known, the held presence applies, and
    the call is answered without waiting for this node's next look."""
    from fleetrpc.store.entities import DeviceRepository

    async with start_server() as (server, api):
        ctx = server.ctx
        made = await DeviceRepository(ctx.db).create(world.t1, "Made elsewhere")
        dev = DeviceClient(made.id, mqtt_url)
        dev.add_method("echo", lambda p: p)
        await dev.connect()
        try:
            await wait_until(lambda: made.id in ctx.dispatcher.presence._unverified)  # arrived, and held
            assert made.id not in ctx.registered_devices and not ctx.dispatcher.is_online(made.id)
            token = await api.login(world.tenant.email)
            status, body, _ = await api.request("POST", f"{V2}/twoway/{made.id}", token,
                                                json={"method": "echo", "params": {"x": 1}, "timeout": 5000})
            assert (status, json.loads(body)) == (200, {"x": 1})
            assert made.id in ctx.registered_devices and ctx.dispatcher.is_online(made.id)
        finally:
            await dev.close()


async def test_every_accepted_rest_call_is_announced_to_the_event_sinks(start_server, world, mqtt_url):
    """RPC_CALL_FROM_SERVER_TO_DEVICE, as ThingsBoard's rule engine gets it:
    lightweight calls too (they leave no other event), persistent ones once
    stored; a refused call is not announced."""
    import uuid

    from fleetrpc.transport import MqttTransport

    topic = f"events-{uuid.uuid4().hex[:8]}"
    seen = []
    watcher = MqttTransport(mqtt_url)
    watcher.on_message = lambda t, payload, props: seen.append(json.loads(payload))
    await watcher.start([(f"{topic}/RPC_CALL_FROM_SERVER_TO_DEVICE", 1)])
    try:
        async with start_server(events={"mqtt_topic": topic}) as (server, api):
            ctx = server.ctx
            token = await api.login(world.tenant.email)
            dev = DeviceClient(world.dev_t1.id, mqtt_url)
            dev.add_method("echo", lambda p: p)
            await dev.connect()
            try:
                await wait_until(lambda: ctx.dispatcher.is_online(world.dev_t1.id))
                status, _, _ = await api.request("POST", f"/api/rpc/twoway/{world.dev_t1.id}", token,
                                                 json={"method": "echo", "params": {"a": 1}, "timeout": 7000})
                assert status == 200
                chosen = str(uuid.uuid4())
                status, _, _ = await api.request("POST", f"/api/rpc/oneway/{world.dev_t1.id}", token,
                                                 json={"method": "echo", "persistent": True, "requestUUID": chosen,
                                                       "additionalInfo": {"why": "test"}})
                assert status == 200
                # refused: no announcement
                other = await api.login(world.tenant2.email)
                status, _, _ = await api.request("POST", f"/api/rpc/twoway/{world.dev_t1.id}", other,
                                                 json={"method": "echo"})
                assert status == 404
                status, _, _ = await api.request("POST", f"/api/rpc/twoway/{world.dev_t1.id}", token, json={})
                assert status == 400
                await wait_until(lambda: len(seen) >= 2)
                await asyncio.sleep(0.2)
            finally:
                await dev.close()
    finally:
        await watcher.close()
    light, persistent = (e["body"] for e in seen)
    assert len(seen) == 2 and {e["type"] for e in seen} == {"RPC_CALL_FROM_SERVER_TO_DEVICE"}
    assert light["deviceId"] == {"entityType": "DEVICE", "id": world.dev_t1.id}
    assert light["tenantId"] == {"entityType": "TENANT", "id": world.t1}
    assert (light["method"], light["params"], light["oneway"], light["persistent"]) == ("echo", {"a": 1}, False, False)
    assert uuid.UUID(light["requestUUID"]) and light["expirationTime"] > 1_600_000_000_000
    assert (persistent["requestUUID"], persistent["oneway"], persistent["persistent"]) == (chosen, True, True)
    assert persistent["additionalInfo"] == {"why": "test"}
