"""Devices authenticate at a real Mosquitto through its dynamic security
plugin, provisioned from the device repository: a device with its token
reaches its own topics and nothing else, a wrong or deleted token is
refused, only the server's account publishes requests."""

from __future__ import annotations

import asyncio
import json
import uuid

import gmqtt
import pytest

from fleetrpc.broker import Broker, mosquitto_config, start_broker
from fleetrpc.broker_auth.dynsec import DynsecError, DynsecProvisioner, device_role
from fleetrpc.config import Settings
from fleetrpc.device import DeviceClient
from fleetrpc.dispatch import Dispatcher
from fleetrpc.store.db import SqliteDatabase
from fleetrpc.store.entities import DeviceRepository, TenantRepository

from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.mqtt
PREFIX = "fleetrpc"


@pytest.fixture
async def broker():
    async with start_broker("mosquitto", dynsec=True) as b:
        yield b


@pytest.fixture
async def provisioner(broker):
    a = broker.dynsec
    async with DynsecProvisioner(broker.url, a.admin_username, a.admin_password,
                                 server_username=a.server_username, timeout=10) as p:
        yield p


@pytest.fixture
async def world(tmp_path, provisioner):
    """A SQLite database whose device repository provisions the broker."""
    db = SqliteDatabase(str(tmp_path / "db.sqlite"), synchronous="OFF")
    await db.open()
    devices = DeviceRepository(db)
    devices.add_listener(provisioner.on_device_changes)
    tenant = await TenantRepository(db, devices=devices).create("T")
    yield devices, tenant
    await db.close()


@pytest.fixture
async def server(broker):
    """A dispatcher on the server's broker account."""
    a = broker.dynsec
    d = Dispatcher(Settings(mqtt_url=broker.url, mqtt_username=a.server_username,
                            mqtt_password=a.server_password, node_id=f"n{uuid.uuid4().hex[:6]}",
                            min_timeout_ms=0, default_timeout_ms=3000))
    await d.start()
    yield d
    await d.close()


class RawClient:
    """A plain gmqtt client that reports SUBACK codes and what it receives."""

    def __init__(self, url_port: int, username: str | None, password: str | None = None) -> None:
        self.port = url_port
        self.client = gmqtt.Client(f"raw-{uuid.uuid4().hex[:8]}")
        self.client.set_config({"reconnect_retries": 0})
        if username is not None:
            self.client.set_auth_credentials(username, password)
        self.received: list[tuple[str, bytes]] = []
        self.subacks: asyncio.Queue = asyncio.Queue()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda c, mid, qos, props: self.subacks.put_nowait(list(qos))
        self.got = asyncio.Event()

    def _on_message(self, client, topic, payload, qos, properties):
        self.received.append((topic, payload))
        self.got.set()
        return 0

    async def connect(self) -> None:
        await self.client.connect("127.0.0.1", self.port, version=gmqtt.constants.MQTTv50)

    async def subscribe(self, topic: str) -> int:
        self.client.subscribe(topic, qos=1)
        [code] = await asyncio.wait_for(self.subacks.get(), 5)
        return code

    async def wait_for(self, topic: str) -> None:
        while not any(t == topic for t, _ in self.received):
            self.got.clear()
            await asyncio.wait_for(self.got.wait(), 5)

    async def close(self) -> None:
        await self.client.disconnect()


async def _device(broker, device_id: str, token: str) -> DeviceClient:
    dev = DeviceClient(device_id, broker.url, username=token, password=token, version=4)
    dev.add_method("echo", lambda params: params)
    await dev.connect()
    return dev


async def _refused(broker, token: str | None) -> None:
    c = RawClient(broker.port, token, token)
    with pytest.raises(gmqtt.mqtt.handler.MQTTConnectError):
        await c.connect()


def test_default_config_is_unchanged_and_dynsec_is_opt_in(tmp_path):
    assert "allow_anonymous true" in mosquitto_config(1883)
    assert "plugin" not in mosquitto_config(1883)
    text = mosquitto_config(1883, dynsec_plugin="/x.so", dynsec_config="/c.json")
    assert "allow_anonymous false" in text and "plugin /x.so" in text and "plugin_opt_config_file /c.json" in text
    b = Broker("mosquitto")
    try:
        assert b.dynsec is None and "plugin" not in b.config_path.read_text()
    finally:
        b.close()


async def test_device_with_its_token_reaches_its_own_topics(broker, world, server):
    devices, tenant = world
    d = await devices.create(tenant.id, "dev-a", access_token="token-a")
    dev = await _device(broker, d.id, "token-a")
    try:
        await wait_until(lambda: server.is_online(d.id))
        assert await server.call(d.id, "echo", {"x": 1}) == {"x": 1}
    finally:
        await dev.close()


async def test_wrong_token_and_anonymous_are_refused(broker, world):
    devices, tenant = world
    await devices.create(tenant.id, "dev-a", access_token="token-a")
    await _refused(broker, "token-b")
    await _refused(broker, None)
    c = RawClient(broker.port, "token-a", "not-the-token")
    with pytest.raises(gmqtt.mqtt.handler.MQTTConnectError):
        await c.connect()


async def test_device_cannot_reach_other_devices_or_publish_requests(broker, world):
    devices, tenant = world
    a = await devices.create(tenant.id, "a", access_token="token-a")
    b = await devices.create(tenant.id, "b", access_token="token-b")
    acc = broker.dynsec
    observer = RawClient(broker.port, acc.server_username, acc.server_password)
    await observer.connect()
    assert await observer.subscribe(f"{PREFIX}/#") == 1
    mallory = RawClient(broker.port, "token-a", "token-a")
    await mallory.connect()
    try:
        # Subscriptions outside its own requests and returns are refused.
        assert await mallory.subscribe(f"{PREFIX}/d/{b.id}/req/#") >= 0x80
        assert await mallory.subscribe(f"{PREFIX}/d/+/req/#") >= 0x80
        assert await mallory.subscribe(f"{PREFIX}/d/{a.id}/#") >= 0x80
        assert await mallory.subscribe("#") >= 0x80
        assert await mallory.subscribe(f"{PREFIX}/d/{a.id}/req/+/+") == 1
    finally:
        await mallory.close()
    # Publishes into b's topics, and requests or returns (even its own), are
    # dropped.  Each forged publish is followed by one to its own reply topic
    # on the same connection: when that arrives, the broker has decided the
    # forged one (it handles one client's packets in order).  Mosquitto
    # 2.0.11 with max_queued_messages 0 closes the connection after a
    # refused QoS 1 publish instead; that too means it was decided.
    forged = [
        f"{PREFIX}/d/{b.id}/res/node/1", f"{PREFIX}/d/{b.id}/presence", f"{PREFIX}/d/{b.id}/call/1",
        f"{PREFIX}/d/{b.id}/req/node/1", f"{PREFIX}/d/{a.id}/req/node/1", f"{PREFIX}/d/{a.id}/ret/1",
        f"{PREFIX}/elves/app/call",
    ]
    markers = []
    try:
        for i, topic in enumerate(forged):
            mallory = RawClient(broker.port, "token-a", "token-a")
            gone = asyncio.Event()
            mallory.client.on_disconnect = lambda client, packet, exc=None: gone.set()
            await mallory.connect()
            marker = f"{PREFIX}/d/{a.id}/res/node/{i}"
            mallory.client.publish(topic, b"{}", qos=1)
            mallory.client.publish(marker, b"{}", qos=1)
            arrived = asyncio.ensure_future(observer.wait_for(marker))
            closed = asyncio.ensure_future(gone.wait())
            done, pending = await asyncio.wait({arrived, closed}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            assert done, f"neither the marker nor a disconnect after publishing {topic}"
            if arrived in done:
                markers.append(marker)
                await mallory.close()
        # Its own topics pass on a fresh connection (the last word on ordering).
        ok = RawClient(broker.port, "token-a", "token-a")
        await ok.connect()
        last = f"{PREFIX}/d/{a.id}/hb"
        ok.client.publish(last, b"{}", qos=1)
        await observer.wait_for(last)
        await ok.close()
        assert [t for t, _ in observer.received] == [*markers, last]
    finally:
        await observer.close()


async def test_deleted_device_is_refused_and_disconnected(broker, world):
    devices, tenant = world
    d = await devices.create(tenant.id, "dev", access_token="token-d")
    c = RawClient(broker.port, "token-d", "token-d")
    gone = asyncio.Event()
    c.client.on_disconnect = lambda client, packet, exc=None: gone.set()
    await c.connect()
    await devices.delete(tenant.id, d.id)
    await asyncio.wait_for(gone.wait(), 5)  # the plugin closes its connection
    await _refused(broker, "token-d")


async def test_new_token_replaces_the_old_one(broker, world, server):
    devices, tenant = world
    d = await devices.create(tenant.id, "dev", access_token="old-token")
    await devices.set_credentials(tenant.id, d.id, "new-token")
    await _refused(broker, "old-token")
    dev = await _device(broker, d.id, "new-token")
    try:
        await wait_until(lambda: server.is_online(d.id))
        assert await server.call(d.id, "echo", 7) == 7
    finally:
        await dev.close()


async def test_a_token_equal_to_a_broker_account_is_never_provisioned(broker, world, provisioner):
    devices, tenant = world
    acc = broker.dynsec
    await devices.create(tenant.id, "sneaky", access_token=acc.server_username)
    # The server's account still works with its own password, not the token.
    await _refused(broker, acc.server_username)
    ok = RawClient(broker.port, acc.server_username, acc.server_password)
    await ok.connect()
    await ok.close()


async def test_full_sync_creates_fixes_and_removes(broker, world, provisioner):
    devices, tenant = world
    devices.remove_listener(provisioner.on_device_changes)  # the broker falls behind
    kept = await devices.create(tenant.id, "kept", access_token="kept-token")
    moved = await devices.create(tenant.id, "moved", access_token="moved-old")
    await provisioner.provision(moved.id, "moved-old")
    await devices.set_credentials(tenant.id, moved.id, "moved-new")
    ghost = str(uuid.uuid4())
    await provisioner.provision(ghost, "ghost-token")  # a device no longer in the database
    report = await provisioner.sync(devices.all_credentials())
    assert (report.devices, report.created, report.removed, report.roles_removed) == (2, 2, 2, 1)
    for token in ("kept-token", "moved-new"):
        c = RawClient(broker.port, token, token)
        await c.connect()
        await c.close()
    for token in ("moved-old", "ghost-token"):
        await _refused(broker, token)
    roles = await provisioner._all("listRoles", "roles")
    assert device_role(ghost) not in {r["rolename"] for r in roles}
    again = await provisioner.sync(devices.all_credentials())
    assert (again.created, again.removed, again.roles_removed) == (0, 0, 0)
    assert kept.id  # (kept is provisioned by the first sync above)


async def test_preloaded_broker_starts_with_its_devices(tmp_path):
    device_id = str(uuid.uuid4())
    b = Broker("mosquitto", dynsec=True)
    try:
        b.preload_dynsec([(device_id, "pre-token")])
        await b.start()
        a = b.dynsec
        server = Dispatcher(Settings(mqtt_url=b.url, mqtt_username=a.server_username,
                                     mqtt_password=a.server_password, node_id="pre", min_timeout_ms=0))
        await server.start()
        dev = await _device(b, device_id, "pre-token")
        try:
            await wait_until(lambda: server.is_online(device_id))
            assert await server.call(device_id, "echo", "hi") == "hi"
        finally:
            await dev.close()
            await server.close()
        with pytest.raises(Exception, match="stop the broker first"):
            b.preload_dynsec([])
    finally:
        await b.aclose()


async def test_no_plugin_answer_is_a_clear_error(mqtt_url):
    # A broker without the plugin never answers the control topic.
    async with DynsecProvisioner(mqtt_url, "nobody", "x", timeout=0.5) as p:
        with pytest.raises(DynsecError, match="did not answer"):
            await p.provision(str(uuid.uuid4()), "tok")
