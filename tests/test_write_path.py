"""The persistent-RPC write path: coalescing in the group-commit store,
``submit_change`` / ``submit_insert``, per-call order on stores without
group commit, durable waits and retries in order after a failure.

Real SQLite and PostgreSQL; the engine tests also a real broker."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid

import msgspec
import pytest

from fleetrpc.config import Settings
from fleetrpc.device import DeviceClient
from fleetrpc.dispatch import Dispatcher
from fleetrpc.errors import InvalidTransitionError, StoreError, StoreUnavailableError
from fleetrpc.rpc.persistent import PersistentRpc, _Uuid4Source
from fleetrpc.rpc.status import RpcStatus as St
from fleetrpc.rpc.status import is_allowed
from fleetrpc.store import (
    GroupCommitStore,
    PostgresStore,
    RpcRecord,
    SqliteStore,
    StatusChange,
    open_store,
)
from fleetrpc.store.batching import coalesce_changes
from tests.services import drop_pg_schema

T0 = 1_700_000_000_000
UNSET = msgspec.UNSET


def rec(i: int = 0, **kw) -> RpcRecord:
    base = {"id": str(uuid.uuid4()), "device_id": "dev-1", "created_time": T0 + i,
            "expiration_time": T0 + i + 60_000, "method": "m", "params": {"i": i}}
    base.update(kw)
    return RpcRecord(**base)


def chg(rpc_id: str, old: St, new: St, t: int = 0, **kw) -> StatusChange:
    return StatusChange(id=rpc_id, expected_status=old, status=new, updated_time=T0 + t, **kw)


# -- coalesce_changes: the rule ------------------------------------------------------------


def _steps() -> list[tuple[St, St]]:
    return [(a, b) for a in St for b in St if is_allowed(a, b, oneway=False)]


def test_coalesce_only_legal_continuations():
    for (a, b), (c, d) in itertools.product(_steps(), repeat=2):
        first, then = chg("x", a, b, 1), chg("x", c, d, 2)
        merged = coalesce_changes(first, then)
        if b is not c or not is_allowed(a, d, oneway=False):
            assert merged is None, (a, b, c, d)
            continue
        # one-way rows: the merged move applies exactly when both steps would
        both_oneway = is_allowed(a, b, oneway=True) and is_allowed(c, d, oneway=True)
        if is_allowed(a, d, oneway=True) != both_oneway:
            assert merged is None
            continue
        assert merged is not None, (a, b, c, d)
        assert (merged.expected_status, merged.status, merged.updated_time) == (a, d, T0 + 2)
        # the committed state is one the call passed through: the later one
        assert merged.status is then.status
    assert coalesce_changes(chg("x", St.QUEUED, St.SENT), chg("y", St.SENT, St.DELIVERED)) is None


def test_coalesce_keeps_every_field_either_change_sets():
    first = chg("x", St.SENT, St.DELIVERED, 1, attempts=2, error="e1")
    merged = coalesce_changes(first, chg("x", St.DELIVERED, St.SUCCESSFUL, 2, response={"r": 1}))
    assert (merged.attempts, merged.response, merged.error) == (2, {"r": 1}, "e1")
    first = chg("x", St.QUEUED, St.SENT, 1, attempts=2, error="e1")
    merged = coalesce_changes(first, chg("x", St.SENT, St.FAILED, 3, attempts=3, error=None))
    assert (merged.expected_status, merged.status) == (St.QUEUED, St.FAILED)
    assert (merged.attempts, merged.response, merged.error) == (3, UNSET, None)
    # DELIVERED -> FAILED would not apply to a one-way row, SENT -> FAILED would
    assert coalesce_changes(chg("x", St.SENT, St.DELIVERED), chg("x", St.DELIVERED, St.FAILED)) is None
    # QUEUED -> SENT -> DELIVERED is not one legal move: never merged
    assert coalesce_changes(chg("x", St.QUEUED, St.SENT), chg("x", St.SENT, St.DELIVERED)) is None


def test_uuid4_strings_are_version_4():
    new_id = _Uuid4Source()
    seen = set()
    for _ in range(1000):  # several 4 KiB reads of os.urandom
        u = new_id()
        assert u not in seen
        seen.add(u)
        parsed = uuid.UUID(u)
        assert str(parsed) == u and parsed.version == 4 and parsed.variant == uuid.RFC_4122


# -- the group-commit store ----------------------------------------------------------------


class Recording(SqliteStore):
    """A SQLite store that records every batch it is asked to write."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.batches: list[list[StatusChange]] = []

    async def write(self, inserts=(), changes=(), *, atomic=False):
        self.batches.append(list(changes))
        return await super().write(inserts, changes, atomic=atomic)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
async def base_store(request, tmp_path):
    """A plain store, SQLite (recording its batches) or PostgreSQL (a schema
    of its own in pg_dsn's database, dropped after)."""
    if request.param == "sqlite":
        s = Recording(str(tmp_path / "rpc.db"))
        await s.open()
        yield s
        await s.close()
        return
    dsn = request.getfixturevalue("pg_dsn")
    schema = f"w_{uuid.uuid4().hex[:16]}"
    s = PostgresStore(dsn, schema=schema, min_size=1, max_size=8)
    await s.open()
    yield s
    await s.close()
    drop_pg_schema(dsn, schema)


async def test_submit_change_merges_queued_continuations(base_store):
    g = GroupCommitStore(base_store)
    await g.open()
    try:
        r = rec()
        await g.submit_insert(r)
        f1 = g.submit_change(chg(r.id, St.QUEUED, St.SENT, 1, attempts=1))
        f2 = g.submit_change(chg(r.id, St.SENT, St.DELIVERED, 2))  # Q->D is no move: separate
        f3 = g.submit_change(chg(r.id, St.DELIVERED, St.SUCCESSFUL, 3, response={"ok": 1}))
        assert f1 is not f2 and f3 is f2  # S->D + D->OK = S->OK, one row update
        assert g.batch_stats.coalesced == 1
        assert await asyncio.gather(f1, f2, f3) == [True, True, True]
        got = await base_store.get(r.id, "default")
        assert (got.status, got.attempts, got.response, got.updated_time) == (St.SUCCESSFUL, 1, {"ok": 1}, T0 + 3)
        with pytest.raises(InvalidTransitionError):  # refused at once, never queued
            g.submit_change(chg(r.id, St.SUCCESSFUL, St.SENT))
    finally:
        await g.drain()


class Listener:
    """Records what a GroupCommitStore tells it, batch by batch."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list, object]] = []
        self.heard = asyncio.Event()

    def changes_written(self, writes, applied):
        self.batches.append(("written", list(writes), list(applied)))
        self.heard.set()

    def changes_failed(self, writes, error):
        self.batches.append(("failed", list(writes), error))
        self.heard.set()

    def told(self):
        return [(kind, w, res) for kind, ws, res in self.batches
                for w, res in zip(ws, res if kind == "written" else [res] * len(ws))]


async def test_post_change_tells_its_listener_once_per_batch(base_store):
    g = GroupCommitStore(base_store)
    await g.open()
    try:
        a, b = rec(1), rec(2)
        await asyncio.gather(g.submit_insert(a), g.submit_insert(b))
        lst = Listener()
        w1 = g.post_change(chg(a.id, St.QUEUED, St.SENT, 1, attempts=1), lst)
        w2 = g.post_change(chg(a.id, St.SENT, St.DELIVERED, 2), lst)  # Q->D is no move: separate
        w3 = g.post_change(chg(a.id, St.DELIVERED, St.SUCCESSFUL, 3, response={"ok": 1}), lst)
        w4 = g.post_change(chg(b.id, St.SENT, St.DELIVERED, 4), lst)  # b is QUEUED: not applied
        assert w1 is not w2 and w3 is w2 and g.batch_stats.coalesced == 1
        assert (w2.payload.expected_status, w2.payload.status) == (St.SENT, St.SUCCESSFUL)
        # and a future of the same call never merges into a listener's write
        f = g.submit_change(chg(b.id, St.QUEUED, St.SENT, 5))
        assert await f is True
        while len(lst.told()) < 3:
            lst.heard.clear()
            await lst.heard.wait()
        told = lst.told()
        assert sorted((w is w1, w is w2, w is w4, res) for _, w, res in told) == sorted(
            [(True, False, False, True), (False, True, False, True), (False, False, True, False)])
        # a's two writes in order, each batch heard once
        assert [w for _, w, _ in told if w in (w1, w2)] == [w1, w2]
        assert len(lst.batches) == len({id(ws[0]) for _, ws, _ in lst.batches})
        got = await base_store.get(a.id, "default")
        assert (got.status, got.attempts, got.response) == (St.SUCCESSFUL, 1, {"ok": 1})
        with pytest.raises(InvalidTransitionError):  # refused at once, never queued
            g.post_change(chg(a.id, St.SUCCESSFUL, St.SENT), lst)
    finally:
        await g.drain()
    with pytest.raises(StoreError):  # not open
        g.post_change(chg(a.id, St.SUCCESSFUL, St.DELETED), Listener())


async def test_post_change_failures_reach_the_listener(base_store):
    g = GroupCommitStore(base_store)
    await g.open()
    try:
        r = rec(7)
        await g.submit_insert(r)
        real_write = base_store.write

        async def unavailable(*a, **kw):
            raise StoreUnavailableError("down")

        base_store.write = unavailable
        lst = Listener()
        w = g.post_change(chg(r.id, St.QUEUED, St.SENT), lst)
        await lst.heard.wait()
        (kind, ws, err), = lst.batches
        assert kind == "failed" and ws == [w] and isinstance(err, StoreUnavailableError)
        base_store.write = real_write
    finally:
        await g.drain()


async def test_post_change_merges_exactly_what_coalesce_changes_merges(base_store):
    # post_change skips coalesce_changes() for pairs that cannot merge: the
    # same pairs must merge either way, over every pair of legal moves.
    g = GroupCommitStore(base_store)
    await g.open()
    try:
        lst = Listener()
        for (a, b), (c, d) in itertools.product(_steps(), repeat=2):
            rpc_id = str(uuid.uuid4())  # no row: nothing applies, only the queue matters
            first, then = chg(rpc_id, a, b, 1), chg(rpc_id, c, d, 2)
            w1 = g.post_change(first, lst)
            w2 = g.post_change(then, lst)  # same loop turn: w1 is still queued
            assert (w2 is w1) == (coalesce_changes(first, then) is not None), (a, b, c, d)
    finally:
        await g.drain()


async def test_group_commit_store_passes_dialect_reads_through(base_store):
    g = GroupCommitStore(base_store)
    own = sorted(n for n in dir(base_store) if n.startswith("unfinished_"))
    assert own == (["unfinished_by_ids", "unfinished_count", "unfinished_devices"]
                   if isinstance(base_store, PostgresStore) else [])
    for name in own:
        assert getattr(g, name) == getattr(base_store, name)
    assert not hasattr(g, "unfinished_nothing")
    # ... without a __getattr__: with one, CPython specialises no attribute
    # lookup on the store (every write does several).
    assert not hasattr(GroupCommitStore, "__getattr__")


def test_records_and_changes_are_not_tracked_by_the_gc():
    # gc=False: one record per unfinished call, which every full collection
    # would walk; neither can be part of a cycle (scalars and JSON values).
    import gc

    assert not gc.is_tracked(rec(params={"a": [1, {"b": 2}]}, response={"ok": [1]}))
    assert not gc.is_tracked(chg("x", St.SENT, St.SUCCESSFUL, response={"ok": [1]}))


async def test_no_merge_with_a_change_already_taken_or_when_disabled(base_store):
    g = GroupCommitStore(base_store, coalesce=False)
    await g.open()
    try:
        r = rec()
        await g.insert(r)
        await g.change(chg(r.id, St.QUEUED, St.SENT))
        f1 = g.submit_change(chg(r.id, St.SENT, St.DELIVERED))
        f2 = g.submit_change(chg(r.id, St.DELIVERED, St.SUCCESSFUL, response=1))
        assert f1 is not f2 and g.batch_stats.coalesced == 0
        assert await asyncio.gather(f1, f2) == [True, True]
    finally:
        await g.drain()
    g = GroupCommitStore(base_store)
    await g.open()
    try:
        r = rec(1)
        await g.insert(r)
        f1 = g.submit_change(chg(r.id, St.QUEUED, St.SENT))
        await asyncio.sleep(0)  # the writer takes f1's batch ...
        f2 = g.submit_change(chg(r.id, St.SENT, St.SUCCESSFUL, response=1))  # ... so this one waits
        assert f1 is not f2 and await asyncio.gather(f1, f2) == [True, True]
        assert (await base_store.get(r.id, "default")).status is St.SUCCESSFUL
    finally:
        await g.drain()


async def test_write_inserts_and_changes_together(base_store):
    """New calls plus changes to other calls in one write -- the group
    writer's usual batch, one statement on PostgreSQL -- and the shapes
    that need more (a row changed twice, inserted and changed)."""
    s = base_store
    old = [rec(i) for i in range(4)]
    await s.insert_many(old)
    new = [rec(10 + i) for i in range(5)]
    batch = new[:2] + [old[0]] + new[2:] + [new[1]]  # a taken id, and one id twice
    changes = [
        chg(old[1].id, St.QUEUED, St.SENT, 1, attempts=1),
        chg(old[2].id, St.SENT, St.DELIVERED, 2),  # stale: not applied
        chg(old[3].id, St.QUEUED, St.EXPIRED, 3, error="gone"),
    ]
    result = await s.write(batch, changes)
    assert result.inserted == [True, True, False, True, True, True, False]
    assert result.applied == [True, False, True]
    for r in new:
        assert await s.get(r.id, "default") == r
    got = await s.get(old[1].id, "default")
    assert (got.status, got.attempts, got.updated_time) == (St.SENT, 1, T0 + 1)
    assert (await s.get(old[3].id, "default")).error == "gone"
    assert (await s.get(old[2].id, "default")).status is St.QUEUED
    # inserted and changed in the same write: the change sees the new row
    fresh = rec(20)
    result = await s.write([fresh], [chg(fresh.id, St.QUEUED, St.SENT, attempts=1),
                                     chg(old[1].id, St.SENT, St.SUCCESSFUL, response=[1, {"a": None}])])
    assert result.applied == [True, True]
    assert (await s.get(fresh.id, "default")).status is St.SENT
    assert (await s.get(old[1].id, "default")).response == [1, {"a": None}]
    # a row changed twice in one write: in order
    more = rec(21)
    result = await s.write([more], [chg(fresh.id, St.SENT, St.DELIVERED), chg(fresh.id, St.DELIVERED, St.FAILED)])
    assert result.applied == [True, True] and (await s.get(fresh.id, "default")).status is St.FAILED
    # None in JSON columns stays NULL, values round-trip
    odd = rec(22, params=None, additional_info={"k": [1.5, "x"]}, oneway=True, retries=3)
    await s.write([odd], [chg(more.id, St.QUEUED, St.SENT)])
    assert await s.get(odd.id, "default") == odd


async def test_write_refuses_bad_values_before_or_at_the_database(base_store):
    from fleetrpc.errors import StoreError, ValidationError

    ok = rec(0)
    await base_store.insert(ok)
    with pytest.raises(ValidationError, match="not JSON"):
        await base_store.write([rec(1, params={"x": object()})], [chg(ok.id, St.QUEUED, St.SENT)])
    with pytest.raises(StoreError):
        await base_store.write([rec(2, created_time=2**70)], [chg(ok.id, St.QUEUED, St.SENT)])
    assert (await base_store.get(ok.id, "default")).status is St.QUEUED  # nothing of it was stored


# The paths a two-way call takes through its states, as the engine makes them.
PATHS = [
    [St.SENT, St.DELIVERED, St.SUCCESSFUL],
    [St.SENT, St.SUCCESSFUL],
    [St.SENT, St.DELIVERED, St.TIMEOUT, St.SENT, St.DELIVERED, St.SUCCESSFUL],
    [St.SENT, St.TIMEOUT, St.SENT, St.TIMEOUT, St.FAILED],
    [St.SENT, St.DELIVERED, St.TIMEOUT, St.EXPIRED],
    [St.EXPIRED],
    [St.SENT, St.DELIVERED, St.FAILED],
]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_coalescing_keeps_order_and_only_real_states(base_store, seed):
    """Many calls' changes, interleaved at random with the writer taking
    batches at random moments: every call ends in its last state, every
    future says applied, and every status written for a call is one it
    passed through, in the order it passed through them."""
    rnd = random.Random(seed)
    g = GroupCommitStore(base_store, max_batch=rnd.choice([7, 50, 1000]))
    await g.open()
    try:
        calls = [rec(i) for i in range(60)]
        await asyncio.gather(*(g.insert(r) for r in calls))
        paths = {r.id: rnd.choice(PATHS) for r in calls}
        todo = {r.id: 0 for r in calls}
        status = {r.id: St.QUEUED for r in calls}
        futures = []
        t = 0
        while todo:
            rpc_id = rnd.choice(list(todo))
            new = paths[rpc_id][todo[rpc_id]]
            t += 1
            extra = {"response": {"t": t}} if new is St.SUCCESSFUL else {}
            if new is St.SENT:
                extra = {"attempts": t}
            futures.append(g.submit_change(chg(rpc_id, status[rpc_id], new, t, **extra)))
            status[rpc_id] = new
            todo[rpc_id] += 1
            if todo[rpc_id] == len(paths[rpc_id]):
                del todo[rpc_id]
            if rnd.random() < 0.2:
                await asyncio.sleep(0)  # let the writer take what is queued
        assert all(await asyncio.gather(*futures))
        for r in calls:
            got = await base_store.get(r.id, "default")
            assert got.status is paths[r.id][-1]
        if isinstance(base_store, Recording):
            written: dict[str, list[St]] = {}
            for batch in base_store.batches:
                for c in batch:
                    written.setdefault(c.id, []).append(c.status)
            for rpc_id, seen in written.items():
                it = iter(paths[rpc_id])  # a subsequence of the path, in order
                assert all(s in it for s in seen), (paths[rpc_id], seen)
                assert seen[-1] is paths[rpc_id][-1]
        assert g.batch_stats.coalesced > 0
    finally:
        await g.drain()


# -- the engine ------------------------------------------------------------------------------


_seq = itertools.count()


def _name(prefix: str = "wdev") -> str:
    return f"{prefix}-{time.monotonic_ns() % 10**9}-{next(_seq)}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/rpc.db"
    return request.getfixturevalue("fresh_pg_db")


class Engine:
    """A dispatcher and a persistent engine on ``store``, a few devices."""

    def __init__(self, mqtt_url: str, store) -> None:
        # presence=False: the devices are subscribed once connect() returns,
        # and the shared broker's retained presence of every device any test
        # ever ran (thousands; more than a default Mosquitto queues for a new
        # subscriber) cannot crowd out ours.
        self.settings = Settings(mqtt_url=mqtt_url, node_id=_name("node"), min_timeout_ms=0,
                                 ttl_enabled=False, presence=False)
        self.store = store
        self.events: list[tuple[str, str]] = []
        self.devices: list[DeviceClient] = []

    async def start(self, n_devices: int = 3) -> Engine:
        try:
            await self._start(n_devices)
        except BaseException:
            await self.stop()  # an open SQLite store's thread would keep pytest from exiting
            raise
        return self

    async def _start(self, n_devices: int) -> None:
        self.dispatcher = Dispatcher(self.settings)
        await self.dispatcher.start()
        self.engine = PersistentRpc(self.dispatcher, self.store,
                                    emit=lambda t, body: self.events.append((t, body["id"]["id"])))
        await self.engine.start()
        for _ in range(n_devices):
            dev = DeviceClient(_name(), self.settings.mqtt_url)

            @dev.method("echo")
            def echo(params):
                return params

            @dev.method("slow")
            async def slow(params):
                await asyncio.sleep(params["s"])
                return params

            await dev.connect()  # subscribed when it returns
            self.devices.append(dev)

    async def stop(self) -> None:
        for dev in self.devices:
            await dev.close()
        for part in ("engine", "dispatcher"):
            if hasattr(self, part):
                await getattr(self, part).close()
        await self.store.close()

    def types(self, rpc_id: str) -> list[str]:
        return [t for t, i in self.events if i == rpc_id]


async def _statuses(url: str, ids: list[str]) -> dict[str, St]:
    """What a second, fresh connection to the database sees."""
    other = await open_store(url)
    try:
        return {i: (await other.get(i, "default")).status for i in ids}
    finally:
        await other.close()


@pytest.mark.parametrize("group", [True, False], ids=["group", "per-row"])
async def test_durable_wait_means_committed(mqtt_url, store_url, group):
    e = await Engine(mqtt_url, await open_store(store_url, group_commit=group)).start()
    try:
        devs = [d.device_id for d in e.devices]

        async def one(i: int) -> tuple[str, St]:
            rpc_id = await e.engine.call(devs[i % len(devs)], "echo", {"i": i})
            record = await e.engine.wait(rpc_id, 10, durable=True)
            return rpc_id, record.status

        done = await asyncio.gather(*(one(i) for i in range(40)))
        assert {s for _, s in done} == {St.SUCCESSFUL}
        # committed: a fresh connection sees every final status at once
        seen = await _statuses(store_url, [i for i, _ in done])
        assert set(seen.values()) == {St.SUCCESSFUL}
        for rpc_id, _ in done:
            assert e.types(rpc_id) == ["RPC_QUEUED", "RPC_SENT", "RPC_DELIVERED", "RPC_SUCCESSFUL"]
    finally:
        await e.stop()


async def test_per_row_store_keeps_each_calls_writes_in_order(mqtt_url, store_url):
    """Without group commit every write is its own transaction on a pool of
    connections: a call's SENT, DELIVERED and SUCCESSFUL writes must still
    land in that order (they used to race, leaving rows at SENT)."""
    store = await open_store(store_url)  # plain store, no group commit
    e = await Engine(mqtt_url, store).start()
    try:
        devs = [d.device_id for d in e.devices]
        ids = await asyncio.gather(*(e.engine.call(devs[i % 3], "echo", i) for i in range(150)))
        for rpc_id in ids:
            assert (await e.engine.wait(rpc_id, 15)).status is St.SUCCESSFUL
        await e.engine.flush()
        assert set((await _statuses(store_url, list(ids))).values()) == {St.SUCCESSFUL}
        stats = store.stats
        assert stats.rows_changed == 3 * len(ids)  # every change applied, none lost to a race
    finally:
        await e.stop()


async def test_events_are_emitted_per_change_when_writes_merge(mqtt_url, store_url):
    # a writer that waits 50 ms before each batch: a call's DELIVERED and
    # SUCCESSFUL changes arrive while it waits and become one row update
    store = GroupCommitStore(await open_store(store_url), max_delay=0.05)
    await store.open()
    e = await Engine(mqtt_url, store).start()
    try:
        devs = [d.device_id for d in e.devices]
        ids = await asyncio.gather(*(e.engine.call(devs[i % 3], "echo", {"i": i}) for i in range(30)))
        records = [await e.engine.wait(i, 10, durable=True) for i in ids]
        assert store.batch_stats.coalesced > 0
        seen = await _statuses(store_url, list(ids))
        for rpc_id, record in zip(ids, records):
            assert e.types(rpc_id) == ["RPC_QUEUED", "RPC_SENT", "RPC_DELIVERED", "RPC_SUCCESSFUL"]
            assert seen[rpc_id] is St.SUCCESSFUL and record.attempts == 1
            stored = await store.get(rpc_id, "default")
            assert stored.response == record.response and stored.attempts == 1
    finally:
        await e.stop()


@pytest.mark.parametrize("group", [True, False], ids=["group", "per-row"])
async def test_failed_writes_are_retried_in_order(mqtt_url, store_url, group):
    """The database goes away while calls are in flight: their status writes
    fail, are held in line with everything after them, and land in order
    once it is back; the store ends where the engine is."""
    store = await open_store(store_url, group_commit=group)
    base = store.store if group else store
    e = await Engine(mqtt_url, store).start()
    real_write = base.write
    down = False

    async def flaky(*a, **kw):
        if down:
            await asyncio.sleep(0.01)
            raise StoreUnavailableError("database went away (test)")
        return await real_write(*a, **kw)

    base.write = flaky
    try:
        devs = [d.device_id for d in e.devices]
        ids = await asyncio.gather(*(e.engine.call(devs[i % 3], "slow", {"s": 0.3, "i": i}) for i in range(30)))
        down = True  # SENT is being written now; DELIVERED and SUCCESSFUL follow
        # On a loaded machine the first calls may have finished while the
        # last ones were still being inserted: only the others must wait.
        unfinished = {i for i in ids if i in e.engine._live}
        assert unfinished
        waiters = [asyncio.ensure_future(e.engine.wait(i, 30, durable=True)) for i in ids]
        await asyncio.sleep(0.8)
        assert e.engine.stats.write_errors > 0
        # not committed: durable waiters wait
        assert not any(w.done() for i, w in zip(ids, waiters) if i in unfinished)
        down = False
        records = await asyncio.gather(*waiters)
        assert {r.status for r in records} == {St.SUCCESSFUL}
        assert set((await _statuses(store_url, list(ids))).values()) == {St.SUCCESSFUL}
        for rpc_id in ids:
            stored = await store.get(rpc_id, "default")
            assert stored.response["i"] == ids.index(rpc_id) and stored.attempts == 1
    finally:
        base.write = real_write
        await e.stop()


async def test_a_call_encodes_its_request_once(mqtt_url, store_url):
    # call() encodes the request to check its size and hands that payload to
    # the dispatcher for the first attempt: one encode, not two.
    e = await Engine(mqtt_url, await open_store(store_url, group_commit=True)).start(n_devices=1)
    try:
        d = e.dispatcher
        encodes = []
        real = d._encode_request

        def counting(method, params):
            encodes.append(method)
            return real(method, params)

        d._encode_request = counting
        rpc_id = await e.engine.call(e.devices[0].device_id, "echo", {"i": 1})
        record = await e.engine.wait(rpc_id, 10, durable=True)
        assert record.status is St.SUCCESSFUL and record.response == {"i": 1}
        assert encodes == ["echo"]
    finally:
        await e.stop()
