"""The store layer: one suite, run against SQLite and PostgreSQL.

Each PostgreSQL test gets a schema of its own in ``pg_dsn``'s database,
dropped afterwards; one test uses a fresh database (``fresh_pg_db``) with
the default schema, and one stops and restarts a private server
(``pg_server``).
"""

from __future__ import annotations

import asyncio
import random
import uuid

import msgspec
import pytest

from fleetrpc.errors import (
    InvalidTransitionError,
    StoreError,
    StoreUnavailableError,
    ValidationError,
)
from fleetrpc.rpc.status import RpcStatus as St
from fleetrpc.rpc.status import is_allowed
from fleetrpc.store import (
    DuplicateRpcError,
    GroupCommitStore,
    Page,
    PostgresStore,
    RpcRecord,
    SqliteStore,
    StatusChange,
    migrations,
    open_store,
    store_from_url,
)
from tests.services import drop_pg_schema

T0 = 1_700_000_000_000  # a fixed "now", epoch ms
DAY = 86_400_000


# -- fixtures ---------------------------------------------------------------------


class Backend:
    """Where one test's store lives; ``make()`` builds another store on the
    same database (to reopen it, or to look from a second process)."""

    def __init__(self, kind, factory):
        self.kind = kind
        self._factory = factory

    def make(self, **options):
        return self._factory(**options)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def backend(request, tmp_path):
    if request.param == "sqlite":
        path = str(tmp_path / "rpc.db")
        yield Backend("sqlite", lambda **kw: SqliteStore(path, **kw))
        return
    # A schema per test in pg_dsn's database: as isolated as a database per
    # test for the store (which lives in one schema), and ~100x cheaper to
    # make than CREATE DATABASE.  test_postgres_fresh_database covers the
    # default schema on a database of its own.
    dsn = request.getfixturevalue("pg_dsn")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield Backend(
        "postgresql", lambda **kw: PostgresStore(dsn, schema=schema, **{"min_size": 1, "max_size": 4, **kw})
    )
    drop_pg_schema(dsn, schema)


@pytest.fixture
async def store(backend):
    s = backend.make()
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def gstore(store):
    g = GroupCommitStore(store)
    await g.open()
    yield g
    await g.drain()


def rec(i=0, **kw) -> RpcRecord:
    base = dict(
        id=str(uuid.uuid4()),
        device_id="dev-1",
        created_time=T0 + i,
        expiration_time=T0 + i + 60_000,
        method=f"method{i}",
        params={"pin": i, "value": 1},
    )
    base.update(kw)
    return RpcRecord(**base)


def chg(r, old, new, at=T0 + 1, **kw) -> StatusChange:
    rid = r if isinstance(r, str) else r.id
    return StatusChange(id=rid, expected_status=old, status=new, updated_time=at, **kw)


# -- records ----------------------------------------------------------------------


async def test_insert_get_round_trip_every_field(store):
    r = rec(
        tenant_id="tenant-a",
        oneway=True,
        retries=3,
        timeout_ms=5000,
        attempts=2,
        params={"nested": [1, 2.5, "ü", None, True], "empty": {}},
        response=["ok", 1],
        status=St.SENT,
        additional_info={"param1": "value1"},
        updated_time=T0 + 5,
        error="boom",
    )
    await store.insert(r)
    assert await store.get(r.id, r.tenant_id) == r
    for params in ("text", 42, 1.5, [], None, {"deep": {"er": [{"x": None}]}}):
        r2 = rec(params=params)
        await store.insert_many([r2])
        assert (await store.get(r2.id, r2.tenant_id)).params == params


async def test_defaults_and_coercion():
    r = RpcRecord(id="a", device_id="d", created_time=5, expiration_time=9, method="m", status="SENT")
    assert r.status is St.SENT and r.updated_time == 5 and r.tenant_id == "default"
    assert r.persisted is True and r.response is None and r.attempts == 0


async def test_get_missing_and_tenant_scoping(store):
    r = rec(tenant_id="t1")
    await store.insert(r)
    assert await store.get("nope", "default") is None
    assert (await store.get(r.id, tenant_id="t1")).id == r.id
    assert await store.get(r.id, tenant_id="t2") is None


async def test_insert_many_is_all_or_nothing(store):
    existing = rec(0)
    await store.insert(existing)
    batch = [rec(1), rec(2), existing, rec(3)]
    with pytest.raises(DuplicateRpcError):
        await store.insert_many(batch)
    for r in batch[:2] + batch[3:]:
        assert await store.get(r.id, r.tenant_id) is None
    twice = rec(4)
    with pytest.raises(DuplicateRpcError, match=twice.id):
        await store.insert_many([twice, rec(5), twice])
    assert await store.get(twice.id, twice.tenant_id) is None


@pytest.mark.parametrize("n", [3, 40])  # below and above the COPY threshold
async def test_write_reports_taken_ids_per_row(store, n):
    existing = rec(0)
    await store.insert(existing)
    batch = [rec(i + 1) for i in range(n)]
    batch.insert(1, existing)
    batch.append(batch[2])  # the same new id twice: the first wins
    result = await store.write(batch, [])
    assert result.inserted == [True, False] + [True] * (n - 1) + [False]
    assert all([await store.get(r.id, r.tenant_id) for r in batch])


async def test_json_refused_before_the_database(store):
    with pytest.raises(ValidationError, match="not JSON"):
        await store.insert(rec(params={"x": object()}))


# -- status changes -----------------------------------------------------------------


async def test_optimistic_changes(store):
    a, b, c = rec(0), rec(1), rec(2)
    await store.insert_many([a, b, c])
    applied = await store.apply_changes(
        [
            chg(a, St.QUEUED, St.SENT, attempts=1),
            chg(b, St.SENT, St.DELIVERED),  # stale: b is QUEUED
            chg("missing", St.QUEUED, St.SENT),
            chg(a, St.SENT, St.SUCCESSFUL, at=T0 + 9, response={"pin": 4, "changed": True}),  # same id, in order
            chg(c, St.QUEUED, St.FAILED, error="device refused"),
        ]
    )
    assert applied == [a.id, a.id, c.id]
    ga, gb, gc = [await store.get(x.id, x.tenant_id) for x in (a, b, c)]
    assert (ga.status, ga.attempts, ga.response, ga.updated_time) == (
        St.SUCCESSFUL,
        1,
        {"pin": 4, "changed": True},
        T0 + 9,
    )
    assert gb == b
    assert (gc.status, gc.error, gc.attempts) == (St.FAILED, "device refused", 0)


async def test_change_fields_left_unset_are_kept(store):
    r = rec(response={"old": 1}, error="e0", attempts=3, status=St.SENT)
    await store.insert(r)
    assert await store.change(chg(r, St.SENT, St.TIMEOUT))
    got = await store.get(r.id, r.tenant_id)
    assert (got.response, got.error, got.attempts, got.status) == ({"old": 1}, "e0", 3, St.TIMEOUT)
    assert await store.change(chg(r, St.TIMEOUT, St.SENT, response=None, error=None, attempts=4))
    got = await store.get(r.id, r.tenant_id)
    assert (got.response, got.error, got.attempts) == (None, None, 4)


async def test_stale_writer_cannot_clobber(store):
    r = rec()
    await store.insert(r)
    assert await store.change(chg(r, St.QUEUED, St.SENT))
    assert await store.change(chg(r, St.SENT, St.SUCCESSFUL, response=1))
    # A late timeout decided on the SENT view of the call:
    assert not await store.change(chg(r, St.SENT, St.TIMEOUT))
    assert (await store.get(r.id, r.tenant_id)).status is St.SUCCESSFUL


async def test_illegal_change_raises_before_writing(store):
    r = rec()
    await store.insert(r)
    with pytest.raises(InvalidTransitionError, match=f"RPC {r.id}: illegal transition QUEUED -> SUCCESSFUL"):
        await store.apply_changes([chg(r, St.QUEUED, St.SENT), chg(r, St.QUEUED, St.SUCCESSFUL)])
    assert (await store.get(r.id, r.tenant_id)).status is St.QUEUED  # nothing of the call applied


async def test_oneway_rows_refuse_twoway_moves(store):
    r = rec(oneway=True, status=St.SENT)
    d = rec(1, oneway=True, status=St.DELIVERED)
    await store.insert_many([r, d])
    assert await store.apply_changes([chg(r, St.SENT, St.SUCCESSFUL), chg(d, St.DELIVERED, St.TIMEOUT)]) == []
    assert await store.apply_changes([chg(r, St.SENT, St.DELIVERED), chg(d, St.DELIVERED, St.DELETED)]) == [
        r.id,
        d.id,
    ]


async def test_random_changes_match_a_model(store):
    """Random optimistic changes, legal and stale, against a dict model."""
    rnd = random.Random(7)
    records = [rec(i, oneway=rnd.random() < 0.3) for i in range(20)]
    await store.insert_many(records)
    model = {r.id: (St.QUEUED, r.oneway) for r in records}
    statuses = list(St)
    for _ in range(15):
        batch = []
        for _ in range(rnd.randint(1, 12)):
            r = rnd.choice(records)
            old = rnd.choice(statuses)
            new = rnd.choice(statuses)
            if is_allowed(old, new, oneway=False):
                batch.append(chg(r, old, new))
        expect = []
        for c in batch:
            cur, oneway = model[c.id]
            if cur is c.expected_status and is_allowed(cur, c.status, oneway=oneway):
                model[c.id] = (c.status, oneway)
                expect.append(c.id)
        assert await store.apply_changes(batch) == expect
    for r in records:
        assert (await store.get(r.id, r.tenant_id)).status is model[r.id][0]


# -- delete, listing, recovery --------------------------------------------------------


async def test_delete_returns_the_row(store):
    r = rec(tenant_id="t1", status=St.SUCCESSFUL, response={"a": 1})
    await store.insert(r)
    assert await store.delete(r.id, tenant_id="t2") is None
    assert await store.delete(r.id, r.tenant_id) == r
    assert await store.get(r.id, r.tenant_id) is None
    assert await store.delete(r.id, r.tenant_id) is None


@pytest.fixture
async def listed(store):
    """25 calls of dev-1 (varied), 3 of dev-2, 2 of dev-1 in another tenant."""
    rnd = random.Random(3)
    statuses = [St.QUEUED, St.SENT, St.SUCCESSFUL, St.FAILED]
    rows = [
        rec(
            i,
            expiration_time=T0 + rnd.randint(0, 10**6),
            method=rnd.choice(["setGPIO", "getTime", "reboot", "set_50%"]),
            status=statuses[i % 4],
        )
        for i in range(25)
    ]
    rows.append(rec(100, created_time=T0 + 3))  # a created_time tie
    other = [rec(200 + i, device_id="dev-2") for i in range(3)]
    tenant = [rec(300 + i, tenant_id="t-other") for i in range(2)]
    await store.insert_many(rows + other + tenant)
    return rows + tenant


async def test_paging(store, listed):
    seen = []
    for page in range(3):
        p = await store.list_by_device("dev-1", tenant_id="default", page_size=10, page=page)
        assert (p.total_elements, p.total_pages, p.has_next) == (26, 3, page < 2)
        assert len(p.data) == (10 if page < 2 else 6)
        seen += p.data
    assert {r.id for r in seen} == {r.id for r in listed if r.tenant_id == "default"}
    empty = await store.list_by_device("dev-1", tenant_id="default", page_size=10, page=7)
    assert (empty.data, empty.total_elements, empty.has_next) == ([], 26, False)
    none = await store.list_by_device("nobody", tenant_id="default")
    assert none == Page(data=[], total_pages=0, total_elements=0, has_next=False)


SORT_KEYS = {
    "createdTime": lambda r: r.created_time,
    "expirationTime": lambda r: r.expiration_time,
    "request": lambda r: r.method,
    "method": lambda r: r.method,
    "status": lambda r: r.status.value,
}


async def test_sorting(store, listed):
    # One test walks every property and order: a schema per case would cost
    # more than the queries.
    # ties keep insertion order (the order of `listed`)
    listed = [r for r in listed if r.tenant_id == "default"]  # another tenant's are never listed
    seq = {r.id: i for i, r in enumerate(listed)}
    for prop, key in SORT_KEYS.items():
        for order in ("ASC", "DESC", "asc"):
            p = await store.list_by_device("dev-1", tenant_id="default", page_size=100, sort_property=prop, sort_order=order)
            want = sorted(listed, key=lambda r: (key(r), seq[r.id]), reverse=order.upper() == "DESC")
            assert [r.id for r in p.data] == [r.id for r in want], (prop, order)
    # paging follows the sort
    p = await store.list_by_device("dev-1", tenant_id="default", page_size=4, page=1, sort_property="expirationTime", sort_order="ASC")
    want = sorted(listed, key=lambda r: (r.expiration_time, seq[r.id]))[4:8]
    assert [r.id for r in p.data] == [r.id for r in want]


async def test_filters(store, listed):
    p = await store.list_by_device("dev-1", tenant_id="default", page_size=100, status="SUCCESSFUL")
    assert {r.id for r in p.data} == {r.id for r in listed if r.status is St.SUCCESSFUL}
    p = await store.list_by_device("dev-1", tenant_id="default", page_size=100, text_search="GPIO")
    assert {r.id for r in p.data} == {r.id for r in listed if "gpio" in r.method.lower()}
    # LIKE wildcards in the search are literal
    p = await store.list_by_device("dev-1", tenant_id="default", page_size=100, text_search="_5")
    assert {r.id for r in p.data} == {r.id for r in listed if "_5" in r.method}
    p = await store.list_by_device("dev-1", tenant_id="default", page_size=100, text_search="%")
    assert {r.id for r in p.data} == {r.id for r in listed if "%" in r.method}
    p = await store.list_by_device("dev-1", tenant_id="t-other", status=St.QUEUED)
    assert {r.id for r in p.data} == {r.id for r in listed if r.tenant_id == "t-other"}


BAD_LISTING_ARGS = [
    ({"sort_property": "createdTime; DROP TABLE rpc"}, "sortProperty"),
    ({"sort_property": "id"}, "sortProperty"),
    ({"sort_order": "DESC; DELETE FROM rpc"}, "sortOrder"),
    ({"page_size": 0}, "pageSize"),
    ({"page_size": 10**6}, "pageSize"),
    ({"page": -1}, "page"),
    ({"page": "1"}, "page"),
    ({"status": "DONE"}, "rpcStatus"),
]


async def test_bad_listing_arguments(store, listed):
    for kwargs, match in BAD_LISTING_ARGS:
        with pytest.raises(ValidationError, match=match):
            await store.list_by_device("dev-1", tenant_id="default", **kwargs)
    assert (await store.list_by_device("dev-1", tenant_id="default")).total_elements == 26  # the table is still there


async def test_load_unfinished(store):
    statuses = list(St)
    kinds = [(s, ow) for s in statuses for ow in (False, True)]
    rows = [rec(50 - i, status=s, oneway=ow) for i, (s, ow) in enumerate(kinds)]
    await store.insert_many(rows)
    got = await store.load_unfinished()
    want = [
        r
        for r in sorted(rows, key=lambda r: r.created_time)
        if r.status in (St.QUEUED, St.SENT, St.TIMEOUT) or (r.status is St.DELIVERED and not r.oneway)
    ]
    assert got == want


async def test_claim_unfinished_records_the_owner_node(store):
    mine = rec(1, owner_node="node-a", lease_until=T0 + 30_000)
    live = rec(2, status=St.SENT)
    done = rec(3, status=St.SUCCESSFUL, owner_node="node-a")
    await store.insert_many([mine, live, done])
    assert (await store.get(mine.id, mine.tenant_id)).owner_node == "node-a"  # recorded on insert
    got = await store.claim_unfinished("node-b")
    assert [r.id for r in got] == [mine.id, live.id]
    assert {r.owner_node for r in got} == {"node-b"}
    assert got[0].lease_until == T0 + 30_000
    assert (await store.get(done.id, done.tenant_id)).owner_node == "node-a"  # finished: untouched


async def test_the_tenant_is_required_everywhere(store):
    r = rec(tenant_id="t1")
    await store.insert(r)
    for bad in (None, "", 7):
        with pytest.raises(ValidationError, match="tenant_id"):
            await store.get(r.id, bad)
        with pytest.raises(ValidationError, match="tenant_id"):
            await store.delete(r.id, bad)
        with pytest.raises(ValidationError, match="tenant_id"):
            await store.list_by_device("dev-1", tenant_id=bad)
        with pytest.raises(ValidationError, match="tenant_id"):
            await store.purge_terminal(T0 + 10**9, bad)
    with pytest.raises(TypeError):
        await store.get(r.id)  # no default: no "every tenant"
    assert await store.get(r.id, "t1") == r


# -- TTL ------------------------------------------------------------------------------


async def test_purge_terminal(store):
    old_done = [rec(i, status=s) for i, s in enumerate([St.SUCCESSFUL, St.EXPIRED, St.FAILED, St.DELETED])]
    old_oneway_delivered = rec(5, status=St.DELIVERED, oneway=True)
    old_live = [rec(10 + i, status=s) for i, s in enumerate([St.QUEUED, St.SENT, St.DELIVERED, St.TIMEOUT])]
    new_done = rec(DAY, status=St.SUCCESSFUL)
    other_tenant = rec(6, status=St.FAILED, tenant_id="t2")
    await store.insert_many([*old_done, old_oneway_delivered, *old_live, new_done, other_tenant])
    assert await store.purge_terminal(T0 + 1000, tenant_id="t2") == 1
    assert await store.purge_terminal(T0 + 1000, "default") == 5
    assert await store.purge_terminal(T0 + 1000, "default") == 0
    for r in old_live + [new_done]:
        assert await store.get(r.id, r.tenant_id) is not None
    assert len(await store.load_unfinished()) == 4


async def test_tenant_ttl_and_purge_expired(store):
    now = T0 + 100 * DAY
    for tenant, days in (("short", 1), ("keep", 0), ("long", 60)):
        await store.set_tenant_ttl(tenant, days)
    assert await store.get_tenant_ttl("short") == 1
    assert await store.get_tenant_ttl("unset") is None
    await store.set_tenant_ttl("short", 2)  # update
    assert await store.get_tenant_ttl("short") == 2

    def done(tenant, age_days, status=St.SUCCESSFUL):
        return rec(
            id=f"{tenant}-{age_days}-{status.value}",
            tenant_id=tenant,
            created_time=now - int(age_days * DAY),
            status=status,
        )

    rows = [
        done("short", 3),  # gone: older than 2 days
        done("short", 1),
        done("short", 3, St.SENT),  # live: never purged
        done("keep", 1000),  # TTL 0 keeps forever
        done("long", 61),  # gone
        done("long", 59),
        done("dflt", 31),  # gone with a 30-day default
        done("dflt", 29),
    ]
    await store.insert_many(rows)
    assert await store.purge_expired(now, default_days=None) == 2  # no default: tenants with a TTL only
    assert await store.purge_expired(now, default_days=30) == 1
    left = {r.id for r in rows if await store.get(r.id, r.tenant_id)}
    assert left == {
        "short-1-SUCCESSFUL",
        "short-3-SENT",
        "keep-1000-SUCCESSFUL",
        "long-59-SUCCESSFUL",
        "dflt-29-SUCCESSFUL",
    }
    await store.set_tenant_ttl("keep", None)  # back to the default
    assert await store.get_tenant_ttl("keep") is None
    assert await store.purge_expired(now, default_days=30) == 1
    with pytest.raises(ValidationError):
        await store.set_tenant_ttl("x", -1)


# -- migrations -------------------------------------------------------------------------


async def test_migrations_are_idempotent(backend, store):
    known = migrations.load(backend.kind)
    assert known
    # Numbers may leave gaps (each part owns a range): the newest is the version.
    assert await store.schema_version() == max(m.version for m in known)
    assert await store.migrate() == []
    r = rec()
    await store.insert(r)
    again = backend.make()  # a second process opening the same database
    await again.open()
    try:
        assert await again.migrate() == []
        assert await again.get(r.id, r.tenant_id) == r
    finally:
        await again.close()


async def test_concurrent_migrators(backend):
    stores = [backend.make(migrate_on_open=False) for _ in range(3)]
    for s in stores:
        await s.open()
    try:
        done = await asyncio.gather(*(s.migrate() for s in stores))
        n = len(migrations.load(backend.kind))
        # every migration applied exactly once, by whichever migrator got it
        applied = sorted(v for versions in done for v in versions)
        assert len(applied) == n and len(set(applied)) == n
    finally:
        for s in stores:
            await s.close()


async def test_newer_schema_is_refused(backend, store):
    await store.write([], [])  # no-op write is fine
    marker = "INSERT INTO schema_version (version, name, applied_time) VALUES (999, 'future', 0)"
    await store.db.execute(marker)
    await store.close()
    with pytest.raises(StoreError, match="upgrade fleetrpc"):
        await backend.make().open()


def test_migration_files_split_into_statements():
    for kind in ("sqlite", "postgresql"):
        ms = migrations.load(kind)
        versions = [m.version for m in ms]
        # Rising and distinct, each in the range of its owner (gaps allowed).
        assert versions == sorted(set(versions)) and versions[0] == 1
        assert all(any(v in r for r in migrations.OWNERS) for v in versions)
        assert any(s.startswith("CREATE TABLE rpc") for s in ms[0].statements)
        assert not any(s.rstrip().endswith(";") for m in ms for s in m.statements)


# -- ThingsBoard shape ----------------------------------------------------------------------


def test_to_thingsboard_matches_the_guide():
    """The successful-RPC event of the persistent RPC guide, field for field."""
    r = RpcRecord(
        id="bea26301-1aec-11ec-9441-73a37bbb7cd2",
        tenant_id="ab937a40-3f98-11eb-a8d6-f5a87f07d4be",
        device_id="3e46db70-e480-11eb-9d0e-1f8899a6f9b3",
        created_time=1632236465459,
        expiration_time=1632236525354,
        method="rpcCommand",
        params={},
        oneway=False,
        retries=0,
        response={"test": "passed"},
        status=St.SUCCESSFUL,
        additional_info='{"param1":"value1","param2":"value2"}',
    )
    tenant = {"entityType": "TENANT", "id": "ab937a40-3f98-11eb-a8d6-f5a87f07d4be"}
    device = {"entityType": "DEVICE", "id": "3e46db70-e480-11eb-9d0e-1f8899a6f9b3"}
    assert r.to_thingsboard() == {
        "id": {"entityType": "RPC", "id": "bea26301-1aec-11ec-9441-73a37bbb7cd2"},
        "createdTime": 1632236465459,
        "tenantId": tenant,
        "deviceId": device,
        "expirationTime": 1632236525354,
        "request": {
            "id": "bea26301-1aec-11ec-9441-73a37bbb7cd2",
            "tenantId": tenant,
            "deviceId": device,
            "oneway": False,
            "expirationTime": 1632236525354,
            "body": {"method": "rpcCommand", "params": "{}"},
            "persisted": True,
            "retries": 0,
        },
        "response": {"test": "passed"},
        "status": "SUCCESSFUL",
        "additionalInfo": '{"param1":"value1","param2":"value2"}',
    }
    # and it is plain JSON
    assert msgspec.json.decode(msgspec.json.encode(r.to_thingsboard())) == r.to_thingsboard()
    page = Page.build([r], total=11, page_size=10, page=0).to_thingsboard()
    assert (page["totalPages"], page["totalElements"], page["hasNext"]) == (2, 11, True)
    assert page["data"][0]["status"] == "SUCCESSFUL"


# -- group commit ----------------------------------------------------------------------------


async def test_group_commit_batches_concurrent_inserts(gstore, store):
    before = store.stats.transactions

    async def one(i):
        r = rec(i)
        await gstore.insert(r)
        # committed before the await returned: visible to a fresh read
        assert await store.get(r.id, r.tenant_id) == r
        return r

    rows = await asyncio.gather(*(one(i) for i in range(100)))
    assert len({r.id for r in rows}) == 100
    txs = store.stats.transactions - before
    assert gstore.batch_stats.batches == txs
    assert txs <= 10, f"100 concurrent inserts took {txs} transactions"
    assert gstore.batch_stats.largest_batch >= 10
    assert gstore.batch_stats.items == 100


async def test_group_commit_changes_follow_inserts(gstore, store):
    rows = [rec(i) for i in range(30)]

    async def lifecycle(r):
        await gstore.insert(r)
        assert await gstore.change(chg(r, St.QUEUED, St.SENT, attempts=1))
        assert await gstore.change(chg(r, St.SENT, St.DELIVERED))
        ok = await gstore.change(chg(r, St.DELIVERED, St.SUCCESSFUL, response={"id": r.id}))
        stale = await gstore.change(chg(r, St.SENT, St.TIMEOUT))
        return ok, stale

    results = await asyncio.gather(*(lifecycle(r) for r in rows))
    assert results == [(True, False)] * 30
    for r in rows:
        got = await store.get(r.id, r.tenant_id)
        assert (got.status, got.response, got.attempts) == (St.SUCCESSFUL, {"id": r.id}, 1)
    assert gstore.batch_stats.batches <= 5 * 4  # about one batch per step, not one per call
    with pytest.raises(InvalidTransitionError):  # refused at once, never queued
        await gstore.change(chg(rows[0], St.SUCCESSFUL, St.SENT))


async def test_group_commit_duplicate_fails_only_its_caller(gstore, store):
    existing = rec(0)
    await store.insert(existing)
    fresh = [rec(i + 1) for i in range(20)]
    twice = fresh[5]
    batch = fresh[:10] + [existing] + fresh[10:] + [twice]
    out = await asyncio.gather(*(gstore.insert(r) for r in batch), return_exceptions=True)
    errors = [i for i, o in enumerate(out) if o is not None]
    assert errors == [10, len(batch) - 1]
    assert all(isinstance(out[i], DuplicateRpcError) for i in errors)
    assert existing.id in str(out[10])
    for r in fresh:
        assert await store.get(r.id, r.tenant_id) == r
    assert gstore.batch_stats.row_by_row == 0  # reported per row, no retry needed


async def test_group_commit_bad_row_retried_row_by_row(gstore, store):
    rows = [rec(i) for i in range(20)]
    bad = rec(99, created_time=2**70)  # too big for any integer column
    batch = rows[:7] + [bad] + rows[7:]
    out = await asyncio.gather(*(gstore.insert(r) for r in batch), return_exceptions=True)
    assert [type(o) for o in out] == [type(None)] * 7 + [StoreError] + [type(None)] * 13
    assert not isinstance(out[7], StoreUnavailableError)
    for r in rows:
        assert await store.get(r.id, r.tenant_id) == r
    assert await store.get(bad.id, bad.tenant_id) is None
    assert gstore.batch_stats.row_by_row >= 1


async def test_group_commit_unavailable_fails_the_whole_batch(gstore, store, monkeypatch):
    real_write = store.write
    calls = 0

    async def broken(*a, **kw):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StoreUnavailableError("database went away")
        return await real_write(*a, **kw)

    monkeypatch.setattr(store, "write", broken)
    rows = [rec(i) for i in range(10)]
    out = await asyncio.gather(*(gstore.insert(r) for r in rows), return_exceptions=True)
    assert all(isinstance(o, StoreUnavailableError) for o in out)
    assert len({id(o) for o in out}) == 10  # one exception object per caller
    for r in rows:
        assert await store.get(r.id, r.tenant_id) is None  # nothing reported stored, nothing stored
    await gstore.insert(rows[0])  # and the next batch goes through
    assert await store.get(rows[0].id, rows[0].tenant_id) == rows[0]


async def test_group_commit_close_drains_then_refuses(store):
    g = GroupCommitStore(store, max_delay=0.01)
    await g.open()
    rows = [rec(i) for i in range(50)]
    tasks = [asyncio.ensure_future(g.insert(r)) for r in rows]
    await asyncio.sleep(0)  # let them queue
    await g.drain()
    await asyncio.wait(tasks, timeout=10)
    assert all(t.done() and t.exception() is None for t in tasks)
    with pytest.raises(StoreError, match="not open"):
        await g.insert(rec(100))
    assert len(await store.load_unfinished()) == 50


async def test_group_commit_respects_max_batch(store):
    g = GroupCommitStore(store, max_batch=10)
    await g.open()
    try:
        await asyncio.gather(*(g.insert(rec(i)) for i in range(35)))
        assert g.batch_stats.largest_batch == 10
        assert g.batch_stats.batches == 4
    finally:
        await g.drain()


async def test_group_commit_cancelled_caller_still_written(gstore, store):
    """Cancelling a waiting caller does not withdraw its write."""
    r = rec()
    task = asyncio.ensure_future(gstore.insert(r))
    await asyncio.sleep(0)  # queued
    task.cancel()
    await gstore.drain()
    assert task.cancelled()
    assert await store.get(r.id, r.tenant_id) == r


async def test_group_commit_passes_reads_through(gstore):
    r = rec(status=St.SUCCESSFUL)
    await gstore.insert(r)
    assert await gstore.get(r.id, r.tenant_id) == r
    assert (await gstore.list_by_device("dev-1", tenant_id="default")).data == [r]
    assert await gstore.load_unfinished() == []
    assert await gstore.purge_terminal(T0 + 10, "default") == 1
    await gstore.set_tenant_ttl("t", 3)
    assert await gstore.get_tenant_ttl("t") == 3
    assert await gstore.purge_expired(T0, 1) == 0
    assert await gstore.migrate() == []
    assert await gstore.delete(r.id, r.tenant_id) is None


# -- failures and URLs --------------------------------------------------------------------------


async def test_postgres_unreachable_is_store_unavailable():
    s = PostgresStore("postgresql://postgres@127.0.0.1:1/test", connect_timeout=2)
    with pytest.raises(StoreUnavailableError, match=r"PostgreSQL at 127\.0\.0\.1:1/test is unavailable"):
        await s.open()
    with pytest.raises(StoreError, match="not open"):
        await s.get("x", "default")


async def test_sqlite_unopenable_is_store_unavailable(tmp_path):
    s = SqliteStore(str(tmp_path / "no" / "such" / "dir" / "x.db"))
    with pytest.raises(StoreUnavailableError, match="unable to open"):
        await s.open()


async def test_closed_store_raises_store_error(store):
    await store.close()
    with pytest.raises(StoreError, match="not open"):
        await store.get("x", "default")
    with pytest.raises(StoreError, match="not open"):
        await store.insert(rec())


def test_store_urls(tmp_path):
    assert store_from_url("sqlite://:memory:").path == ":memory:"
    assert store_from_url("sqlite://").path == ":memory:"
    assert store_from_url("sqlite:///rel/x.db").path == "rel/x.db"
    assert store_from_url(f"sqlite:///{tmp_path}/x.db").path == f"{tmp_path}/x.db"
    s = store_from_url("sqlite:///x.db?synchronous=normal")
    assert s.db.synchronous == "NORMAL"
    pg = store_from_url("postgresql://u@h:5433/db?schema=fleet&sslmode=disable")
    assert isinstance(pg, PostgresStore) and pg.schema == "fleet"
    assert pg.db.dsn == "postgresql://u@h:5433/db?sslmode=disable"
    assert isinstance(store_from_url("sqlite://:memory:", group_commit=True), GroupCommitStore)
    for bad in ("mysql://x", "sqlite://host/x.db", "sqlite:///x.db?journal=off"):
        with pytest.raises(ValidationError):
            store_from_url(bad)
    with pytest.raises(ValidationError):
        PostgresStore("postgresql://x", schema='a"; DROP')


async def test_open_store_in_memory():
    s = await open_store("sqlite://:memory:", group_commit=True)
    try:
        r = rec()
        await s.insert(r)
        assert await s.get(r.id, r.tenant_id) == r
    finally:
        await s.close()


# -- PostgreSQL restart ----------------------------------------------------------------------------


@pytest.mark.pg
async def test_postgres_fresh_database(fresh_pg_db):
    """No schema given: the tables go to the database's default schema."""
    s = PostgresStore(fresh_pg_db)
    await s.open()
    try:
        assert await s.schema_version() == max(m.version for m in migrations.load("postgresql"))
        r = rec()
        await s.insert(r)
        assert await s.get(r.id, r.tenant_id) == r
    finally:
        await s.close()
    async with PostgresStore(fresh_pg_db) as again:  # reopening migrates nothing
        assert await again.migrate() == []
        assert await again.get(r.id, r.tenant_id) == r


@pytest.mark.pg
async def test_postgres_restart_recovers(pg_server):
    server = pg_server
    schema = f"t_{uuid.uuid4().hex[:16]}"
    store = PostgresStore(server.dsn, schema=schema, min_size=2, max_size=4, connect_timeout=2)
    await store.open()
    group = GroupCommitStore(store)
    await group.open()
    try:
        before = rec(0)
        await group.insert(before)

        await server.stop()
        with pytest.raises(StoreUnavailableError, match="unavailable"):
            await store.get(before.id, before.tenant_id)
        lost = [rec(i + 1) for i in range(5)]
        out = await asyncio.gather(*(group.insert(r) for r in lost), return_exceptions=True)
        assert all(isinstance(o, StoreUnavailableError) for o in out)

        await server.start()
        assert await store.get(before.id, before.tenant_id) == before  # the pool reconnects by itself
        after = rec(10)
        await group.insert(after)
        assert await group.change(chg(after, St.QUEUED, St.SENT))
        assert [r.id for r in await store.load_unfinished()] == [before.id, after.id]
    finally:
        await group.close()


def test_storable_problem_walks_values_as_deep_as_json_nests():
    """The U+0000 walk uses a stack: params nested 900 levels deep (msgspec
    decodes up to about 1,000) ran the recursive walk out of Python's
    recursion, a 500 where a 400 was due."""
    from fleetrpc.store.base import storable_problem

    deep = msgspec.json.decode(b"[" * 900 + b'{"k": "a\\u0000"}' + b"]" * 900)
    assert "U+0000" in storable_problem(deep)
    deep = msgspec.json.decode(b"[" * 900 + b'{"k\\u0000": 1}' + b"]" * 900)
    assert "U+0000" in storable_problem(deep)
    assert storable_problem(msgspec.json.decode(b"[" * 900 + b'"\\\\u0000"' + b"]" * 900)) is None
