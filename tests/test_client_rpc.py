"""Client-side RPC answered by the server's configuration, through a real
broker with DeviceClient: built-ins, handlers named in the settings, an
HTTP webhook (and its failures), and TO_SERVER_RPC_REQUEST with the answer."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from fleetrpc.config import Settings
from fleetrpc.device import DeviceClient
from fleetrpc.dispatch import Dispatcher
from fleetrpc.errors import RemoteError, ValidationError
from fleetrpc.events import EventBus
from fleetrpc.server.client_rpc import ClientRpc, ClientRpcSection, load_handler

pytestmark = pytest.mark.mqtt


def double(device, params):
    return {"device": device, "twice": params["x"] * 2}


async def slow_square(device, params):
    await asyncio.sleep(0)
    return params * params


def broken(device, params):
    raise ValueError("no such sensor")


class Recorder:
    def __init__(self) -> None:
        self.events = []
        self.arrived = asyncio.Event()

    def __call__(self, event) -> None:
        self.events.append(event)
        self.arrived.set()

    async def wait(self, n: int) -> None:
        while len(self.events) < n:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 5)


@pytest.fixture
async def webhook():
    """A webhook that echoes the call, fails, hangs or answers text, by method."""
    seen = []
    never = asyncio.Event()

    async def handle(request):
        body = await request.json()
        seen.append((dict(request.headers), body))
        if body["method"] == "fails":
            return web.Response(status=502, text="upstream down")
        if body["method"] == "hangs":
            await never.wait()
        if body["method"] == "text":
            return web.Response(text="plain words")
        if body["method"] == "empty":
            return web.Response(status=204)
        return web.json_response({"echo": body})

    app = web.Application()
    app.router.add_post("/hook", handle)
    server = TestServer(app)
    await server.start_server()
    yield server.make_url("/hook"), seen
    never.set()
    await server.close()


@pytest.fixture
async def rig(mqtt_url, webhook):
    url, seen = webhook
    section = ClientRpcSection(
        handlers={"double": "tests.test_client_rpc:double", "square": "tests.test_client_rpc:slow_square",
                  "broken": "tests.test_client_rpc:broken"},
        webhook_url=str(url), webhook_methods=["lookup", "fails", "hangs", "text", "empty"],
        webhook_timeout_s=0.5, webhook_headers={"X-Secret": "s3"},
    )
    bus = EventBus()
    recorder = Recorder()
    bus.add(recorder)
    bus.start()
    dispatcher = Dispatcher(Settings(mqtt_url=mqtt_url, node_id=f"c{uuid.uuid4().hex[:6]}"))
    client_rpc = ClientRpc(section, bus=bus, max_payload=dispatcher.settings.max_payload,
                           max_inflight=dispatcher.settings.queue_cap)
    installed = client_rpc.install(dispatcher)
    await dispatcher.start()
    device = DeviceClient(str(uuid.uuid4()), mqtt_url)
    await device.connect()
    yield device, recorder, seen, installed
    await device.close()
    await dispatcher.close()
    await client_rpc.close()
    await bus.close()


async def test_builtins(rig):
    device, recorder, _, installed = rig
    assert {"getCurrentTime", "getSessionLimits", "double", "lookup"} <= set(installed)
    before = int(time.time() * 1000)
    now = await device.call("getCurrentTime")
    assert before <= now <= int(time.time() * 1000)
    limits = await device.call("getSessionLimits")
    assert limits == {
        "maxPayloadSize": 262144, "maxInflightMessages": 100,
        "rateLimits": {"messages": "200:1,6000:60,14000:3600", "telemetryMessages": "100:1,3000:60,7000:3600",
                       "telemetryDataPoints": "200:1,6000:60,14000:3600"},
    }
    await recorder.wait(2)
    first = recorder.events[0]
    assert first.type == "TO_SERVER_RPC_REQUEST"
    assert first.body["deviceId"] == {"entityType": "DEVICE", "id": device.device_id}
    assert first.body["method"] == "getCurrentTime" and first.body["response"] == now


async def test_handlers_from_settings(rig):
    device, recorder, _, _ = rig
    assert await device.call("double", {"x": 21}) == {"device": device.device_id, "twice": 42}
    assert await device.call("square", 12) == 144
    with pytest.raises(RemoteError, match="no such sensor"):
        await device.call("broken")
    with pytest.raises(RemoteError, match="METHOD_NOT_FOUND"):
        await device.call("nobody-answers")
    await recorder.wait(4)
    # each call has an id of its own, so that a sink can tell a repeat
    assert len({e.body["requestUUID"] for e in recorder.events}) == 4
    errors = [{k: v for k, v in e.body.items() if k != "requestUUID"} for e in recorder.events if "error" in e.body]
    me = {"entityType": "DEVICE", "id": device.device_id}
    # Every call is emitted once, the one nobody answers too (the sinks see them all).
    assert errors == [{"deviceId": me, "method": "broken", "params": {}, "error": "ValueError: no such sensor"},
                      {"deviceId": me, "method": "nobody-answers", "params": {}, "error": "METHOD_NOT_FOUND"}]
    assert len(recorder.events) == 4


async def test_webhook(rig):
    device, recorder, seen, _ = rig
    answer = await device.call("lookup", {"key": "k1"})
    assert answer == {"echo": {"deviceId": device.device_id, "tenantId": None, "method": "lookup",
                               "params": {"key": "k1"}}}
    assert seen[0][0]["X-Secret"] == "s3"
    assert await device.call("text") == "plain words"
    assert await device.call("empty") is None
    with pytest.raises(RemoteError, match="APPLICATION_ERROR: webhook for 'fails' answered HTTP 502"):
        await device.call("fails")
    with pytest.raises(RemoteError, match="did not answer within 0.5 s"):
        await device.call("hangs")
    await recorder.wait(5)
    assert [e.body["method"] for e in recorder.events] == ["lookup", "text", "empty", "fails", "hangs"]
    assert recorder.events[0].body["response"] == answer


async def test_webhook_down_is_a_clear_error(mqtt_url):
    from fleetrpc.broker import free_port

    client_rpc = ClientRpc(ClientRpcSection(webhook_url=f"http://127.0.0.1:{free_port()}/x",
                                            webhook_methods=["m"]))
    try:
        with pytest.raises(RemoteError, match="webhook for 'm' failed: ClientConnectorError"):
            await client_rpc.forward("dev", "m", None)
    finally:
        await client_rpc.close()


async def test_webhook_takes_every_unlisted_method(mqtt_url, webhook):
    """``webhook_methods = ["*"]``: whatever no built-in or handler answers
    goes to the webhook (through the dispatcher's default handler)."""
    url, seen = webhook
    bus = EventBus()
    recorder = Recorder()
    bus.add(recorder)
    bus.start()
    dispatcher = Dispatcher(Settings(mqtt_url=mqtt_url, node_id=f"n{uuid.uuid4().hex[:6]}", min_timeout_ms=0))
    client_rpc = ClientRpc(ClientRpcSection(webhook_url=str(url), webhook_methods=["*"]), bus=bus)
    assert client_rpc.install(dispatcher) == ["getCurrentTime", "getSessionLimits"]
    await dispatcher.start()
    device = DeviceClient(str(uuid.uuid4()), mqtt_url)
    await device.connect()
    try:
        answer = await device.call("neverListed", [1, 2])
        assert answer == {"echo": {"deviceId": device.device_id, "tenantId": None, "method": "neverListed",
                                   "params": [1, 2]}}
        assert isinstance(await device.call("getCurrentTime"), int)  # the built-in, not the webhook
        with pytest.raises(RemoteError, match="webhook for 'fails' answered HTTP 502"):
            await device.call("fails")
        assert [body["method"] for _, body in seen] == ["neverListed", "fails"]
        await recorder.wait(3)
        assert [(e.body["method"], "response" in e.body) for e in recorder.events] == [
            ("neverListed", True), ("getCurrentTime", True), ("fails", False)]
    finally:
        await device.close()
        await dispatcher.close()
        await client_rpc.close()
        await bus.close()


def test_bad_settings_are_named():
    with pytest.raises(ValidationError, match="client_rpc.handlers.x: cannot load 'nope.nothing:f'"):
        ClientRpc(ClientRpcSection(handlers={"x": "nope.nothing:f"}))
    with pytest.raises(ValidationError, match="no entry point 'absent' in the group fleetrpc.client_rpc"):
        load_handler("x", "absent")
    with pytest.raises(ValidationError, match="not callable"):
        load_handler("x", "fleetrpc.server.client_rpc:ENTRY_POINT_GROUP")
    with pytest.raises(ValidationError, match="needs client_rpc.webhook_url"):
        ClientRpcSection(webhook_methods=["a"])
    with pytest.raises(ValidationError, match="both in handlers and webhook_methods"):
        ClientRpcSection(handlers={"a": "m:f"}, webhook_url="http://x", webhook_methods=["a"])
    assert ClientRpc(ClientRpcSection(builtins=False)).methods == {}


async def test_webhook_calls_in_flight_are_bounded(mqtt_url, webhook):
    """Each client-side call for the webhook was a task and a request to the
    webhook, however many a device had in flight: a device sending calls
    faster than the webhook answers piled them up without limit (and on the
    webhook).  A device has at most ``max_inflight`` (what getSessionLimits
    tells it) in flight, the server ``webhook_max_inflight``; beyond, the
    call gets a clear error at once."""
    url, seen = webhook
    dispatcher = Dispatcher(Settings(mqtt_url=mqtt_url, node_id=f"w{uuid.uuid4().hex[:6]}", min_timeout_ms=0))
    client_rpc = ClientRpc(ClientRpcSection(webhook_url=str(url), webhook_methods=["hangs"], webhook_timeout_s=1.0,
                                            webhook_max_inflight=15), max_inflight=10)
    client_rpc.install(dispatcher)
    await dispatcher.start()
    devices = [DeviceClient(str(uuid.uuid4()), mqtt_url) for _ in range(2)]
    try:
        for device in devices:
            await device.connect()
        calls = [device.call("hangs", i, timeout=5) for device in devices for i in range(20)]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(o, RemoteError) for o in outcomes), outcomes
        busy = [str(o) for o in outcomes if "in flight" in str(o)]
        per_device = {d.device_id: sum(body["deviceId"] == d.device_id for _, body in seen) for d in devices}
        assert len(seen) <= 15 and max(per_device.values()) <= 10, per_device
        assert len(busy) == 40 - len(seen)
        # once they are answered, the device has room again
        assert client_rpc.inflight == 0
    finally:
        for device in devices:
            await device.close()
        await dispatcher.close()
        await client_rpc.close()
