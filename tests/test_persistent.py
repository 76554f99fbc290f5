"""Persistent RPC end to end: real Mosquitto, real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.helpers.waiting import wait_until as _wait

from fleetrpc import DeliveryStrategy
from fleetrpc.config import Settings
from fleetrpc.device import DeviceClient
from fleetrpc.dispatcher import Dispatcher
from fleetrpc.errors import (
    InvalidTransitionError,
    RpcNotFoundError,
    StoreUnavailableError,
    ValidationError,
)
from fleetrpc.events import EventBus
from fleetrpc.rpc.persistent import PersistentRpc
from fleetrpc.rpc.status import RpcStatus
from fleetrpc.store import open_store

pytestmark = pytest.mark.mqtt

_seq = iter(range(10**9))


def _name(prefix: str = "pdev") -> str:
    return f"{prefix}-{time.monotonic_ns() % 10**9}-{next(_seq)}"




@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/rpc.db"
    return request.getfixturevalue("fresh_pg_db")


class Rig:
    """A dispatcher, a persistent engine on a store, and recorded events."""

    def __init__(self, mqtt_url: str, store_url: str, **settings) -> None:
        settings.setdefault("min_timeout_ms", 0)
        settings.setdefault("ttl_enabled", False)
        self.settings = Settings(mqtt_url=mqtt_url, node_id=_name("node"), **settings)
        self.store_url = store_url
        self.events: list[tuple[str, str, str]] = []
        self.devices: list[DeviceClient] = []

    async def start(self) -> "Rig":
        self.store = await open_store(self.store_url, group_commit=True)
        self.dispatcher = Dispatcher(self.settings)
        await self.dispatcher.start()
        self.bus = EventBus()
        self.bus.add(lambda e: self.events.append((e.type, e.body["id"]["id"], e.body["status"])))
        self.bus.start()
        self.engine = PersistentRpc(self.dispatcher, self.store, emit=self.bus.emit)
        self.recovered = await self.engine.start()
        return self

    async def device(self, name: str | None = None, **kw) -> DeviceClient:
        dev = DeviceClient(name or _name(), self.settings.mqtt_url, **kw)
        self.calls_seen: list = getattr(self, "calls_seen", [])

        @dev.method("echo")
        def echo(params):
            self.calls_seen.append(params)
            return params

        @dev.method("hang")
        async def hang(params):
            await asyncio.sleep(3600)

        await dev.connect()
        self.devices.append(dev)
        await _wait(lambda: self.dispatcher.is_online(dev.device_id))
        return dev

    def types(self, rpc_id: str) -> list[str]:
        return [t for t, i, _ in self.events if i == rpc_id]

    async def stop(self) -> None:
        for dev in self.devices:
            await dev.close()
        await self.engine.close()
        await self.bus.close()
        await self.dispatcher.close()
        await self.store.close()


@pytest.fixture
async def rig(mqtt_url, store_url):
    r = await Rig(mqtt_url, store_url).start()
    yield r
    await r.stop()


async def test_two_way_lifecycle_and_events(rig):
    dev = await rig.device()
    rpc_id = await rig.engine.call(dev.device_id, "echo", {"pin": 4}, additional_info={"k": "v"})
    rec = await rig.engine.wait(rpc_id, 5)
    assert rec.status is RpcStatus.SUCCESSFUL and rec.response == {"pin": 4} and rec.attempts == 1
    await rig.engine.flush()
    stored = await rig.store.get(rpc_id)
    assert stored.status is RpcStatus.SUCCESSFUL and stored.response == {"pin": 4}
    assert stored.additional_info == {"k": "v"}
    await asyncio.sleep(0.05)
    assert rig.types(rpc_id) == ["RPC_QUEUED", "RPC_SENT", "RPC_DELIVERED", "RPC_SUCCESSFUL"]
    tb = stored.to_thingsboard()
    assert tb["status"] == "SUCCESSFUL" and tb["request"]["body"]["method"] == "echo"


async def test_id_is_returned_only_after_the_row_is_committed(rig):
    ids = await asyncio.gather(*(rig.engine.call(_name("off"), "echo", i) for i in range(50)))
    # a fresh connection sees every row at once
    other = await open_store(rig.store_url)
    try:
        for rpc_id in ids:
            assert (await other.get(rpc_id)).status is RpcStatus.QUEUED
    finally:
        await other.close()


async def test_client_supplied_request_uuid(rig):
    import uuid

    mine = str(uuid.uuid4())
    assert await rig.engine.call(_name("off"), "echo", {}, request_uuid=mine) == mine
    with pytest.raises(ValidationError):
        await rig.engine.call(_name("off"), "echo", {}, request_uuid="not-a-uuid")


async def test_one_way_ends_at_delivered(rig):
    dev = await rig.device()
    rpc_id = await rig.engine.call(dev.device_id, "echo", {"x": 1}, oneway=True)
    rec = await rig.engine.wait(rpc_id, 5)
    assert rec.status is RpcStatus.DELIVERED
    await asyncio.sleep(0.05)
    assert rig.types(rpc_id) == ["RPC_QUEUED", "RPC_SENT", "RPC_DELIVERED"]


async def test_queued_while_offline_then_sent_when_online(rig):
    name = _name()
    rpc_id = await rig.engine.call(name, "echo", {"late": True}, timeout_ms=2000,
                                   expiration_time=int(time.time() * 1000) + 20_000)
    await asyncio.sleep(0.2)
    assert (await rig.engine.get(rpc_id)).status is RpcStatus.QUEUED
    await rig.device(name)
    rec = await rig.engine.wait(rpc_id, 5)
    assert rec.status is RpcStatus.SUCCESSFUL and rec.response == {"late": True}


async def test_timeout_retries_then_failed(rig):
    dev = await rig.device()
    rpc_id = await rig.engine.call(dev.device_id, "hang", {}, timeout_ms=150, retries=2,
                                   expiration_time=int(time.time() * 1000) + 30_000)
    rec = await rig.engine.wait(rpc_id, 10)
    assert rec.status is RpcStatus.FAILED and rec.attempts == 3
    await asyncio.sleep(0.05)
    assert rig.types(rpc_id) == [
        "RPC_QUEUED",
        "RPC_SENT", "RPC_DELIVERED", "RPC_TIMEOUT",   # each attempt is acked ...
        "RPC_SENT", "RPC_DELIVERED", "RPC_TIMEOUT",   # ... but never answered
        "RPC_SENT", "RPC_DELIVERED", "RPC_TIMEOUT", "RPC_FAILED",  # no retry left
    ]
    # the retries carried the same id: the device ran the handler once
    assert dev.duplicates == 2


async def test_retries_are_capped_by_the_maximum(mqtt_url, store_url):
    r = await Rig(mqtt_url, store_url, max_retries=1).start()
    try:
        dev = await r.device()
        rpc_id = await r.engine.call(dev.device_id, "hang", {}, timeout_ms=100, retries=5,
                                     expiration_time=int(time.time() * 1000) + 30_000)
        rec = await r.engine.wait(rpc_id, 10)
        assert rec.status is RpcStatus.FAILED and rec.retries == 1 and rec.attempts == 2
    finally:
        await r.stop()


async def test_expiration_against_timeout(rig):
    # expired while queued for an offline device
    rpc_id = await rig.engine.call(_name(), "echo", {}, expiration_time=int(time.time() * 1000) + 200)
    assert (await rig.engine.wait(rpc_id, 5)).status is RpcStatus.EXPIRED
    # expiration before the transport timeout: EXPIRED, not TIMEOUT
    dev = await rig.device()
    rpc_id = await rig.engine.call(dev.device_id, "hang", {}, timeout_ms=5000, retries=3,
                                   expiration_time=int(time.time() * 1000) + 300)
    rec = await rig.engine.wait(rpc_id, 5)
    assert rec.status is RpcStatus.EXPIRED and rec.attempts == 1


async def test_device_error_reply_fails_the_call(rig):
    dev = await rig.device()
    rpc_id = await rig.engine.call(dev.device_id, "unsupported", {})
    rec = await rig.engine.wait(rpc_id, 5)
    assert rec.status is RpcStatus.FAILED and rec.response["error"]["code"] == "METHOD_NOT_FOUND"


async def test_delete_of_a_queued_call(rig):
    name = _name()
    rpc_id = await rig.engine.call(name, "echo", {"never": True}, expiration_time=int(time.time() * 1000) + 20_000)
    deleted = await rig.engine.delete(rpc_id)
    assert deleted.id == rpc_id
    with pytest.raises(RpcNotFoundError):
        await rig.engine.get(rpc_id)
    await rig.device(name)
    await asyncio.sleep(0.3)
    assert {"never": True} not in getattr(rig, "calls_seen", [])
    assert rig.types(rpc_id) == ["RPC_QUEUED", "RPC_DELETED"]
    with pytest.raises(RpcNotFoundError):
        await rig.engine.delete(rpc_id)


async def test_sequential_strategies_with_persistent_calls(rig):
    name = _name()
    rig.dispatcher.configure_device(name, strategy=DeliveryStrategy.SEQUENTIAL_ON_RESPONSE)
    ids = [await rig.engine.call(name, "echo", i, expiration_time=int(time.time() * 1000) + 20_000)
           for i in range(10)]
    await rig.device(name)
    for rpc_id in ids:
        assert (await rig.engine.wait(rpc_id, 5)).status is RpcStatus.SUCCESSFUL
    assert rig.calls_seen == list(range(10))


async def test_stuck_head_times_out_and_later_calls_proceed(rig):
    dev = await rig.device()
    rig.dispatcher.configure_device(dev.device_id, strategy=DeliveryStrategy.SEQUENTIAL_ON_RESPONSE)
    stuck = await rig.engine.call(dev.device_id, "hang", {}, timeout_ms=200)
    after = await rig.engine.call(dev.device_id, "echo", "next", timeout_ms=5000)
    # no expirationTime: it expires with its timeout (ThingsBoard: now + timeout)
    assert (await rig.engine.wait(stuck, 5)).status is RpcStatus.EXPIRED
    assert (await rig.engine.wait(after, 5)).response == "next"


async def test_list_by_device_paging_filter_sort(rig):
    name = _name("lst")
    ids = [await rig.engine.call(name, f"m{i}", i, expiration_time=int(time.time() * 1000) + 60_000)
           for i in range(7)]
    page = await rig.engine.list_by_device(name, page_size=3, page=0, sort_order="ASC")
    assert [r.id for r in page.data] == ids[:3] and page.total_elements == 7 and page.total_pages == 3
    assert page.has_next
    page = await rig.engine.list_by_device(name, page_size=3, page=2, status="QUEUED")
    assert len(page.data) == 1 and not page.has_next
    with pytest.raises(ValidationError):
        await rig.engine.list_by_device(name, sort_property="id; DROP TABLE rpc")


async def test_duplicate_reply_and_reply_after_expiry(rig):
    dev = await rig.device()
    sent = []
    rig.dispatcher.on_status(lambda e: sent.append(e.rid) if e.type == "SENT" else None)
    rpc_id = await rig.engine.call(dev.device_id, "echo", "once")
    assert (await rig.engine.wait(rpc_id, 5)).status is RpcStatus.SUCCESSFUL
    # the device repeats its reply: rejected and counted, status unchanged
    payload = next(iter(dev._replies.values()))
    before = rig.dispatcher.stats.unknown_request
    dev.publish_raw(f"fleetrpc/d/{dev.device_id}/res/{rig.dispatcher.node_id}/{sent[0]}", payload)
    await _wait(lambda: rig.dispatcher.stats.unknown_request == before + 1)
    assert (await rig.engine.get(rpc_id)).status is RpcStatus.SUCCESSFUL
    # a reply arriving after the call expired changes nothing
    slow = await rig.device()

    @slow.method("late")
    async def late(params):
        await asyncio.sleep(0.5)
        return "too late"

    rpc_id = await rig.engine.call(slow.device_id, "late", {}, expiration_time=int(time.time() * 1000) + 200)
    assert (await rig.engine.wait(rpc_id, 5)).status is RpcStatus.EXPIRED
    await asyncio.sleep(0.6)
    assert (await rig.engine.get(rpc_id)).status is RpcStatus.EXPIRED


async def test_restart_recovers_unfinished_calls(mqtt_url, store_url):
    name = _name()
    r1 = await Rig(mqtt_url, store_url).start()
    exp = int(time.time() * 1000) + 30_000
    ids = [await r1.engine.call(name, "echo", i, expiration_time=exp) for i in range(5)]
    await r1.stop()  # the server goes away with 5 calls QUEUED
    r2 = await Rig(mqtt_url, store_url).start()
    try:
        assert r2.recovered >= 5
        await r2.device(name)
        for rpc_id in ids:
            assert (await r2.engine.wait(rpc_id, 5)).status is RpcStatus.SUCCESSFUL
        assert r2.calls_seen == list(range(5))
    finally:
        await r2.stop()


async def test_ttl_cleanup(rig):
    dev = await rig.device()
    rpc_id = await rig.engine.call(dev.device_id, "echo", {})
    await rig.engine.wait(rpc_id, 5)
    await rig.engine.flush()
    assert await rig.engine.purge() == 0  # younger than the TTL
    # pretend it finished long ago
    old = int(time.time() * 1000) + 40 * 86_400_000
    assert await rig.store.purge_expired(old, 30) == 1
    with pytest.raises(RpcNotFoundError):
        await rig.engine.get(rpc_id)


async def test_illegal_transition_is_an_error(rig):
    dev = await rig.device()
    rpc_id = await rig.engine.call(dev.device_id, "echo", {})
    await rig.engine.wait(rpc_id, 5)
    from fleetrpc.rpc.persistent import _Live

    live = _Live(rig.engine, await rig.engine.get(rpc_id))
    with pytest.raises(InvalidTransitionError):
        rig.engine._set_status(live, RpcStatus.SENT)


@pytest.mark.pg
async def test_database_outage(mqtt_url, pg_server):
    r = await Rig(mqtt_url, pg_server.dsn).start()
    try:
        dev = await r.device()
        rpc_id = await r.engine.call(dev.device_id, "echo", 1)
        assert (await r.engine.wait(rpc_id, 5)).status is RpcStatus.SUCCESSFUL
        await r.engine.flush()
        await asyncio.to_thread(pg_server.stop) if not asyncio.iscoroutinefunction(pg_server.stop) else await pg_server.stop()
        with pytest.raises(StoreUnavailableError):
            await r.engine.call(dev.device_id, "echo", 2)
        # lightweight calls keep working while the database is down
        assert await r.dispatcher.call(dev.device_id, "echo", 3, timeout=2) == 3
        await asyncio.to_thread(pg_server.start) if not asyncio.iscoroutinefunction(pg_server.start) else await pg_server.start()
        for _ in range(100):
            try:
                rpc_id = await r.engine.call(dev.device_id, "echo", 4)
                break
            except StoreUnavailableError:
                await asyncio.sleep(0.1)
        assert (await r.engine.wait(rpc_id, 5)).response == 4
    finally:
        await r.stop()


async def test_sigkill_under_load_loses_nothing(mqtt_url, store_url, tmp_path):
    """Kill the server with SIGKILL mid-load, restart it: every call whose id
    was returned is stored and reaches a terminal state."""
    import os
    import signal
    import sys

    devices = [await _sig_device(mqtt_url) for _ in range(4)]
    names = [d.device_id for d in devices]
    node = _name("node")
    cmd = [sys.executable, "-m", "tests.helpers.persistent_worker", mqtt_url, store_url, node]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = await asyncio.create_subprocess_exec(*cmd, "400", *names, stdout=asyncio.subprocess.PIPE, env=env)
    ids: list[str] = []
    while len(ids) < 150:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line, "worker exited early"
        if line.startswith("ID "):
            ids.append(line.split()[1])
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    # restart: the new process recovers and finishes everything
    proc = await asyncio.create_subprocess_exec(*cmd, "0", *names, stdout=asyncio.subprocess.PIPE, env=env)
    out = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
    assert "DONE" in out and proc.returncode == 0
    assert int(out.split("RECOVERED ")[1].split()[0]) > 0
    store = await open_store(store_url)
    try:
        for rpc_id in ids:
            rec = await store.get(rpc_id)
            assert rec is not None, f"call {rpc_id} was lost"
            assert rec.status in (RpcStatus.SUCCESSFUL, RpcStatus.EXPIRED, RpcStatus.FAILED), rec
        succeeded = sum([(await store.get(i)).status is RpcStatus.SUCCESSFUL for i in ids])
        assert succeeded >= len(ids) * 0.9
    finally:
        await store.close()
        for dev in devices:
            await dev.close()
    # at-least-once: a device ran each call once, answering retries from memory
    ran = [p["i"] for dev in devices for p in dev.ran]
    assert len(ran) == len(set(ran))


async def _sig_device(url: str) -> DeviceClient:
    dev = DeviceClient(_name("sig"), url)
    dev.ran = []

    @dev.method("work")
    async def work(params):
        dev.ran.append(params)
        await asyncio.sleep(0.01)
        return params["i"]

    await dev.connect()
    return dev
