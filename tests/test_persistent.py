"""Persistent RPC end to end: real Mosquitto, real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.helpers.waiting import wait_until as _wait

from fleetrpc import DeliveryStrategy
from fleetrpc.config import Settings
from fleetrpc.device import DeviceClient
from fleetrpc.dispatch import Dispatcher
from fleetrpc.errors import (
    DuplicateRpcError,
    InvalidTransitionError,
    QueueFullError,
    RpcNotFoundError,
    StoreError,
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

    def __init__(self, mqtt_url: str, store_url: str, engine_options: dict | None = None, *,
                 group_commit: bool = True, **settings) -> None:
        self.engine_options = engine_options or {}
        self.group_commit = group_commit
        settings.setdefault("min_timeout_ms", 0)
        settings.setdefault("ttl_enabled", False)
        self.settings = Settings(mqtt_url=mqtt_url, node_id=_name("node"), **settings)
        self.store_url = store_url
        self.events: list[tuple[str, str, str]] = []
        self.devices: list[DeviceClient] = []

    async def start(self) -> "Rig":
        self.store = await open_store(self.store_url, group_commit=self.group_commit)
        self.dispatcher = Dispatcher(self.settings)
        await self.dispatcher.start()
        self.bus = EventBus()
        self.bus.add(lambda e: self.events.append((e.type, e.body["id"]["id"], e.body["status"])))
        self.bus.start()
        self.engine = PersistentRpc(self.dispatcher, self.store, emit=self.bus.emit, **self.engine_options)
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
    stored = await rig.store.get(rpc_id, "default")
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
            assert (await other.get(rpc_id, "default")).status is RpcStatus.QUEUED
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


async def test_wait_times_out_and_leaves_the_call_alone(rig):
    rpc_id = await rig.engine.call(_name("off"), "echo", {}, expiration_time=int(time.time() * 1000) + 60_000)
    for durable in (False, True):
        with pytest.raises(TimeoutError, match=rpc_id):
            await rig.engine.wait(rpc_id, 0.1, durable=durable)
    # a waiter that is cancelled or times out leaves no deadline behind
    waiter = asyncio.ensure_future(rig.engine.wait(rpc_id, 60))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not rig.engine._timed
    assert (await rig.engine.get(rpc_id)).status is RpcStatus.QUEUED
    # it still finishes, and a new waiter sees that
    await rig.device(rig.engine._live[rpc_id].record.device_id)
    assert (await rig.engine.wait(rpc_id, 10, durable=True)).status is RpcStatus.SUCCESSFUL


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
    # the device repeats its reply: dropped and counted as late, status unchanged
    payload = next(iter(dev._replies.values()))
    before = rig.dispatcher.stats.late_replies
    dev.publish_raw(f"fleetrpc/d/{dev.device_id}/res/{rig.dispatcher.node}/{sent[0]}", payload)
    await _wait(lambda: rig.dispatcher.stats.late_replies == before + 1)
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
            rec = await store.get(rpc_id, "default")
            assert rec is not None, f"call {rpc_id} was lost"
            assert rec.status in (RpcStatus.SUCCESSFUL, RpcStatus.EXPIRED, RpcStatus.FAILED), rec
        succeeded = sum([(await store.get(i, "default")).status is RpcStatus.SUCCESSFUL for i in ids])
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


# -- tenants ---------------------------------------------------------------------------


async def test_another_tenants_unfinished_call_is_not_found(rig):
    """Deleting or reading an unfinished call with another tenant's id used
    to return that call's record (and delete it)."""
    rpc_id = await rig.engine.call(_name("off"), "echo", {}, tenant_id="tenant-a",
                                   expiration_time=int(time.time() * 1000) + 30_000)
    with pytest.raises(RpcNotFoundError):
        await rig.engine.delete(rpc_id, tenant_id="tenant-b")
    with pytest.raises(RpcNotFoundError):
        await rig.engine.get(rpc_id, tenant_id="tenant-b")
    with pytest.raises(RpcNotFoundError):
        await rig.engine.wait(rpc_id, 1, tenant_id="tenant-b")
    with pytest.raises(RpcNotFoundError):
        await rig.engine.get(rpc_id)  # the default tenant is another tenant too
    assert (await rig.engine.list_by_device(
        (await rig.engine.get(rpc_id, tenant_id="tenant-a")).device_id, tenant_id="tenant-b")).data == []
    assert (await rig.engine.get(rpc_id, tenant_id="tenant-a")).status is RpcStatus.QUEUED
    assert RpcStatus.DELETED.value not in {st for _, i, st in rig.events if i == rpc_id}
    assert (await rig.engine.delete(rpc_id, tenant_id="tenant-a")).id == rpc_id


async def test_an_engine_without_default_tenant_requires_one(mqtt_url, store_url):
    r = await Rig(mqtt_url, store_url, engine_options={"default_tenant": None}).start()
    try:
        for op in (lambda: r.engine.call("d1", "echo"), lambda: r.engine.get("x"),
                   lambda: r.engine.delete("x"), lambda: r.engine.list_by_device("d1"),
                   lambda: r.engine.wait("x")):
            with pytest.raises(ValidationError, match="tenant_id is required"):
                await op()
        with pytest.raises(ValidationError, match="tenant_id"):
            await r.engine.call("d1", "echo", tenant_id="")
        rpc_id = await r.engine.call(_name("off"), "echo", tenant_id="t1")
        assert (await r.engine.get(rpc_id, tenant_id="t1")).tenant_id == "t1"
    finally:
        await r.stop()


async def test_owner_node_recorded_on_insert_and_on_recovery(mqtt_url, store_url):
    r1 = await Rig(mqtt_url, store_url).start()
    rpc_id = await r1.engine.call(_name("off"), "echo", expiration_time=int(time.time() * 1000) + 30_000)
    await r1.engine.flush()
    assert (await r1.store.get(rpc_id, "default")).owner_node == r1.settings.node_id
    await r1.stop()
    r2 = await Rig(mqtt_url, store_url).start()  # another node id
    try:
        assert r2.settings.node_id != r1.settings.node_id
        assert (await r2.store.get(rpc_id, "default")).owner_node == r2.settings.node_id
    finally:
        await r2.stop()


# -- one-way calls: the ack is optional ----------------------------------------------------


async def test_oneway_call_to_a_device_that_never_acks_runs_once(rig):
    dev = await rig.device(ack=False)
    runs = []

    @dev.method("reboot")
    async def reboot(params):
        runs.append(params)
        await asyncio.sleep(3600)  # rebooting: no ack, no answer

    rpc_id = await rig.engine.call(dev.device_id, "reboot", {"n": 1}, oneway=True, retries=3, timeout_ms=200)
    rec = await rig.engine.wait(rpc_id, 5, durable=True)
    assert rec.status is RpcStatus.DELIVERED and rec.attempts == 1
    await asyncio.sleep(0.5)  # (what a resend would have needed: two more timeouts)
    assert runs == [{"n": 1}]
    assert rig.engine.stats.oneway_unacked == 1 and rig.engine.stats.retries == 0
    assert (await rig.store.get(rpc_id, "default")).status is RpcStatus.DELIVERED


async def test_oneway_call_answered_instead_of_acked_is_delivered(rig):
    dev = await rig.device(ack=False)
    rpc_id = await rig.engine.call(dev.device_id, "echo", {"n": 2}, oneway=True, retries=3, timeout_ms=5000)
    rec = await rig.engine.wait(rpc_id, 5, durable=True)
    assert rec.status is RpcStatus.DELIVERED and rec.attempts == 1 and rec.response is None
    assert rig.calls_seen == [{"n": 2}]


async def test_oneway_call_sent_before_a_crash_is_not_sent_again(mqtt_url, store_url):
    from fleetrpc.store.base import RpcRecord

    store = await open_store(store_url)
    now = int(time.time() * 1000)
    name = _name()
    await store.insert(RpcRecord(id="0b3c6f8e-5d1a-4c7e-9f00-000000000001", device_id=name, created_time=now,
                                 expiration_time=now + 30_000, method="reboot", oneway=True, retries=3,
                                 attempts=1, status=RpcStatus.SENT))
    await store.close()
    r = await Rig(mqtt_url, store_url).start()
    try:
        runs = []
        dev = await r.device(name)

        @dev.method("reboot")
        def reboot(params):
            runs.append(params)

        rec = await r.engine.wait("0b3c6f8e-5d1a-4c7e-9f00-000000000001", 5, durable=True)
        assert rec.status is RpcStatus.DELIVERED and rec.attempts == 1
        await asyncio.sleep(0.2)
        assert runs == []
    finally:
        await r.stop()


# -- checked at the edge, before anything is stored ---------------------------------------


async def test_oversize_call_is_refused_before_it_is_stored(mqtt_url, store_url):
    r = await Rig(mqtt_url, store_url, max_payload=1024).start()
    try:
        name = _name("off")
        with pytest.raises(ValidationError, match=r"over the limit of 1024 \(max_payload\)"):
            await r.engine.call(name, "echo", {"blob": "x" * 2000})
        assert (await r.engine.list_by_device(name)).total_elements == 0
        assert r.events == []
        await r.engine.call(name, "echo", {"blob": "x" * 500})  # under the limit: fine
    finally:
        await r.stop()


@pytest.mark.parametrize("options, match", [
    ({"retries": "x"}, "retries"), ({"retries": float("nan")}, "retries"),
    ({"retries": float("inf")}, "retries"), ({"retries": True}, "retries"), ({"retries": -1}, "retries"),
    ({"retries": 1.5}, "retries"), ({"timeout_ms": float("nan")}, "timeout"),
    ({"timeout_ms": "soon"}, "timeout"), ({"timeout_ms": -5}, "timeout"), ({"timeout_ms": False}, "timeout"),
    ({"oneway": "false"}, "oneway"), ({"oneway": 0}, "oneway"), ({"oneway": None}, "oneway"),
    ({"expiration_time": float("inf")}, "expirationTime"),
])
async def test_bad_argument_types_are_one_error_before_storing(rig, options, match):
    name = _name("off")
    with pytest.raises(ValidationError, match=match):
        await rig.engine.call(name, "echo", {}, **options)
    assert (await rig.engine.list_by_device(name)).total_elements == 0


async def test_numeric_strings_and_empty_values_follow_thingsboard(rig):
    name = _name("off")
    a = await rig.engine.get(await rig.engine.call(name, "echo", retries="3", timeout_ms="6000"))
    assert (a.retries, a.timeout_ms) == (3, 6000)
    b = await rig.engine.get(await rig.engine.call(name, "echo", retries="", timeout_ms=""))
    assert (b.retries, b.timeout_ms) == (0, rig.settings.default_timeout_ms)
    c = await rig.engine.get(await rig.engine.call(name, "echo", retries=99))
    assert c.retries == rig.settings.max_retries


async def test_values_the_database_cannot_store_are_refused_at_the_call(rig):
    name = _name("off")
    for kwargs in ({"params": {"a": "x\x00"}}, {"params": {"k\x00": 1}},
                   {"additional_info": ["\x00"]}, {"method": "re\x00boot"}):
        kw = {"method": "echo", **kwargs}
        with pytest.raises(ValidationError, match="cannot be stored"):
            await rig.engine.call(name, kw.pop("method"), **kw)
    assert (await rig.engine.list_by_device(name)).total_elements == 0


# -- issue 9: one device cannot stall persistent writes -----------------------------------


async def _poison_device(rig, value):
    dev = await rig.device()

    @dev.method("poison")
    def poison(params):
        return value

    return dev


async def test_a_reply_the_database_cannot_store_fails_only_its_call(rig):
    dev = await _poison_device(rig, {"text": "a\x00b"})
    bad = await rig.engine.call(dev.device_id, "poison", {})
    rec = await asyncio.wait_for(rig.engine.wait(bad, durable=True), 10)
    assert rec.status is RpcStatus.FAILED and rec.response is None
    assert "reply cannot be stored" in rec.error and "U+0000" in rec.error
    # every other call's writes go through at once, nothing is held
    ok = await rig.engine.call(dev.device_id, "echo", {"fine": True})
    assert (await asyncio.wait_for(rig.engine.wait(ok, durable=True), 10)).status is RpcStatus.SUCCESSFUL
    assert not rig.engine._holding and rig.engine.stats.write_errors == 0
    stored = await rig.store.get(bad, "default")
    assert stored.status is RpcStatus.FAILED and "U+0000" in stored.error
    assert rig.engine.stats.reply_refused == 1


async def test_a_device_error_message_with_nul_is_stored_readably(rig):
    dev = await rig.device()

    @dev.method("broken")
    def broken(params):
        from fleetrpc.errors import RemoteError
        raise RemoteError("bad\x00thing")

    rpc_id = await rig.engine.call(dev.device_id, "broken", {})
    rec = await asyncio.wait_for(rig.engine.wait(rpc_id, durable=True), 10)
    assert rec.status is RpcStatus.FAILED
    assert "\x00" not in (await rig.store.get(rpc_id, "default")).error


async def _refuse_poison_in_the_database(rig) -> None:
    """A trigger that refuses any status write whose reply says "poison":
    the database refusing a write for its content, by a cause the engine
    cannot foresee."""
    db = rig.store.db
    if db.dialect == "sqlite":
        await db.execute("CREATE TRIGGER refuse_poison BEFORE UPDATE ON rpc "
                         "WHEN NEW.response LIKE '%poison%' BEGIN SELECT RAISE(ABORT, 'poison refused'); END")
    else:
        await db.execute("CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                         "IF NEW.response::text LIKE '%poison%' THEN RAISE EXCEPTION 'poison refused'; END IF; "
                         "RETURN NEW; END $$")
        await db.execute("CREATE TRIGGER refuse_poison BEFORE UPDATE ON rpc FOR EACH ROW "
                         "EXECUTE FUNCTION refuse_poison()")


async def test_a_write_the_database_refuses_never_holds_back_others(rig):
    await _refuse_poison_in_the_database(rig)
    dev = await _poison_device(rig, "poison")
    healthy = await rig.device()
    bad = await rig.engine.call(dev.device_id, "poison", {})
    others = [await rig.engine.call(healthy.device_id, "echo", i) for i in range(20)]
    rec = await asyncio.wait_for(rig.engine.wait(bad, durable=True), 10)
    # The status stands; the reply is not stored, and the record says why.
    assert rec.status is RpcStatus.SUCCESSFUL and rec.response is None
    assert "refused" in rec.error and "poison refused" in rec.error
    for rpc_id in others:
        assert (await asyncio.wait_for(rig.engine.wait(rpc_id, durable=True), 10)).status is RpcStatus.SUCCESSFUL
    assert not rig.engine._holding and rig.engine.stats.write_errors == 0
    assert rig.engine.stats.write_refused >= 1
    stored = await rig.store.get(bad, "default")
    assert stored.status is RpcStatus.SUCCESSFUL and stored.response is None and "refused" in stored.error
    for rpc_id in others:
        assert (await rig.store.get(rpc_id, "default")).status is RpcStatus.SUCCESSFUL


@pytest.mark.pg
async def test_postgres_refusing_nul_is_survived_even_unforeseen(mqtt_url, fresh_pg_db, monkeypatch):
    """Without the check before the status changes, PostgreSQL itself
    refuses the reply (22P05): that write alone is redone without it."""
    import fleetrpc.rpc.persistent as engine_module

    monkeypatch.setattr(engine_module, "storable_problem", lambda value: None)
    r = await Rig(mqtt_url, fresh_pg_db).start()
    try:
        dev = await _poison_device(r, "a\x00b")
        bad = await r.engine.call(dev.device_id, "poison", {})
        ok = await r.engine.call(dev.device_id, "echo", 1)
        rec = await asyncio.wait_for(r.engine.wait(bad, durable=True), 10)
        assert rec.status is RpcStatus.SUCCESSFUL and rec.response is None and "22P05" in rec.error
        assert (await asyncio.wait_for(r.engine.wait(ok, durable=True), 10)).response == 1
        assert not r.engine._holding
    finally:
        await r.stop()


async def test_a_write_refused_twice_fails_only_the_durable_wait(rig):
    db = rig.store.db
    # Refuse every change of this one call, with or without its reply.
    dev = await rig.device()
    if db.dialect == "sqlite":
        await db.execute("CREATE TRIGGER refuse_all BEFORE UPDATE ON rpc "
                         "WHEN NEW.method = 'doomed' AND NEW.status = 'SUCCESSFUL' "
                         "BEGIN SELECT RAISE(ABORT, 'no'); END")
    else:
        await db.execute("CREATE FUNCTION refuse_all() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                         "IF NEW.method = 'doomed' AND NEW.status = 'SUCCESSFUL' THEN RAISE EXCEPTION 'no'; "
                         "END IF; RETURN NEW; END $$")
        await db.execute("CREATE TRIGGER refuse_all BEFORE UPDATE ON rpc FOR EACH ROW EXECUTE FUNCTION refuse_all()")

    @dev.method("doomed")
    def doomed(params):
        return 1

    bad = await rig.engine.call(dev.device_id, "doomed", {})
    with pytest.raises(StoreError, match="refused the final status"):
        await asyncio.wait_for(rig.engine.wait(bad, durable=True), 10)
    ok = await rig.engine.call(dev.device_id, "echo", 2)
    assert (await asyncio.wait_for(rig.engine.wait(ok, durable=True), 10)).response == 2
    assert not rig.engine._holding


# -- the queue cap: a documented, configurable choice ---------------------------------------


async def test_calls_beyond_the_dispatchers_queue_wait_in_the_engine(rig):
    """150 persistent calls to an offline device (the dispatcher holds 100)
    used to give 50 QueueFullErrors; now all are queued and run in order."""
    name = _name()
    rig.dispatcher.configure_device(name, strategy=DeliveryStrategy.SEQUENTIAL_ON_RESPONSE)
    exp = int(time.time() * 1000) + 60_000
    ids = [await rig.engine.call(name, "echo", i, expiration_time=exp) for i in range(150)]
    assert rig.engine.stats.backlogged == 50 and rig.engine.stats.failed == 0
    await rig.device(name)
    for rpc_id in ids:
        assert (await rig.engine.wait(rpc_id, 20)).status is RpcStatus.SUCCESSFUL
    assert rig.calls_seen == list(range(150))


async def test_waiting_calls_expire_and_can_be_deleted(mqtt_url, store_url):
    r = await Rig(mqtt_url, store_url, queue_cap=1).start()  # the dispatcher holds one call
    try:
        name = _name("off")
        exp = int(time.time() * 1000)
        held = await r.engine.call(name, "echo", 0, expiration_time=exp + 60_000)
        short = await r.engine.call(name, "echo", 1, expiration_time=exp + 300)
        gone = await r.engine.call(name, "echo", 2, expiration_time=exp + 60_000)
        assert r.engine.stats.backlogged == 2
        assert (await r.engine.wait(short, 5)).status is RpcStatus.EXPIRED
        await r.engine.delete(gone)
        await r.device(name)
        assert (await r.engine.wait(held, 5)).status is RpcStatus.SUCCESSFUL
        await asyncio.sleep(0.2)
        assert r.calls_seen == [0]
    finally:
        await r.stop()


async def test_the_engines_queue_cap_refuses_before_storing(mqtt_url, store_url):
    r = await Rig(mqtt_url, store_url, engine_options={"queue_cap": 5}).start()
    try:
        name = _name("off")
        exp = int(time.time() * 1000) + 60_000
        ids = [await r.engine.call(name, "echo", i, expiration_time=exp) for i in range(5)]
        with pytest.raises(QueueFullError, match="5 unfinished persistent calls"):
            await r.engine.call(name, "echo", 5, expiration_time=exp)
        assert (await r.engine.list_by_device(name)).total_elements == 5
        await r.engine.call(_name("off"), "echo", expiration_time=exp)  # another device: fine
        await r.engine.delete(ids[0])
        await r.engine.call(name, "echo", 6, expiration_time=exp)  # room again
    finally:
        await r.stop()
    with pytest.raises(ValidationError):
        PersistentRpc(r.dispatcher, r.store, queue_cap=0)


@pytest.mark.parametrize("group_commit", [True, False], ids=["group-commit", "plain-store"])
async def test_call_many_stores_the_good_calls_and_names_each_refusal(mqtt_url, store_url, group_commit):
    """A fleet job's batch: the options are checked once, every device's
    call is stored and started or refused on its own (a bad id, a full
    queue -- also by the batch itself --, an id already taken), and the
    good calls run to their end, each followed by a future."""
    r = await Rig(mqtt_url, store_url, engine_options={"queue_cap": 2}, group_commit=group_commit).start()
    try:
        a, b = await r.device(), await r.device()
        full, twice, other = _name("off"), _name("off"), _name("off")
        exp = int(time.time() * 1000) + 60_000
        taken = await r.engine.call(full, "echo", 0, expiration_time=exp)
        await r.engine.call(full, "echo", 1, expiration_time=exp)
        devices = [a.device_id, "bad/id", full, other, twice, twice, twice, b.device_id]
        uuids = [None, None, None, taken, None, None, None, None]
        out = await r.engine.call_many(devices, "echo", {"v": 7}, request_uuids=uuids, expiration_time=exp)
        assert [type(x) for x in out] == [str, ValidationError, QueueFullError, DuplicateRpcError,
                                          str, str, QueueFullError, str]
        assert "2 unfinished persistent calls" in str(out[2]) and taken in str(out[3])
        # Asked at once, every call started is still live: followed without a task or a read.
        finals = [r.engine.final(x) for x in out if type(x) is str]
        assert not any(isinstance(f, asyncio.Task) for f in finals)
        done = [await finals[i] for i in (0, 3)]
        assert [(x.status, x.response, x.device_id) for x in done] == [
            (RpcStatus.SUCCESSFUL, {"v": 7}, a.device_id), (RpcStatus.SUCCESSFUL, {"v": 7}, b.device_id)]
        assert (await r.engine.list_by_device(twice)).total_elements == 2
        assert (await r.engine.list_by_device(other)).total_elements == 0
        assert (await r.engine.get(taken)).device_id == full  # the first call with that id is untouched
        # A finished call's future resolves from the store.
        assert (await r.engine.final(out[0])).status is RpcStatus.SUCCESSFUL
        # Bad options refuse the whole batch before anything is stored.
        with pytest.raises(ValidationError, match="method"):
            await r.engine.call_many([a.device_id], "", expiration_time=exp)
        with pytest.raises(ValidationError, match="one id per device"):
            await r.engine.call_many([a.device_id, b.device_id], "echo", request_uuids=[None])
        assert (await r.engine.list_by_device(a.device_id)).total_elements == 1
    finally:
        await r.stop()


async def test_the_ttl_clean_up_runs_by_itself(mqtt_url, store_url):
    """ttl_enabled: the engine's own loop deletes finished calls older than
    ttl_days (every ttl_check_interval_s), and leaves unfinished ones."""
    from fleetrpc.store.base import RpcRecord

    day = 86_400_000
    now = int(time.time() * 1000)
    rig = await Rig(mqtt_url, store_url, ttl_enabled=True, ttl_days=1, ttl_check_interval_s=0.05).start()
    try:
        def old(rid: str, status: RpcStatus, age_days: float) -> RpcRecord:
            created = now - int(age_days * day)
            return RpcRecord(id=rid, device_id="ttl-dev", created_time=created, expiration_time=created + 10_000,
                             method="m", status=status, tenant_id="default")

        await rig.store.insert_many([old("gone", RpcStatus.SUCCESSFUL, 2), old("young", RpcStatus.FAILED, 0.5),
                                     old("unfinished", RpcStatus.SENT, 2)])
        await _wait(lambda: rig.engine.stats.purged >= 1)
        assert await rig.store.get("gone", "default") is None
        assert await rig.store.get("young", "default") is not None
        assert await rig.store.get("unfinished", "default") is not None
    finally:
        await rig.stop()
