"""Persistent RPC through REST, on SQLite and PostgreSQL; restart with calls
pending; graceful shutdown with calls in flight; health and metrics."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from fleetrpc.device import DeviceClient
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.mqtt


async def _online(mqtt_url, ctx, device_id, **methods) -> DeviceClient:
    dev = DeviceClient(device_id, mqtt_url)
    dev.add_method("echo", lambda p: p)
    for name, fn in methods.items():
        dev.add_method(name, fn)
    await dev.connect()
    await wait_until(lambda: ctx.dispatcher.is_online(device_id))
    return dev


async def test_persistent_lifecycle_and_access(start_server, world, mqtt_url):
    async with start_server() as (server, api):
        ctx = server.ctx
        tenant = await api.login(world.tenant.email)
        customer = await api.login(world.customer.email)
        customer2 = await api.login(world.customer2.email)
        tenant2 = await api.login(world.tenant2.email)
        sysadmin = await api.login(world.sysadmin.email)
        dev_id = world.dev_c1.id
        chosen = str(uuid.uuid4())
        status, body, _ = await api.request(
            "POST", f"/api/rpc/twoway/{dev_id}", customer,
            json={"method": "echo", "params": {"x": 1}, "persistent": True, "retries": 2,
                  "timeout": 5000, "additionalInfo": {"note": "n"}, "requestUUID": chosen})
        assert (status, json.loads(body)) == (200, {"rpcId": chosen})
        status, body, _ = await api.request("GET", f"/api/rpc/persistent/{chosen}", tenant)
        rpc = json.loads(body)
        assert status == 200 and rpc["status"] == "QUEUED"
        assert rpc["id"] == {"entityType": "RPC", "id": chosen}
        assert rpc["tenantId"] == {"entityType": "TENANT", "id": world.t1}
        assert rpc["request"]["body"] == {"method": "echo", "params": '{"x":1}'}
        assert rpc["additionalInfo"] == {"note": "n"}
        # the device comes online: delivered, answered
        dev = await _online(mqtt_url, ctx, dev_id)
        try:
            await ctx.engine.wait(chosen, 10, tenant_id=world.t1)
            status, body, _ = await api.request("GET", f"/api/rpc/persistent/{chosen}", customer)
            rpc = json.loads(body)
            assert (status, rpc["status"], rpc["response"]) == (200, "SUCCESSFUL", {"x": 1})
            # a customer user reads any call of its tenant (ThingsBoard), never another tenant's
            assert (await api.request("GET", f"/api/rpc/persistent/{chosen}", customer2))[0] == 200
            status, body, _ = await api.request("GET", f"/api/rpc/persistent/{chosen}", tenant2)
            assert status == 404 and json.loads(body)["errorCode"] == 32
            status, body, _ = await api.request("GET", f"/api/rpc/persistent/{chosen}", sysadmin)
            assert status == 403 and json.loads(body)["errorCode"] == 20

            # listing: paging, filters, sort; whoever may call the device
            for i in range(3):
                await api.request("POST", f"/api/rpc/oneway/{dev_id}", tenant,
                                  json={"method": "echo", "params": i, "persistent": True})
            status, body, _ = await api.request(
                "GET", f"/api/rpc/persistent/device/{dev_id}?pageSize=2&page=0&sortProperty=createdTime&sortOrder=ASC",
                customer)
            page = json.loads(body)
            assert status == 200 and page["totalElements"] == 4 and page["totalPages"] == 2 and page["hasNext"]
            assert page["data"][0]["id"]["id"] == chosen
            status, body, _ = await api.request(
                "GET", f"/api/rpc/persistent/device/{dev_id}?pageSize=10&page=0&rpcStatus=SUCCESSFUL", tenant)
            assert [r["id"]["id"] for r in json.loads(body)["data"]] == [chosen]
            for query, code in (("page=0", 400), ("pageSize=0&page=0", 400), ("pageSize=1&page=0&sortOrder=UP", 400),
                                ("pageSize=1&page=0&rpcStatus=DELETED", 400), ("pageSize=x&page=0", 400)):
                status, body, _ = await api.request("GET", f"/api/rpc/persistent/device/{dev_id}?{query}", tenant)
                assert status == code and json.loads(body)["errorCode"] == 31, query
            status, body, _ = await api.request("GET", f"/api/rpc/persistent/device/{dev_id}?pageSize=1&page=0", customer2)
            assert (status, body) == (403, b"You don't have permission to perform this operation!")
            status, body, _ = await api.request("GET", f"/api/rpc/persistent/device/{dev_id}?pageSize=1&page=0", tenant2)
            assert (status, body) == (404, b"Device with requested id wasn't found!")

            # deleting: the tenant administrator only
            status, body, _ = await api.request("DELETE", f"/api/rpc/persistent/{chosen}", customer)
            assert status == 403 and json.loads(body)["errorCode"] == 20
            assert (await api.request("DELETE", f"/api/rpc/persistent/{chosen}", tenant2))[0] == 404
            assert (await api.request("DELETE", f"/api/rpc/persistent/{chosen}", tenant))[:2] == (200, b"")
            assert (await api.request("GET", f"/api/rpc/persistent/{chosen}", tenant))[0] == 404
            # a reused requestUUID
            status, body, _ = await api.request(
                "POST", f"/api/rpc/twoway/{dev_id}", tenant,
                json={"method": "echo", "persistent": True, "requestUUID": page["data"][1]["id"]["id"]})
            assert status == 409
        finally:
            await dev.close()


async def test_restart_with_persistent_calls_pending(start_server, world, mqtt_url):
    async with start_server() as (server, api):
        token = await api.login(world.tenant.email)
        status, body, _ = await api.request("POST", f"/api/rpc/twoway/{world.dev_t1.id}", token,
                                            json={"method": "echo", "params": "kept", "persistent": True,
                                                  "timeout": 60000})
        rpc_id = json.loads(body)["rpcId"]
    # a new server on the same database recovers the call and delivers it
    async with start_server() as (server, api):
        ctx = server.ctx
        assert ctx.engine.unfinished == 1
        dev = await _online(mqtt_url, ctx, world.dev_t1.id)
        try:
            record = await ctx.engine.wait(rpc_id, 10, tenant_id=world.t1)
            assert (record.status.value, record.response) == ("SUCCESSFUL", "kept")
        finally:
            await dev.close()


async def test_graceful_shutdown_with_calls_in_flight(start_server, world, mqtt_url):
    release = asyncio.Event()

    async def slow(params):
        await release.wait()
        return "done"

    async def hang(params):
        await asyncio.sleep(3600)

    async with start_server(server={"drain_timeout_s": 0.5}) as (server, api):
        ctx = server.ctx
        dev = await _online(mqtt_url, ctx, world.dev_t1.id, slow=slow, hang=hang)
        token = await api.login(world.tenant.email)
        path = f"/api/rpc/twoway/{world.dev_t1.id}"
        finishing = asyncio.ensure_future(api.request("POST", path, token, json={"method": "slow", "timeout": 60000}))
        stuck = asyncio.ensure_future(api.request("POST", path, token, json={"method": "hang", "timeout": 60000}))
        persistent = await api.request("POST", path, token, json={"method": "hang", "persistent": True, "timeout": 60000,
                                                       "retries": 2})
        rpc_id = json.loads(persistent[1])["rpcId"]
        await wait_until(lambda: ctx.http_inflight == 2)
        stopping = asyncio.ensure_future(server.stop())
        await wait_until(lambda: ctx.draining)
        release.set()  # the first call finishes within the drain time ...
        status, body, _ = await finishing
        assert (status, json.loads(body)) == (200, "done")
        # ... the stuck one is answered with a clear status, nothing hangs
        status, body, _ = await stuck
        assert status == 503 and json.loads(body)["message"] == "Server is shutting down"
        await stopping
        await dev.close()
    # the persistent call stayed stored, unfinished: the next start recovers
    # it (its lost attempt counts as a timeout, a retry remains)
    async with start_server() as (server, api):
        assert server.ctx.engine.unfinished == 1
        assert (await server.ctx.engine.get(rpc_id, world.t1)).status.value in ("QUEUED", "SENT", "TIMEOUT")


async def test_health_ready_metrics(start_server, world, mqtt_url):
    async with start_server() as (server, api):
        assert (await api.request("GET", "/healthz"))[0] == 200
        status, body, _ = await api.request("GET", "/readyz")
        checks = json.loads(body)["checks"]
        # PostgreSQL: a cluster node, whose leases are valid too
        assert status == 200 and checks.pop("leases", True) is True
        assert checks == {"broker": True, "database": True}
        cluster = json.loads(body)["cluster"]
        assert cluster["owned"] == cluster["partitions"] and not cluster["fenced"]
        dev = await _online(mqtt_url, server.ctx, world.dev_t1.id)
        try:
            token = await api.login(world.tenant.email)
            await api.request("POST", f"/api/rpc/twoway/{world.dev_t1.id}", token, json={"method": "echo"})
            await api.request("POST", f"/api/rpc/twoway/{world.dev_t1.id}", token,
                              json={"method": "echo", "persistent": True})
            status, body, r = await api.request("GET", "/metrics")
            text = body.decode()
            assert status == 200 and r.content_type == "text/plain"
            for line in (
                # (REST RPC metrics carry the tenant since the HTTP speed-up)
                f'fleetrpc_rest_rpc_calls_total{{kind="twoway",outcome="ok",tenant="{world.t1}"}} 1.0',
                f'fleetrpc_rest_rpc_calls_total{{kind="persistent",outcome="queued",tenant="{world.t1}"}} 1.0',
                'fleetrpc_http_requests_total{method="POST",route="/api/rpc/twoway/{deviceId}",status="200"} 2.0',
                "fleetrpc_devices_online 1.0",
            ):
                assert line in text, line
            for name in ("fleetrpc_pending_calls", "fleetrpc_rest_rpc_duration_seconds_bucket",
                         "fleetrpc_store_write_duration_seconds_count", "fleetrpc_persistent_transitions_total",
                         "fleetrpc_event_queue_depth", "fleetrpc_event_queue_bytes"):
                assert name in text, name
        finally:
            await dev.close()


async def test_a_failed_call_says_why_in_its_response(start_server, world, mqtt_url):
    """ThingsBoard's FAILED call carries ``response.error`` (its console shows
    it); without a reply, so does fleetrpc's."""
    async with start_server() as (server, api):
        ctx = server.ctx
        tenant = await api.login(world.tenant.email)
        dev = await _online(mqtt_url, ctx, world.dev_t1.id, nul=lambda p: "a\u0000b")
        try:
            status, body, _ = await api.request("POST", f"/api/rpc/twoway/{world.dev_t1.id}", tenant,
                                                json={"method": "nul", "persistent": True})
            rpc_id = json.loads(body)["rpcId"]
            await ctx.engine.wait(rpc_id, 10, tenant_id=world.t1)
            status, body, _ = await api.request("GET", f"/api/rpc/persistent/{rpc_id}", tenant)
            rpc = json.loads(body)
            assert (status, rpc["status"]) == (200, "FAILED")
            assert "cannot be stored" in rpc["response"]["error"], rpc
            # a successful call's response is the device's reply, untouched
            status, body, _ = await api.request("POST", f"/api/rpc/twoway/{world.dev_t1.id}", tenant,
                                                json={"method": "echo", "params": {"error": 1}, "persistent": True})
            rpc_id = json.loads(body)["rpcId"]
            await ctx.engine.wait(rpc_id, 10, tenant_id=world.t1)
            status, body, _ = await api.request("GET", f"/api/rpc/persistent/{rpc_id}", tenant)
            assert (json.loads(body)["status"], json.loads(body)["response"]) == ("SUCCESSFUL", {"error": 1})
        finally:
            await dev.close()


async def test_metrics_ask_for_their_token_when_one_is_set(start_server, world):
    """/metrics names tenants by id: ``http.metrics_token`` closes it to
    whoever does not scrape with that bearer token (a tenant's JWT is not it)."""
    secret = "scrape-me-" + uuid.uuid4().hex
    async with start_server(http={"metrics_token": secret}) as (server, api):
        user_jwt = await api.login(world.tenant.email)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {user_jwt}"},
                        {"Authorization": secret}, {"X-Authorization": f"Bearer {secret}"}):
            status, body, r = await api.request("GET", "/metrics", headers=headers)
            assert status == 401 and b"fleetrpc_" not in body, headers
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        status, body, _ = await api.request("GET", "/metrics", headers={"Authorization": f"Bearer {secret}"})
        assert status == 200 and b"fleetrpc_devices_online" in body
        # health checks stay open for the load balancer
        assert (await api.request("GET", "/healthz"))[0] == 200


async def test_the_longest_timeout_is_stored_on_both_stores(start_server, world, mqtt_url):
    """Every timeout REST accepts (up to ``MAX_TIMEOUT_MS``) is stored with a
    persistent call: PostgreSQL's 32-bit column answered 500 past 24.8 days
    while SQLite stored it."""
    from fleetrpc.dispatch.options import MAX_TIMEOUT_MS

    async with start_server() as (server, api):
        tenant = await api.login(world.tenant.email)
        for timeout in (2**31, MAX_TIMEOUT_MS):
            status, body, _ = await api.request("POST", f"/api/rpc/twoway/{world.dev_t1.id}", tenant,
                                                json={"method": "echo", "persistent": True, "timeout": timeout})
            assert status == 200, body
            rpc_id = json.loads(body)["rpcId"]
            status, body, _ = await api.request("GET", f"/api/rpc/persistent/{rpc_id}", tenant)
            assert status == 200 and json.loads(body)["status"] == "QUEUED", body
            assert (await server.ctx.store.get(rpc_id, world.t1)).timeout_ms == timeout
        status, body, _ = await api.request("POST", f"/api/rpc/twoway/{world.dev_t1.id}", tenant,
                                            json={"method": "echo", "persistent": True, "timeout": MAX_TIMEOUT_MS + 1})
        assert status == 400 and b"timeout" in body
