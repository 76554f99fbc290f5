"""SQLite store over aiosqlite: the embedded default.

One connection, hence one writer: aiosqlite runs it on its own thread and an
:class:`asyncio.Lock` keeps each transaction whole (another coroutine's
statement never lands inside it, and no read sees uncommitted rows).  The
database file is in WAL mode, so other processes may read while this one
writes.  ``synchronous`` defaults to FULL: a committed batch survives a power
cut, at one fsync per commit -- which group commit amortises.

A batch of inserts is one ``executemany``; a batch of status changes is one
``UPDATE ... FROM json_each(?)`` per round of distinct ids, the whole round
passed as a single JSON parameter (one trip to the worker thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiosqlite

from ..errors import FleetRpcError, StoreError, StoreUnavailableError, ValidationError
from ..rpc.status import RpcStatus
from . import migrations
from .base import (
    COLUMNS,
    DAY_MS,
    DuplicateRpcError,
    Page,
    RpcRecord,
    StatusChange,
    Store,
    WriteResult,
    change_payload,
    change_rounds,
    check_ttl_days,
    dedupe_inserts,
    list_query,
    record_row,
    row_record,
)

__all__ = ["SqliteStore"]

_COLS = ", ".join(COLUMNS)
_INSERT = f"INSERT INTO rpc ({_COLS}) VALUES ({', '.join('?' * len(COLUMNS))})"
# RETURNING may not name the FROM table in SQLite, so the round's ids (distinct
# by construction) tell which changes applied.
_UPDATE_JSON = """
UPDATE rpc SET
    status = c.status,
    updated_time = c.updated_time,
    attempts = COALESCE(c.attempts, rpc.attempts),
    response = CASE WHEN c.set_response THEN nullif(c.response, 'null') ELSE rpc.response END,
    error = CASE WHEN c.set_error THEN c.error ELSE rpc.error END
FROM (
    SELECT value ->> 0 AS id, value ->> 1 AS expected, value ->> 2 AS status,
           value ->> 3 AS updated_time, value ->> 4 AS attempts,
           value ->> 5 AS set_response, value -> 6 AS response,
           value ->> 7 AS set_error, value ->> 8 AS error, value ->> 9 AS oneway_ok
    FROM json_each(?)
) AS c
WHERE rpc.id = c.id AND rpc.status = c.expected AND (c.oneway_ok OR NOT rpc.oneway)
RETURNING rpc.id
"""
_TERMINAL_SQL = (
    "(status IN ('SUCCESSFUL', 'EXPIRED', 'FAILED', 'DELETED') OR (status = 'DELIVERED' AND oneway))"
)
_UNFINISHED_SQL = "(status IN ('QUEUED', 'SENT', 'TIMEOUT') OR (status = 'DELIVERED' AND NOT oneway))"
_SCHEMA_VERSION_DDL = """
CREATE TABLE IF NOT EXISTS schema_version (
    version      INTEGER PRIMARY KEY NOT NULL,
    name         TEXT    NOT NULL,
    applied_time INTEGER NOT NULL
)
"""
# Below SQLite's smallest default limit of host parameters (999).
_MAX_PARAMS = 900
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
_UNAVAILABLE_MESSAGES = (
    "database is locked",
    "unable to open",
    "disk i/o error",
    "database or disk is full",
    "readonly database",
    "database disk image is malformed",
)


class SqliteStore(Store):
    """Persistent-RPC store in one SQLite file (or ``":memory:"``)."""

    backend = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 5000,
        migrate_on_open: bool = True,
    ) -> None:
        super().__init__()
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ValidationError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, got {synchronous!r}")
        self.path = str(path)
        self.synchronous = synchronous.upper()
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._migrate_on_open = migrate_on_open
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path}>"

    # -- connection -----------------------------------------------------------------

    async def open(self) -> None:
        if self._db is not None:
            return
        # isolation_level=None: no implicit transactions, we BEGIN ourselves.
        pending = aiosqlite.connect(self.path, isolation_level=None)
        try:
            db = await pending
        except Exception as e:
            # aiosqlite stops its worker thread without waiting for it; wait
            # here, or the thread reports to an event loop that may be gone.
            thread = getattr(pending, "_thread", None)
            if thread is not None:
                await asyncio.get_running_loop().run_in_executor(None, thread.join, 5)
                await asyncio.sleep(0)
            raise self._translate(e, "opening") from e
        try:
            if self.path != ":memory:":
                await db.execute("PRAGMA journal_mode=WAL")
            await db.execute(f"PRAGMA synchronous={self.synchronous}")
            await db.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
        except Exception as e:
            await db.close()
            raise self._translate(e, "opening") from e
        self._db = db
        if self._migrate_on_open:
            try:
                await self.migrate()
            except BaseException:
                await self.close()
                raise

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            async with self._lock:
                with contextlib.suppress(Exception):
                    await db.close()

    def _translate(self, e: BaseException, doing: str) -> StoreError:
        text = str(e)
        if isinstance(e, sqlite3.IntegrityError) and "UNIQUE" in text and "rpc.id" in text:
            return DuplicateRpcError(f"SQLite: {text}")
        if isinstance(e, (sqlite3.OperationalError, OSError)) and any(
            m in text.lower() for m in _UNAVAILABLE_MESSAGES
        ):
            return StoreUnavailableError(f"SQLite database {self.path} is unavailable ({doing}): {text}")
        return StoreError(f"SQLite error ({doing}): {type(e).__name__}: {text}")

    @contextlib.asynccontextmanager
    async def _tx(self, doing: str, *, write: bool = True) -> AsyncIterator[aiosqlite.Connection]:
        """The connection, alone, inside a transaction when ``write``."""
        db = self._db
        if db is None:
            raise StoreError("the SQLite store is not open")
        async with self._lock:
            try:
                if write:
                    # IMMEDIATE: take the write lock now, not at the first write.
                    await db.execute("BEGIN IMMEDIATE")
                yield db
                if write:
                    await db.execute("COMMIT")
            except BaseException as e:
                if write:
                    with contextlib.suppress(Exception):
                        await db.execute("ROLLBACK")
                if isinstance(e, FleetRpcError) or not isinstance(e, Exception):
                    raise
                raise self._translate(e, doing) from e

    # -- migrations -----------------------------------------------------------------

    async def migrate(self) -> list[int]:
        done: list[int] = []
        known = migrations.load("sqlite")
        for m in known:
            async with self._tx("migrating") as db:
                await db.execute(_SCHEMA_VERSION_DDL)
                applied = {r[0] for r in await db.execute_fetchall("SELECT version FROM schema_version")}
                newest = max(applied, default=0)
                if newest > max((m.version for m in known), default=0):
                    raise StoreError(
                        f"the database schema is at version {newest}, newer than this "
                        f"fleetrpc knows ({len(known)}): upgrade fleetrpc"
                    )
                if m.version in applied:
                    continue
                for statement in m.statements:
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_version (version, name, applied_time) VALUES (?, ?, ?)",
                    (m.version, m.name, int(time.time() * 1000)),
                )
                done.append(m.version)
        return done

    async def schema_version(self) -> int:
        async with self._tx("reading the schema version", write=False) as db:
            rows = await db.execute_fetchall(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
            )
            if not rows:
                return 0
            rows = await db.execute_fetchall("SELECT COALESCE(max(version), 0) FROM schema_version")
            return rows[0][0]

    # -- writes ---------------------------------------------------------------------

    async def write(
        self,
        inserts: Sequence[RpcRecord] = (),
        changes: Sequence[StatusChange] = (),
        *,
        atomic: bool = False,
    ) -> WriteResult:
        for c in changes:
            c.check()
        first, keep = dedupe_inserts(inserts)
        if atomic and len(first) < len(inserts):
            dup = sorted({inserts[i].id for i, k in enumerate(keep) if not k})
            raise DuplicateRpcError(f"RPC id given twice in one insert: {', '.join(dup)}")
        try:
            rows = [record_row(inserts[i]) for i in first]
        except (TypeError, ValueError) as e:
            raise ValidationError(f"an RPC record has a value that is not JSON: {e}") from e
        rounds = change_rounds(changes)
        payloads = [change_payload(changes, idx).decode() for idx in rounds]

        taken: set[str] = set()
        check_first = False
        while True:
            try:
                async with self._tx("writing") as db:
                    if rows and check_first:
                        ids = [r[0] for r in rows]
                        for k in range(0, len(ids), _MAX_PARAMS):
                            chunk = ids[k : k + _MAX_PARAMS]
                            found = await db.execute_fetchall(
                                f"SELECT id FROM rpc WHERE id IN ({', '.join('?' * len(chunk))})", chunk
                            )
                            taken.update(r[0] for r in found)
                        if taken:
                            await db.executemany(_INSERT, [r for r in rows if r[0] not in taken])
                        else:
                            await db.executemany(_INSERT, rows)
                    elif rows:
                        await db.executemany(_INSERT, rows)
                    applied = [False] * len(changes)
                    for idx, payload in zip(rounds, payloads, strict=True):
                        hit = {r[0] for r in await db.execute_fetchall(_UPDATE_JSON, (payload,))}
                        for j in idx:
                            if changes[j].id in hit:
                                applied[j] = True
                break
            except DuplicateRpcError:
                # An id is taken: redo the transaction, skipping taken ids.
                if atomic or check_first:
                    raise
                check_first = True
        self.stats.transactions += 1
        inserted = [k and inserts[i].id not in taken for i, k in enumerate(keep)] if taken else keep
        self.stats.rows_inserted += sum(inserted)
        self.stats.rows_changed += sum(applied)
        return WriteResult(inserted=inserted, applied=applied)

    async def delete(self, rpc_id: str, tenant_id: str | None = None) -> RpcRecord | None:
        sql = "DELETE FROM rpc WHERE id = ?"
        args: tuple[Any, ...] = (rpc_id,)
        if tenant_id is not None:
            sql += " AND tenant_id = ?"
            args += (tenant_id,)
        async with self._tx("deleting") as db:
            rows = await db.execute_fetchall(f"{sql} RETURNING {_COLS}", args)
        self.stats.transactions += 1
        return row_record(rows[0]) if rows else None

    # -- reads ----------------------------------------------------------------------

    async def get(self, rpc_id: str, tenant_id: str | None = None) -> RpcRecord | None:
        sql = f"SELECT {_COLS} FROM rpc WHERE id = ?"
        args: tuple[Any, ...] = (rpc_id,)
        if tenant_id is not None:
            sql += " AND tenant_id = ?"
            args += (tenant_id,)
        async with self._tx("reading", write=False) as db:
            rows = await db.execute_fetchall(sql, args)
        return row_record(rows[0]) if rows else None

    async def list_by_device(
        self,
        device_id: str,
        *,
        tenant_id: str | None = None,
        page_size: int = 10,
        page: int = 0,
        status: RpcStatus | str | None = None,
        sort_property: str = "createdTime",
        sort_order: str = "DESC",
        text_search: str | None = None,
    ) -> Page:
        cond, args, column, order = list_query(
            device_id, tenant_id, page_size, page, status, sort_property, sort_order, text_search,
            lambda n: "?",
        )
        sql = f"SELECT {_COLS} FROM rpc WHERE {cond} ORDER BY {column} {order}, rowid {order} LIMIT ? OFFSET ?"
        async with self._tx("listing", write=False) as db:
            total = (await db.execute_fetchall(f"SELECT count(*) FROM rpc WHERE {cond}", args))[0][0]
            rows = []
            if total > page * page_size:
                rows = await db.execute_fetchall(sql, [*args, page_size, page * page_size])
        return Page.build([row_record(r) for r in rows], total, page_size, page)

    async def load_unfinished(self) -> list[RpcRecord]:
        sql = f"SELECT {_COLS} FROM rpc WHERE {_UNFINISHED_SQL} ORDER BY created_time, rowid"
        async with self._tx("loading unfinished calls", write=False) as db:
            rows = await db.execute_fetchall(sql)
        return [row_record(r) for r in rows]

    # -- TTL ------------------------------------------------------------------------

    async def _delete_count(self, doing: str, sql: str, args: Sequence[Any]) -> int:
        async with self._tx(doing) as db:
            async with db.execute(sql, args) as cur:
                n = cur.rowcount
        self.stats.transactions += 1
        return n

    async def purge_terminal(self, older_than_ms: int, tenant_id: str | None = None) -> int:
        sql = f"DELETE FROM rpc WHERE created_time < ? AND {_TERMINAL_SQL}"
        args: tuple[Any, ...] = (older_than_ms,)
        if tenant_id is not None:
            sql += " AND tenant_id = ?"
            args += (tenant_id,)
        return await self._delete_count("purging", sql, args)

    async def set_tenant_ttl(self, tenant_id: str, days: int | None) -> None:
        check_ttl_days(days)
        async with self._tx("saving tenant settings") as db:
            if days is None:
                await db.execute("DELETE FROM tenant_settings WHERE tenant_id = ?", (tenant_id,))
            else:
                await db.execute(
                    "INSERT INTO tenant_settings (tenant_id, rpc_ttl_days) VALUES (?, ?) "
                    "ON CONFLICT (tenant_id) DO UPDATE SET rpc_ttl_days = excluded.rpc_ttl_days",
                    (tenant_id, days),
                )
        self.stats.transactions += 1

    async def get_tenant_ttl(self, tenant_id: str) -> int | None:
        async with self._tx("reading tenant settings", write=False) as db:
            rows = await db.execute_fetchall(
                "SELECT rpc_ttl_days FROM tenant_settings WHERE tenant_id = ?", (tenant_id,)
            )
        return rows[0][0] if rows else None

    async def purge_expired(self, now_ms: int, default_days: int | None) -> int:
        check_ttl_days(default_days)
        ttl = "COALESCE((SELECT t.rpc_ttl_days FROM tenant_settings t WHERE t.tenant_id = rpc.tenant_id), :d)"
        sql = f"DELETE FROM rpc WHERE {_TERMINAL_SQL} AND {ttl} > 0 AND created_time < :now - {ttl} * {DAY_MS}"
        return await self._delete_count("purging", sql, {"d": default_days or 0, "now": now_ms})
