"""ThingsBoard's HTTP device API for RPC (``/api/v1/{token}/rpc``) through
``fleetrpc serve`` with the device endpoint: ThingsBoard's own HTTP device
SDK (tb_device_http, from tb-mqtt-client) unchanged, then the edges with
plain requests: wrong token, poll timeout, a call made between two polls,
presence while polling, another device's request ids, oversized bodies, the
endpoint disabled."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from tb_device_http import TBHTTPDevice

from tests.helpers.waiting import wait_until
from tests.server.conftest import sqlite_url, start_server, store_url, world  # noqa: F401 (fixtures)

from .test_server import ENDPOINT, _create_device

pytestmark = pytest.mark.mqtt


async def test_thingsboards_http_device_sdk_answers_rest_calls_and_calls_the_server(start_server, world):
    async with start_server(endpoint=ENDPOINT) as (server, api):
        ctx = server.ctx
        admin = await api.login(world.tenant.email)
        device_id, token = await _create_device(api, admin, "HTTP Meter 1")
        device = TBHTTPDevice(ctx.url.rstrip("/"), token)
        seen = []

        def on_rpc(request):
            seen.append(request)
            device.send_rpc(name=request["method"], params={"reading": 42}, rpc_id=request["id"])

        assert await asyncio.to_thread(device.connect)  # (its connection test posts telemetry)
        device.subscribe("rpc", on_rpc)
        try:
            await wait_until(lambda: ctx.dispatcher.is_online(device_id))
            status, body, _ = await api.request("POST", f"/api/rpc/twoway/{device_id}", admin,
                                                json={"method": "read", "params": {"channel": 2}})
            # the SDK answers with {"method", "params"}; ThingsBoard passes that on as the reply
            assert (status, json.loads(body)) == (200, {"method": "read", "params": {"reading": 42}})
            assert seen[0]["method"] == "read" and seen[0]["params"] == {"channel": 2}
            assert isinstance(seen[0]["id"], int)
            # a client-side call: the server's built-in answers it
            now = await asyncio.to_thread(device.send_rpc, "getCurrentTime")
            assert isinstance(now, int) and now > 1_600_000_000_000
            # what the console says of where it is
            status, body, _ = await api.request("GET", f"/api/device/info/{device_id}", admin)
            info = json.loads(body)
            assert info["active"] is True and info["connectedVia"] == ctx.dispatcher.node_id
        finally:
            device.unsubscribe("rpc")
            device.stop_publish_worker()


async def test_http_polling_edges(start_server, world):
    async with start_server(endpoint=ENDPOINT) as (server, api):
        ctx = server.ctx
        ctx.endpoint.http.grace = 0.3
        admin = await api.login(world.tenant.email)
        a_id, a_token = await _create_device(api, admin, "HTTP A")
        _, b_token = await _create_device(api, admin, "HTTP B")

        async def poll(token: str, timeout_ms: int = 5000):
            status, body, _ = await api.request("GET", f"/api/v1/{token}/rpc?timeout={timeout_ms}")
            return status, (json.loads(body) if body else None)

        # a wrong token is 401 with no body, as ThingsBoard answers, whatever
        # else is wrong with the request; nothing is online
        assert (await api.request("GET", "/api/v1/no-such-token/rpc?timeout=100"))[:2] == (401, b"")
        assert (await api.request("POST", "/api/v1/no-such-token/rpc", json={"method": "m"}))[0] == 401
        assert (await api.request("GET", "/api/v1/no-such-token/rpc?timeout=soon"))[:2] == (401, b"")
        assert (await api.request("POST", "/api/v1/no-such-token/rpc/x", json={}))[:2] == (401, b"")
        # no call within the poll's timeout: 408; the device was online while it polled
        assert await poll(a_token, 200) == (408, None)
        assert ctx.dispatcher.is_online(a_id)
        # ... and goes offline once it stops polling (after the grace)
        await wait_until(lambda: not ctx.dispatcher.is_online(a_id))
        # a bad timeout is a clear 400
        assert (await api.request("GET", f"/api/v1/{a_token}/rpc?timeout=soon"))[0] == 400

        # a call made while the device is online but between two polls waits for the next poll
        waiting = asyncio.ensure_future(poll(a_token, 200))
        await wait_until(lambda: ctx.dispatcher.is_online(a_id))
        assert (await waiting)[0] == 408
        call = asyncio.ensure_future(api.request("POST", f"/api/rpc/twoway/{a_id}", admin,
                                                 json={"method": "open", "params": [1]}))
        await asyncio.sleep(0.1)
        status, request = await poll(a_token)
        assert status == 200 and (request["method"], request["params"]) == ("open", [1])
        # another device cannot answer it: its request ids are its own
        assert (await api.request("POST", f"/api/v1/{b_token}/rpc/{request['id']}", json={"by": "B"}))[0] == 200
        assert not call.done()
        assert (await api.request("POST", f"/api/v1/{a_token}/rpc/{request['id']}", json={"by": "A"}))[0] == 200
        status, body, _ = await call
        assert (status, json.loads(body)) == (200, {"by": "A"})
        # answering it again changes nothing
        assert (await api.request("POST", f"/api/v1/{a_token}/rpc/{request['id']}", json={"by": "A"}))[0] == 200
        assert (await api.request("POST", f"/api/v1/{a_token}/rpc/x", json={}))[0] == 400
        # an answer needs a body (ThingsBoard's @RequestBody)
        assert (await api.request("POST", f"/api/v1/{a_token}/rpc/{request['id']}", data=b""))[0] == 400

        # a one-way call ends when a poll takes it
        polling = asyncio.ensure_future(poll(a_token))
        await wait_until(lambda: ctx.dispatcher.is_online(a_id))
        status, _, _ = await api.request("POST", f"/api/rpc/oneway/{a_id}", admin, json={"method": "beep"})
        assert status == 200
        assert (await polling)[1]["method"] == "beep"

        # oversized and malformed bodies: clear errors, the server stays up
        big = {"x": "y" * (ctx.endpoint.settings.max_payload + 1)}
        assert (await api.request("POST", f"/api/v1/{a_token}/rpc", json=big))[0] == 413
        assert (await api.request("POST", f"/api/v1/{a_token}/rpc", data=b"[1,2"))[0] == 400
        # params one level past MAX_JSON_DEPTH: refused on every Python
        past = b'{"method":"m","params":' + b"[" * 500 + b"]" * 500 + b"}"
        assert (await api.request("POST", f"/api/v1/{a_token}/rpc", data=past))[0] == 400
        assert (await api.request("POST", f"/api/v1/{a_token}/telemetry", json={"t": 1}))[0] == 200
        assert ctx.endpoint.stats.unknown_response >= 2


async def test_a_persistent_call_waits_for_an_http_device_to_poll(start_server, world):
    async with start_server(endpoint=ENDPOINT) as (server, api):
        ctx = server.ctx
        admin = await api.login(world.tenant.email)
        device_id, token = await _create_device(api, admin, "HTTP Valve")
        status, body, _ = await api.request("POST", f"/api/rpc/twoway/{device_id}", admin,
                                            json={"method": "close", "persistent": True, "timeout": 20000})
        rpc_id = json.loads(body)["rpcId"]
        status, body, _ = await api.request("GET", f"/api/v1/{token}/rpc?timeout=10000")
        request = json.loads(body)
        assert status == 200 and request["method"] == "close"
        await wait_until(lambda: ctx.engine._live[rpc_id].record.status.value == "DELIVERED")
        await api.request("POST", f"/api/v1/{token}/rpc/{request['id']}", json={"closed": True})
        record = await ctx.engine.wait(rpc_id, 10, tenant_id=world.t1)
        assert (record.status.value, record.response) == ("SUCCESSFUL", {"closed": True})


async def test_without_the_endpoint_the_device_api_says_so(start_server, world):
    async with start_server() as (server, api):
        status, body, _ = await api.request("GET", "/api/v1/any-token/rpc?timeout=100")
        assert status == 503 and b"[endpoint] enabled" in body



async def test_the_access_log_never_shows_a_device_token(start_server, world, caplog):
    import logging

    async with start_server(endpoint=ENDPOINT, http={"access_log": True}) as (server, api):
        admin = await api.login(world.tenant.email)
        _, token = await _create_device(api, admin, "HTTP Logged")
        with caplog.at_level(logging.INFO):
            assert (await api.request("POST", f"/api/v1/{token}/telemetry", json={"t": 1}))[0] == 200
            assert (await api.request("GET", f"/api/v1/{token}/rpc?timeout=50"))[0] == 408
            # (the console's event stream carries its JWT as ?token=; so may any query)
            assert (await api.request("GET", f"/api/tenant/devices?pageSize=1&page=0&token={admin}", admin))[0] == 200
        lines = [r.getMessage() for r in caplog.records if "/api/v1/" in r.getMessage()]
        assert len(lines) == 2 and all("/api/v1/***/" in line for line in lines), lines
        assert token not in caplog.text and admin not in caplog.text and "token=***" in caplog.text


async def test_stopping_the_server_ends_the_long_polls_at_once(start_server, world, caplog):
    """A waiting poll is no work in flight: the drain answers it 408 (the
    device polls again later) instead of waiting for it and failing it."""
    import aiohttp

    async with aiohttp.ClientSession() as device_side:  # (outlives the fixture's session)
        async def poll(url: str) -> int:
            async with device_side.get(url) as r:
                return r.status

        async with start_server(endpoint=ENDPOINT) as (server, api):
            admin = await api.login(world.tenant.email)
            device_id, token = await _create_device(api, admin, "HTTP Drained")
            polling = asyncio.ensure_future(poll(f"{server.ctx.url}/api/v1/{token}/rpc?timeout=120000"))
            await wait_until(lambda: server.ctx.dispatcher.is_online(device_id))
        assert await polling == 408
    assert "still running" not in caplog.text


async def test_a_device_polling_one_node_answers_rest_calls_made_at_another(start_server, world, tmp_path):
    """Two servers on one broker and one database: the device polls node B
    over HTTP, the REST call is made at node A and relayed."""
    node_b = {"endpoint": ENDPOINT, "dispatch": {"node_id": "node-b"}, "server": {"data_dir": str(tmp_path / "b")}}
    async with start_server(endpoint=ENDPOINT, dispatch={"node_id": "node-a"}) as (a, api), \
            start_server(seed=False, **node_b) as (b, api_b):
        admin = await api.login(world.tenant.email)
        device_id, token = await _create_device(api, admin, "HTTP Pump")

        async def device() -> None:
            while True:
                status, body, _ = await api_b.request("GET", f"/api/v1/{token}/rpc?timeout=10000")
                if status == 200:
                    request = json.loads(body)
                    await api_b.request("POST", f"/api/v1/{token}/rpc/{request['id']}",
                                        json={"at": "node-b", "echo": request["params"]})

        polling = asyncio.ensure_future(device())
        try:
            await wait_until(lambda: a.ctx.dispatcher.is_online(device_id))
            status, body, _ = await api.request("GET", f"/api/device/info/{device_id}", admin)
            assert json.loads(body)["connectedVia"] == "node-b"
            status, body, _ = await api.request("POST", f"/api/rpc/twoway/{device_id}", admin,
                                                json={"method": "spin", "params": {"rpm": 900}})
            assert (status, json.loads(body)) == (200, {"at": "node-b", "echo": {"rpm": 900}})
            assert a.ctx.endpoint.stats.requests == 0 and b.ctx.endpoint.stats.requests == 1
        finally:
            polling.cancel()
            await asyncio.gather(polling, return_exceptions=True)


async def test_a_retry_of_a_call_an_http_device_has_not_answered_is_not_sent_twice(start_server, world):
    async with start_server(endpoint=ENDPOINT) as (server, api):
        ctx = server.ctx
        admin = await api.login(world.tenant.email)
        device_id, token = await _create_device(api, admin, "HTTP Slow")
        polling = asyncio.ensure_future(api.request("GET", f"/api/v1/{token}/rpc?timeout=10000"))
        await wait_until(lambda: ctx.dispatcher.is_online(device_id))
        status, body, _ = await api.request(
            "POST", f"/api/rpc/twoway/{device_id}", admin,
            json={"method": "open", "persistent": True, "timeout": 300, "retries": 3,
                  "expirationTime": int(time.time() * 1000) + 30_000})
        rpc_id = json.loads(body)["rpcId"]
        status, body, _ = await polling
        request = json.loads(body)
        # slow to answer: the attempt times out and is retried, but not sent again
        await wait_until(lambda: ctx.endpoint.stats.retries_merged >= 1)
        status, _, _ = await api.request("GET", f"/api/v1/{token}/rpc?timeout=300")
        assert status == 408
        await api.request("POST", f"/api/v1/{token}/rpc/{request['id']}", json={"opened": True})
        record = await ctx.engine.wait(rpc_id, 10, tenant_id=world.t1)
        assert (record.status.value, record.response) == ("SUCCESSFUL", {"opened": True})


async def test_attributes_over_http_are_none(start_server, world):
    """fleetrpc keeps no attributes: a device asking gets none, one waiting
    for updates gets 408 after its timeout, as ThingsBoard answers when
    nothing changed; neither makes the device reachable for RPC."""
    async with start_server(endpoint=ENDPOINT) as (server, api):
        admin = await api.login(world.tenant.email)
        device_id, token = await _create_device(api, admin, "HTTP Attributes")
        device = TBHTTPDevice(server.ctx.url.rstrip("/"), token)
        assert await asyncio.to_thread(device.request_attributes, ["mode"], ["fw_version"]) == {}
        status, _, _ = await api.request("GET", f"/api/v1/{token}/attributes/updates?timeout=100")
        assert status == 408 and not server.ctx.dispatcher.is_online(device_id)
        assert (await api.request("GET", "/api/v1/wrong-token/attributes"))[0] == 401
        assert (await api.request("GET", f"/api/v1/{token}/attributes/updates?timeout=-1"))[0] == 400


async def test_a_poll_whose_client_has_gone_takes_no_call(start_server, world):
    """aiohttp does not cancel a handler whose client went away: its poll
    must not take a call (it would be lost, yet DELIVERED); the device's
    next poll gets it."""
    import aiohttp

    async with start_server(endpoint=ENDPOINT) as (server, api):
        ctx = server.ctx
        admin = await api.login(world.tenant.email)
        device_id, token = await _create_device(api, admin, "HTTP Gone")
        url = f"{ctx.url}/api/v1/{token}/rpc"
        async with aiohttp.ClientSession() as device_side:
            # the device's HTTP client gives up sooner than its poll's timeout
            with pytest.raises(asyncio.TimeoutError):
                async with device_side.get(f"{url}?timeout=60000", timeout=aiohttp.ClientTimeout(total=0.3)) as r:
                    await r.read()
            await wait_until(lambda: ctx.endpoint.http.polls_waiting() == 1)  # (still waiting, server side)

            async def poll() -> tuple[int, bytes]:
                async with device_side.get(f"{url}?timeout=5000") as r:
                    return r.status, await r.read()

            live = asyncio.ensure_future(poll())
            await wait_until(lambda: ctx.endpoint.http.polls_waiting() == 2)
            status, _, _ = await api.request("POST", f"/api/rpc/oneway/{device_id}", admin, json={"method": "beep"})
            assert status == 200
            status, body = await live
            assert status == 200 and json.loads(body)["method"] == "beep"
            await wait_until(lambda: ctx.endpoint.http.polls_waiting() == 0)  # the gone one ended too


async def test_a_persistent_call_dropped_between_polls_reaches_the_device_with_its_retry(start_server, world):
    """A call queued for the next poll is dropped when the device stops
    polling (after the grace): its retry is a new request, sent with the
    device's next poll, not merged into the request it never got."""
    async with start_server(endpoint=ENDPOINT) as (server, api):
        ctx = server.ctx
        ctx.endpoint.http.grace = 0.3
        admin = await api.login(world.tenant.email)
        device_id, token = await _create_device(api, admin, "HTTP Sleepy")
        assert (await api.request("GET", f"/api/v1/{token}/rpc?timeout=50"))[0] == 408  # online for the grace
        status, body, _ = await api.request(
            "POST", f"/api/rpc/twoway/{device_id}", admin,
            json={"method": "open", "persistent": True, "timeout": 500, "retries": 5,
                  "expirationTime": int(time.time() * 1000) + 30_000})
        rpc_id = json.loads(body)["rpcId"]
        await wait_until(lambda: not ctx.dispatcher.is_online(device_id))  # the queued request is dropped
        for _ in range(10):
            status, body, _ = await api.request("GET", f"/api/v1/{token}/rpc?timeout=1000")
            if status == 200:
                break
        assert status == 200, "the persistent call never reached the device"
        request = json.loads(body)
        assert request["method"] == "open" and ctx.endpoint.stats.retries_merged == 0
        await api.request("POST", f"/api/v1/{token}/rpc/{request['id']}", json={"opened": True})
        record = await ctx.engine.wait(rpc_id, 10, tenant_id=world.t1)
        assert (record.status.value, record.response) == ("SUCCESSFUL", {"opened": True})


async def test_bodies_in_several_segments_are_read_whole(start_server, world):
    import aiohttp

    async def in_two(data: bytes):
        yield data[:7]
        await asyncio.sleep(0.1)
        yield data[7:]

    async with start_server(endpoint=ENDPOINT) as (server, api):
        ctx = server.ctx
        admin = await api.login(world.tenant.email)
        device_id, token = await _create_device(api, admin, "HTTP Chunky")
        url = f"{ctx.url}/api/v1/{token}/rpc"
        async with aiohttp.ClientSession() as s:
            call = json.dumps({"method": "getCurrentTime", "params": {}}).encode()
            for headers in ({"Content-Length": str(len(call))}, {}):  # (without: chunked)
                async with s.post(url, data=in_two(call), headers=headers) as r:
                    assert r.status == 200 and int(await r.read()) > 1_600_000_000_000

            async def device() -> None:
                async with s.get(f"{url}?timeout=5000") as r:
                    request = json.loads(await r.read())
                answer = json.dumps({"temperature": 21.5, "unit": "C"}).encode()
                async with s.post(f"{url}/{request['id']}", data=in_two(answer),
                                  headers={"Content-Length": str(len(answer))}) as r:
                    assert r.status == 200

            answering = asyncio.ensure_future(device())
            await wait_until(lambda: ctx.dispatcher.is_online(device_id))
            status, body, _ = await api.request("POST", f"/api/rpc/twoway/{device_id}", admin, json={"method": "read"})
            assert (status, json.loads(body)) == (200, {"temperature": 21.5, "unit": "C"})
            await answering


async def test_attribute_update_polls_per_device_are_bounded(start_server, world):
    """A device (or whoever has its token) that opens attribute-update polls
    and drops them at once leaves each waiting its whole timeout (aiohttp
    does not cancel a handler whose client has gone): they are bounded per
    device as the RPC polls are, the oldest ending (408)."""
    import aiohttp

    from fleetrpc.transport.endpoint.http import MAX_POLLS

    async with start_server(endpoint=ENDPOINT) as (server, api):
        ctx = server.ctx
        admin = await api.login(world.tenant.email)
        _, token = await _create_device(api, admin, "HTTP Idler")
        url = f"{ctx.url}/api/v1/{token}/attributes/updates?timeout=300000"
        async with aiohttp.ClientSession() as device_side:
            for _ in range(MAX_POLLS + 5):
                with pytest.raises(asyncio.TimeoutError):
                    async with device_side.get(url, timeout=aiohttp.ClientTimeout(total=0.05)) as r:
                        await r.read()
            await asyncio.sleep(0.2)  # (the last ones reach the server)
            assert ctx.endpoint.http.polls_waiting() == MAX_POLLS
