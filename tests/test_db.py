"""The shared Database API (store/db.py), on SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid

import pytest

from fleetrpc.errors import AlreadyExistsError, StoreError, StoreUnavailableError, ValidationError, ValueRefusedError
from fleetrpc.store import migrations
from fleetrpc.store.db import (
    PostgresDatabase,
    SqliteDatabase,
    database_from_url,
    open_database,
    sqlite_error,
    sqlite_placeholders,
)

from tests.services import drop_pg_schema


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def make_db(request, tmp_path):
    """A factory of Database objects on one test's own database (not opened)."""
    if request.param == "sqlite":
        path = str(tmp_path / "db.sqlite")
        yield lambda **kw: SqliteDatabase(path, **kw)
        return
    dsn = request.getfixturevalue("pg_dsn")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield lambda **kw: PostgresDatabase(dsn, schema=schema, **{"max_size": 4, **kw})
    drop_pg_schema(dsn, schema)


@pytest.fixture
async def db(make_db):
    d = make_db()
    await d.open()
    await d.execute("CREATE TABLE thing (id TEXT PRIMARY KEY, n INTEGER NOT NULL CHECK (n >= 0), note TEXT)")
    yield d
    await d.close()


# -- queries ----------------------------------------------------------------------------


async def test_execute_fetch_and_rows_by_index_and_name(db):
    assert await db.execute("INSERT INTO thing (id, n, note) VALUES ($1, $2, $3)", "a", 1, "x") == 1
    await db.executemany("INSERT INTO thing (id, n) VALUES ($1, $2)", [("b", 2), ("c", 3)])
    rows = await db.fetch("SELECT id, n FROM thing WHERE n >= $1 ORDER BY id", 2)
    assert [(r[0], r["n"]) for r in rows] == [("b", 2), ("c", 3)]
    row = await db.fetchrow("SELECT id, note FROM thing WHERE id = $1", "a")
    assert row["id"] == "a" and row[1] == "x"
    assert await db.fetchrow("SELECT id FROM thing WHERE id = $1", "zz") is None
    assert await db.fetchval("SELECT n FROM thing WHERE id = $1", "c") == 3
    assert await db.fetchval("SELECT n FROM thing WHERE id = $1", "zz") is None
    # A parameter used twice, and rows affected by an UPDATE / DELETE.
    assert await db.execute("UPDATE thing SET n = n + $1 WHERE n < $1 + 1", 1) == 1
    assert await db.execute("DELETE FROM thing WHERE id IN ($1, $2)", "b", "c") == 2
    assert await db.execute("DELETE FROM thing WHERE id = $1", "none") == 0


async def test_transaction_commits_together_or_not_at_all(db):
    async with db.transaction() as conn:
        await conn.execute("INSERT INTO thing (id, n) VALUES ($1, $2)", "a", 1)
        assert await conn.fetchval("SELECT count(*) FROM thing") == 1
        await conn.executemany("INSERT INTO thing (id, n) VALUES ($1, $2)", [("b", 2)])
        assert [r[0] for r in await conn.fetch("SELECT id FROM thing ORDER BY id")] == ["a", "b"]
        assert (await conn.fetchrow("SELECT n FROM thing WHERE id = $1", "b"))["n"] == 2
    assert await db.fetchval("SELECT count(*) FROM thing") == 2

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO thing (id, n) VALUES ($1, $2)", "c", 3)
            raise Boom
    with pytest.raises(AlreadyExistsError):
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO thing (id, n) VALUES ($1, $2)", "d", 4)
            await conn.execute("INSERT INTO thing (id, n) VALUES ($1, $2)", "a", 5)
    assert [r[0] for r in await db.fetch("SELECT id FROM thing ORDER BY id")] == ["a", "b"]


async def test_concurrent_transactions_stay_whole(db):
    async def move(i):
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO thing (id, n) VALUES ($1, $2)", f"t{i}", i)
            await asyncio.sleep(0)
            await conn.execute("UPDATE thing SET note = $1 WHERE id = $2", "done", f"t{i}")

    await asyncio.gather(*(move(i) for i in range(20)))
    assert await db.fetchval("SELECT count(*) FROM thing WHERE note = $1", "done") == 20


async def test_a_transaction_cancelled_while_it_begins_leaves_none_open(db):
    # The job engine cancels its flusher at the end of a run: a cancel that
    # lands while BEGIN is awaited must not leave the transaction open.
    async def write():
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO thing (id, n) VALUES ($1, $2)", "lost", 1)

    for _ in range(3):
        task = asyncio.ensure_future(write())
        await asyncio.sleep(0)  # the task is now awaiting its BEGIN
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    async with db.transaction() as conn:
        await conn.execute("INSERT INTO thing (id, n) VALUES ($1, $2)", "kept", 1)
    assert [r[0] for r in await db.fetch("SELECT id FROM thing")] == ["kept"]


async def test_dollar_inside_quotes_is_not_a_placeholder(db):
    await db.execute("INSERT INTO thing (id, n, note) VALUES ($1, $2, 'costs $1')", "a", 1)
    assert await db.fetchval("SELECT note FROM thing WHERE id = $1", "a") == "costs $1"


def test_sqlite_placeholders():
    assert sqlite_placeholders("SELECT $1, $12 WHERE a = $1") == "SELECT ?1, ?12 WHERE a = ?1"
    assert sqlite_placeholders("SELECT '$1', \"$2\", 'it''s $3', $4") == "SELECT '$1', \"$2\", 'it''s $3', ?4"


# -- errors -----------------------------------------------------------------------------


async def test_unique_violation_is_already_exists(db):
    await db.execute("INSERT INTO thing (id, n) VALUES ($1, $2)", "a", 1)
    with pytest.raises(AlreadyExistsError) as info:
        await db.execute("INSERT INTO thing (id, n) VALUES ($1, $2)", "a", 2)
    assert info.value.__cause__ is not None  # the driver's exception is kept
    with pytest.raises(AlreadyExistsError):
        await db.executemany("INSERT INTO thing (id, n) VALUES ($1, $2)", [("x", 1), ("x", 1)])
    assert await db.fetchval("SELECT count(*) FROM thing") == 1


async def test_refused_values_are_plain_store_errors(db):
    # A CHECK violation and a syntax error: retrying cannot help, so neither
    # is "unavailable" nor "already exists".
    for sql, args in (
        ("INSERT INTO thing (id, n) VALUES ($1, $2)", ("a", -1)),
        ("SELEKT 1", ()),
        ("SELECT * FROM no_such_table", ()),
    ):
        with pytest.raises(StoreError) as info:
            await db.execute(sql, *args)
        assert type(info.value) is StoreError, info.value


@pytest.mark.pg
async def test_postgres_refuses_nul_in_jsonb_as_store_error(pg_dsn):
    db = PostgresDatabase(pg_dsn, migrate=False)
    await db.open()
    try:
        # Bad input, not a failing database: a ValidationError too (the API
        # answers 400; an Elves app name and a device-name lookup with NUL
        # were 500s), and no StoreUnavailableError (the batching store
        # fails the one call instead of retrying it).
        with pytest.raises(ValueRefusedError) as info:
            await db.fetchval("SELECT $1::text::jsonb", '{"a": "x\\u0000y"}')
        assert isinstance(info.value, ValidationError) and not isinstance(info.value, StoreUnavailableError)
        assert "22P05" in str(info.value)  # untranslatable_character
        with pytest.raises(ValueRefusedError, match="22021"):  # character_not_in_repertoire: NUL in text
            await db.fetchval("SELECT $1::text", "a\x00b")
        # The pool is still usable afterwards.
        assert await db.fetchval("SELECT 1") == 1
    finally:
        await db.close()


@pytest.mark.pg
async def test_a_pool_with_every_connection_taken_answers_unavailable_in_bounded_time(pg_dsn):
    """No request waits forever for a pooled connection: as long as a
    statement may take, then StoreUnavailableError (the API's 503)."""
    db = PostgresDatabase(pg_dsn, migrate=False, min_size=1, max_size=1, command_timeout=0.3)
    await db.open()
    try:
        async with db.connection():
            with pytest.raises(StoreUnavailableError, match="no pooled connection within 0.3 s"):
                await db.fetchval("SELECT 1")
        assert await db.fetchval("SELECT 1") == 1  # free again: served
    finally:
        await db.close()


def test_sqlite_errors_are_classified_by_code_not_by_text():
    def err(cls, text, code, name):
        e = cls(text)
        e.sqlite_errorcode = code
        e.sqlite_errorname = name
        return e

    busy = err(sqlite3.OperationalError, "Datenbank ist gesperrt", sqlite3.SQLITE_BUSY, "SQLITE_BUSY")
    assert type(sqlite_error(busy, "x", "f.db")) is StoreUnavailableError
    ioerr = err(sqlite3.OperationalError, "?", sqlite3.SQLITE_IOERR_WRITE, "SQLITE_IOERR_WRITE")
    assert type(sqlite_error(ioerr, "x", "f.db")) is StoreUnavailableError
    uniq = err(sqlite3.IntegrityError, "?", sqlite3.SQLITE_CONSTRAINT_UNIQUE, "SQLITE_CONSTRAINT_UNIQUE")
    assert type(sqlite_error(uniq, "x", "f.db")) is AlreadyExistsError
    check = err(sqlite3.IntegrityError, "UNIQUE", sqlite3.SQLITE_CONSTRAINT_CHECK, "SQLITE_CONSTRAINT_CHECK")
    assert type(sqlite_error(check, "x", "f.db")) is StoreError
    # The English words alone mean nothing.
    assert type(sqlite_error(sqlite3.OperationalError("database is locked"), "x", "f.db")) is StoreError


async def test_sqlite_busy_is_unavailable(tmp_path):
    path = str(tmp_path / "busy.db")
    db = SqliteDatabase(path, busy_timeout_ms=50)
    await db.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(StoreUnavailableError, match="SQLITE_BUSY"):
            async with db.transaction() as conn:
                await conn.execute("SELECT 1")
        other.execute("ROLLBACK")
        async with db.transaction() as conn:  # and it comes back
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        other.close()
        await db.close()


async def test_unreachable_databases_are_unavailable(tmp_path):
    with pytest.raises(StoreUnavailableError):
        await open_database(f"sqlite:///{tmp_path}/no/such/dir/x.db")
    with pytest.raises(StoreUnavailableError):
        await open_database("postgresql://nobody@127.0.0.1:1/none", connect_timeout=2)


async def test_closed_database_raises_store_error(make_db):
    d = make_db()
    with pytest.raises(StoreError, match="not open"):
        await d.fetch("SELECT 1")
    await d.open()
    await d.close()
    await d.close()  # idempotent
    with pytest.raises(StoreError, match="not open"):
        await d.execute("SELECT 1")


async def test_sqlite_statement_on_db_inside_its_transaction_is_an_error_not_a_hang(tmp_path):
    db = await open_database(f"sqlite:///{tmp_path}/x.db")
    try:
        with pytest.raises(StoreError, match="transaction's conn"):
            async with db.transaction():
                await db.fetchval("SELECT 1")
    finally:
        await db.close()


# -- migrations -------------------------------------------------------------------------


async def test_open_applies_every_migration_once(make_db):
    known = [m.version for m in migrations.load(make_db().dialect)]
    d = make_db()
    await d.open()
    try:
        assert await d.applied_migrations() == known
        assert await d.schema_version() == known[-1]
        assert await d.migrate() == []  # idempotent
    finally:
        await d.close()
    d = make_db()  # reopening applies nothing
    await d.open()
    try:
        assert await d.applied_migrations() == known
    finally:
        await d.close()


@pytest.mark.pg
async def test_a_mixed_case_schema_holds_the_tables(pg_dsn):
    """The schema is created quoted; the connections' search_path must
    name it quoted too, or PostgreSQL folds it to lower case and the first
    migration finds no schema to create its tables in."""
    schema = f"Mixed_{uuid.uuid4().hex[:12]}"
    d = PostgresDatabase(pg_dsn, schema=schema, max_size=2)
    try:
        await d.open()
        try:
            assert await d.applied_migrations() == [m.version for m in migrations.load("postgresql")]
            assert await d.fetchval("SELECT current_schema()") == schema
            assert await d.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = $1", schema) > 10
        finally:
            await d.close()
    finally:
        drop_pg_schema(pg_dsn, schema)


async def test_empty_database_has_version_zero(make_db):
    d = make_db(migrate=False)
    await d.open()
    try:
        assert await d.schema_version() == 0
        assert await d.applied_migrations() == []
        assert len(await d.migrate()) == len(migrations.load(d.dialect))
    finally:
        await d.close()


async def test_concurrent_migrators(make_db):
    dbs = [make_db(migrate=False) for _ in range(3)]
    for d in dbs:
        await d.open()
    try:
        done = await asyncio.gather(*(d.migrate() for d in dbs))
        assert sorted(v for vs in done for v in vs) == [m.version for m in migrations.load(dbs[0].dialect)]
    finally:
        for d in dbs:
            await d.close()


async def test_a_migration_this_version_does_not_know_is_refused(make_db):
    d = make_db()
    await d.open()
    await d.execute("INSERT INTO schema_version (version, name, applied_time) VALUES (99999, 'future', 0)")
    await d.close()
    with pytest.raises(StoreError, match=r"\[99999\].*upgrade fleetrpc"):
        await make_db().open()


# -- URLs ------------------------------------------------------------------------------


def test_database_urls(tmp_path):
    assert database_from_url("sqlite://:memory:").path == ":memory:"
    assert database_from_url("sqlite://").path == ":memory:"
    assert database_from_url("sqlite:///rel/x.db").path == "rel/x.db"
    d = database_from_url("sqlite:////abs/x.db?synchronous=normal&busy_timeout_ms=7")
    assert (d.path, d.synchronous, d.busy_timeout_ms, d.dialect) == ("/abs/x.db", "NORMAL", 7, "sqlite")
    p = database_from_url("postgresql://u:secret@h:5433/db?schema=s1&sslmode=disable")
    assert (p.schema, p.dialect, p.where) == ("s1", "postgresql", "h:5433/db")
    assert "schema" not in p.dsn and "sslmode=disable" in p.dsn
    assert "secret" not in repr(p)
    for bad in ("mysql://x", "sqlite://host/x.db", "sqlite:///x.db?bogus=1", "sqlite:///x.db?busy_timeout_ms=x",
                "postgresql://h/db?schema=a;drop", "sqlite:///x.db?synchronous=sometimes"):
        with pytest.raises(ValidationError):
            database_from_url(bad)
