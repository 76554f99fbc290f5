"""Devices authenticate at the broker, through ``fleetrpc serve``: the
server's own Mosquitto runs the dynamic security plugin (preloaded from the
database, kept in step through the REST API), an external Mosquitto is
provisioned with its admin account, EMQX's hooks answer on the server's
HTTP port; and devices' own calls are answered by the server
(``[client_rpc]``: built-ins, a webhook taking every method)."""

from __future__ import annotations

import asyncio
import json
import uuid

import gmqtt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from fleetrpc.broker import start_broker
from fleetrpc.broker_auth.dynsec import DynsecAccounts
from fleetrpc.device import DeviceClient
from fleetrpc.errors import RemoteError
from tests.helpers.rest import Client
from tests.helpers.waiting import wait_until


pytestmark = pytest.mark.mqtt

OWN_BROKER = {"mqtt": {"url": None}, "server": {"broker": "mosquitto"}}


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def _connects(url: str, username: str | None, password: str | None) -> bool:
    """Whether the broker at ``url`` lets this account in (a plain client)."""
    client = gmqtt.Client(f"probe-{uuid.uuid4().hex[:8]}")
    client.set_config({"reconnect_retries": 0})
    if username is not None:
        client.set_auth_credentials(username, password)
    try:
        await client.connect("127.0.0.1", _port(url), version=gmqtt.constants.MQTTv311)
    except gmqtt.mqtt.handler.MQTTConnectError:
        return False
    await client.disconnect()
    return True


async def _device(url: str, device_id: str, token: str) -> DeviceClient:
    dev = DeviceClient(device_id, url, username=token, password=token, version=4)
    dev.add_method("echo", lambda params: params)
    await dev.connect()
    return dev


async def _new_device(tenant: Client, name: str) -> tuple[str, str]:
    """A device created through the REST API: (id, access token)."""
    status, body = await tenant.post("/api/device", {"name": name, "type": "sensor"})
    assert status == 200, body
    device_id = body["id"]["id"]
    status, creds = await tenant.get(f"/api/device/{device_id}/credentials")
    assert status == 200, creds
    return device_id, creds["credentialsId"]


async def _twoway(tenant: Client, device_id: str, params) -> tuple[int, object]:
    return await tenant.post(f"/api/plugins/rpc/twoway/{device_id}", {"method": "echo", "params": params,
                                                                     "timeout": 5000})


async def test_own_broker_authenticates_devices_by_token(start_server, world):
    async with start_server(**OWN_BROKER) as (server, api):
        ctx = server.ctx
        url = ctx.broker.url
        assert ctx.broker.dynsec is not None and ctx.provisioner is not None
        tenant = Client(api, await api.login(world.tenant.email))

        # A device of the database before the start was preloaded.
        preloaded = await ctx.devices.credentials(world.t1, world.dev_t1.id)
        old = await _device(url, world.dev_t1.id, preloaded.credentials_id)
        # A device created through the REST API connects with its token ...
        device_id, token = await _new_device(tenant, "Thermometer 1")
        dev = await _device(url, device_id, token)
        try:
            await wait_until(lambda: ctx.dispatcher.is_online(device_id))
            # ... and answers a REST call.
            assert await _twoway(tenant, device_id, {"t": 21.5}) == (200, {"t": 21.5})
            assert await _twoway(tenant, world.dev_t1.id, [1, 2]) == (200, [1, 2])
            # A wrong token, another device's id with it, nobody: refused.
            assert not await _connects(url, "not-a-token", "not-a-token")
            assert not await _connects(url, token, "guess")
            assert not await _connects(url, None, None)
            # The server's account is the only one that publishes requests;
            # a device cannot even subscribe to another device's requests.
            probe = gmqtt.Client(f"probe-{uuid.uuid4().hex[:8]}")
            probe.set_auth_credentials(token, token)
            subacks: asyncio.Queue = asyncio.Queue()
            probe.on_subscribe = lambda c, mid, qos, props: subacks.put_nowait(list(qos))
            await probe.connect("127.0.0.1", _port(url), version=gmqtt.constants.MQTTv311)
            probe.subscribe(f"fleetrpc/d/{world.dev_t1.id}/req/#", qos=1)
            assert (await asyncio.wait_for(subacks.get(), 5))[0] >= 0x80
            await probe.disconnect()

            # A token changed through the REST API: the old one stops working.
            status, creds = await tenant.get(f"/api/device/{device_id}/credentials")
            status, changed = await tenant.post("/api/device/credentials", {**creds, "credentialsId": "NEW_TOKEN_1"})
            assert status == 200, changed
            assert not await _connects(url, token, token)
            assert await _connects(url, "NEW_TOKEN_1", "NEW_TOKEN_1")

            # A device deleted through the REST API is cut off and refused.
            status, _ = await tenant.delete(f"/api/device/{world.dev_t1.id}")
            assert status == 200
            await wait_until(lambda: not old.connected)
            assert not await _connects(url, preloaded.credentials_id, preloaded.credentials_id)
        finally:
            await dev.close()
            await old.close(offline=False)


async def test_device_calls_the_server_and_a_webhook_answers_any_method(start_server, world):
    """Client-side RPC through ``fleetrpc serve``: the built-ins, a webhook
    for a method listed nowhere (``webhook_methods = ["*"]``), and one
    TO_SERVER_RPC_REQUEST per call to the event sinks."""
    calls, events = [], []
    got_events = asyncio.Event()

    async def hook(request):
        body = await request.json()
        calls.append(body)
        if body["method"] == "refuse":
            return web.Response(status=500)
        return web.json_response({"answer": body["params"]["q"] * 2, "tenant": body["tenantId"]})

    async def sink(request):
        events.extend(await request.json())
        got_events.set()
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/events", sink)
    http = TestServer(app)
    await http.start_server()
    sections = {
        **OWN_BROKER,
        "client_rpc": {"webhook_url": str(http.make_url("/hook")), "webhook_methods": ["*"]},
        "events": {"webhook_urls": [str(http.make_url("/events"))]},
    }
    try:
        async with start_server(**sections) as (server, api):
            ctx = server.ctx
            tenant = Client(api, await api.login(world.tenant.email))
            device_id, token = await _new_device(tenant, "Caller 1")
            dev = await _device(ctx.broker.url, device_id, token)
            try:
                now = await dev.call("getCurrentTime")
                assert isinstance(now, int) and now > 1_600_000_000_000
                limits = await dev.call("getSessionLimits")
                assert limits["maxPayloadSize"] == ctx.library.max_payload
                assert set(limits["rateLimits"]) == {"messages", "telemetryMessages", "telemetryDataPoints"}
                assert await dev.call("neverConfigured", {"q": 21}) == {"answer": 42, "tenant": world.t1}
                with pytest.raises(RemoteError, match="APPLICATION_ERROR.*answered HTTP 500"):
                    await dev.call("refuse", {"q": 0})
            finally:
                await dev.close()
            assert [c["method"] for c in calls] == ["neverConfigured", "refuse"]
            assert calls[0]["deviceId"] == device_id

            def requests():
                return [e for e in events if e.get("type") == "TO_SERVER_RPC_REQUEST"]

            while len(requests()) < 4:
                got_events.clear()
                await asyncio.wait_for(got_events.wait(), 10)
            # once per call, with the answer or the error
            bodies = [e["body"] for e in requests()]
            assert [b["method"] for b in bodies] == ["getCurrentTime", "getSessionLimits", "neverConfigured",
                                                     "refuse"]
            assert bodies[2]["response"] == {"answer": 42, "tenant": world.t1}
            assert "HTTP 500" in bodies[3]["error"]
            assert len({b["requestUUID"] for b in bodies}) == 4
    finally:
        await http.close()


async def test_events_are_published_on_the_configured_mqtt_topic(start_server, world, mqtt_url):
    """``[events] mqtt_topic``: each event goes out on ``{topic}/{type}``
    through the dispatcher's own connection."""
    from fleetrpc.transport import MqttTransport

    topic = f"events-{uuid.uuid4().hex[:8]}"
    seen = []
    watcher = MqttTransport(mqtt_url)
    watcher.on_message = lambda t, payload, props: seen.append((t, json.loads(payload)))
    await watcher.start([(f"{topic}/#", 1)])
    try:
        async with start_server(events={"mqtt_topic": topic}) as (server, _):
            dev = DeviceClient(world.dev_c1.id, mqtt_url)
            await dev.connect()
            try:
                assert isinstance(await dev.call("getCurrentTime"), int)
            finally:
                await dev.close()
            await wait_until(lambda: seen)
        (t, event), = seen
        assert t == f"{topic}/TO_SERVER_RPC_REQUEST" and event["type"] == "TO_SERVER_RPC_REQUEST"
        assert event["body"]["method"] == "getCurrentTime" and event["body"]["deviceId"]["id"] == world.dev_c1.id
    finally:
        await watcher.close()


async def test_external_mosquitto_is_provisioned_with_its_admin_account(start_server, world, store_url):
    """``mqtt.url`` a Mosquitto with the plugin and ``dynsec.admin_password``:
    the database's devices are provisioned at start (full resync), the
    server's account is created when missing, REST changes follow."""
    accounts = DynsecAccounts.generate()
    async with start_broker("mosquitto", dynsec=accounts) as broker:
        sections = {
            "mqtt": {"url": broker.url, "username": "fleetrpc-node-1", "password": "node-1-password"},
            "dynsec": {"admin_username": accounts.admin_username, "admin_password": accounts.admin_password},
        }
        assert not await _connects(broker.url, "fleetrpc-node-1", "node-1-password")
        async with start_server(**sections) as (server, api):
            ctx = server.ctx
            assert ctx.broker is None and ctx.provisioner is not None
            assert await _connects(broker.url, "fleetrpc-node-1", "node-1-password")  # created
            creds = await ctx.devices.credentials(world.t1, world.dev_c1.id)
            synced = await _device(broker.url, world.dev_c1.id, creds.credentials_id)  # the resync's
            tenant = Client(api, await api.login(world.tenant.email))
            device_id, token = await _new_device(tenant, "External 1")
            dev = await _device(broker.url, device_id, token)
            try:
                assert await _twoway(tenant, device_id, "hi") == (200, "hi")
                assert await _twoway(tenant, world.dev_c1.id, "yo") == (200, "yo")
                assert (await tenant.delete(f"/api/device/{device_id}"))[0] == 200
                assert not await _connects(broker.url, token, token)
            finally:
                await dev.close(offline=False)
                await synced.close()
        # A device deleted while the server was down is removed by the next
        # start's resync.
        await _delete_offline(store_url, world, world.dev_c1.id)
        async with start_server(**sections) as (server, api):
            assert not await _connects(broker.url, creds.credentials_id, creds.credentials_id)


async def _delete_offline(url: str, world, device_id: str) -> None:
    """Delete a device in the database with no provisioning (the server down)."""
    from fleetrpc.store.db import open_database
    from fleetrpc.store.entities import DeviceRepository

    db = await open_database(url)
    try:
        await DeviceRepository(db).delete(world.t1, device_id)
    finally:
        await db.close()


async def test_emqx_hooks_answer_on_the_servers_http_port(start_server, world):
    secret = "emqx-shared-secret-1234"
    sections = {"emqx": {"enabled": True, "secret": secret},
                "mqtt": {"username": "fleetrpc-server", "password": "server-password"}}
    async with start_server(**sections) as (server, api):
        creds = await server.ctx.devices.credentials(world.t1, world.dev_t1.id)
        headers = {"X-Fleetrpc-Hook-Secret": secret}

        async def post(path, body, h=headers):
            status, raw, _ = await api.request("POST", path, json=body, headers=h)
            return status, json.loads(raw)

        token = creds.credentials_id
        assert await post("/api/emqx/authn", {"username": token, "password": "", "clientid": "c1"}) == (200, {
            "result": "allow", "is_superuser": False,
            "client_attrs": {"device_id": world.dev_t1.id, "tenant_id": world.t1}})
        assert await post("/api/emqx/authn", {"username": "fleetrpc-server", "password": "server-password"}) == (
            200, {"result": "allow", "is_superuser": True})
        assert (await post("/api/emqx/authn", {"username": "nope", "password": ""}))[1] == {"result": "deny"}
        own = f"fleetrpc/d/{world.dev_t1.id}/req/#"
        other = f"fleetrpc/d/{world.dev_t2.id}/req/#"
        assert (await post("/api/emqx/authz", {"username": token, "topic": own, "action": "subscribe"}))[1] == {
            "result": "allow"}
        assert (await post("/api/emqx/authz", {"username": token, "topic": other, "action": "subscribe"}))[1] == {
            "result": "deny"}
        # no JWT is needed, the secret is: without it EMQX is told to ignore
        status, body = await post("/api/emqx/authn", {"username": token}, h={})
        assert status == 401 and body["result"] == "ignore"
    # off by default
    async with start_server() as (server, api):
        status, _, _ = await api.request("POST", "/api/emqx/authn", json={"username": "x"}, headers=headers)
        assert status == 401  # the JWT middleware's: no such public route


@pytest.mark.parametrize("store_url", ["(embedded)"])  # store.url unset below: one run is enough
async def test_serve_on_embedded_defaults_with_the_demo(start_server):
    """Nothing configured but ``--demo``: SQLite in the data directory, the
    server's own Mosquitto with the plugin, a generated JWT key; ThingsBoard's
    demo devices connect with their demo tokens and answer a customer's call."""
    embedded = {"store": {"url": None}, "mqtt": {"url": None}, "jwt": {"secret": None}}
    async with start_server(seed=False, demo=True, **embedded) as (server, api):
        ctx = server.ctx
        assert ctx.broker.kind == "mosquitto" and ctx.broker.dynsec is not None
        a1 = await ctx.devices.by_token("A1_TEST_TOKEN")
        dev = await _device(ctx.broker.url, a1.id, "A1_TEST_TOKEN")
        try:
            customer = Client(api, await api.login("customerA@thingsboard.org", "customer"))
            assert await _twoway(customer, a1.id, {"led": True}) == (200, {"led": True})
            assert not await _connects(ctx.broker.url, "A1_TEST_TOKEN", "wrong")
        finally:
            await dev.close()


async def test_device_auth_can_be_turned_off_and_says_so(start_server, world, caplog):
    """``dynsec.enabled = false``: the server's own broker lets anyone in,
    nothing is provisioned, and the log says it is for development only."""
    async with start_server(dynsec={"enabled": False}, **OWN_BROKER) as (server, api):
        ctx = server.ctx
        assert ctx.broker.dynsec is None and ctx.provisioner is None
        assert await _connects(ctx.broker.url, None, None)
        tenant = Client(api, await api.login(world.tenant.email))
        device_id, token = await _new_device(tenant, "Anonymous 1")  # no provisioning to fail
        dev = DeviceClient(device_id, ctx.broker.url, version=4)
        dev.add_method("echo", lambda params: params)
        await dev.connect()
        try:
            assert await _twoway(tenant, device_id, 7) == (200, 7)
        finally:
            await dev.close()
    assert "lets any client in (development only)" in caplog.text


async def test_demo_on_the_servers_own_mosquitto():
    """``fleetrpc demo``: the whole server on embedded defaults; its own
    Mosquitto checks tokens, and the simulated fleet logs in with them."""
    import io

    from rich.console import Console

    from fleetrpc.demo import run_demo

    rows = await run_demo(devices=4, port=0, once=True, broker="mosquitto", console=Console(file=io.StringIO()))
    online, total = rows["presence"].split()[0].split("/")
    assert online == total and int(total) >= 4
    assert rows["persistent call, device online"] == "SUCCESSFUL"
    assert rows["job: setValue 50 to every dimmer"] == "4/4 ok"
