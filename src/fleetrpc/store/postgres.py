"""PostgreSQL store over an asyncpg pool.

Writes are set-based: a batch of inserts is one binary ``COPY`` (or, for
small batches and when an id is already taken, one ``INSERT ... SELECT FROM
unnest(...) ON CONFLICT DO NOTHING``), a batch of status changes is one
``UPDATE ... FROM jsonb_array_elements($1)`` per round of distinct ids -- all
inside one transaction.  The group-commit writer's usual batch -- new calls
plus one round of changes to other calls -- is ONE statement instead
(``WITH ins AS (INSERT ... FROM jsonb_to_recordset($1) ...), upd AS (UPDATE
...) SELECT ...``), which commits on its own: one round trip per batch
rather than five (BEGIN, COPY's two, UPDATE, COMMIT).  Under load every
round trip costs a turn of the busy event loop, so this is what bounds the
batch rate.  asyncpg prepares every statement once per connection and keeps
it in its statement cache.

Connection trouble (refused, reset, server shutting down or starting up,
timeouts) becomes :class:`~fleetrpc.errors.StoreUnavailableError`; the pool
then drops its connections and opens fresh ones on the next call, so the
store comes back by itself when the database does.  Reads are retried once
on a fresh connection; writes are not (their outcome may be unknown), the
caller gets the error.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg
import msgspec
from asyncpg.exceptions import (
    InsufficientResourcesError,
    OperatorInterventionError,
    PostgresConnectionError,
    UniqueViolationError,
)

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

__all__ = ["PostgresStore"]

_json_encode = msgspec.json.Encoder().encode

T = TypeVar("T")

# -- SQL ------------------------------------------------------------------------

_COLS = ", ".join(COLUMNS)
_PG_TYPES = {
    "created_time": "bigint",
    "expiration_time": "bigint",
    "updated_time": "bigint",
    "oneway": "boolean",
    "persisted": "boolean",
    "retries": "integer",
    "timeout_ms": "integer",
    "attempts": "integer",
}
# JSON columns travel as text and are cast on the server; no client codec.
_INSERT_UNNEST = (
    f"INSERT INTO rpc ({_COLS}) SELECT "
    + ", ".join(f"u.{c}::jsonb" if c in ("params", "response", "additional_info") else f"u.{c}" for c in COLUMNS)
    + " FROM unnest("
    + ", ".join(f"${i}::{_PG_TYPES.get(c, 'text')}[]" for i, c in enumerate(COLUMNS, 1))
    + f") AS u({_COLS}) ON CONFLICT (id) DO NOTHING RETURNING id"
)
# The round of changes arrives as one jsonb array of arrays (see
# base.change_payload): parsed by the server in C, no per-element work in
# the client.  ``r.id = ANY (ARRAY(...))`` makes the rows to update an index
# lookup whatever the planner thinks of the table: without it, a small or
# fresh table (no statistics yet, a few thousand rows) gets a hash join over
# a sequential scan -- for every single change, ~10x the CPU of the update.
_UPDATE_JSON = """
UPDATE rpc AS r SET
    status = c.status,
    updated_time = c.updated_time,
    attempts = COALESCE(c.attempts, r.attempts),
    response = CASE WHEN c.set_response THEN nullif(c.response, 'null'::jsonb) ELSE r.response END,
    error = CASE WHEN c.set_error THEN c.error ELSE r.error END
FROM (
    SELECT e ->> 0 AS id, e ->> 1 AS expected, e ->> 2 AS status,
           (e ->> 3)::bigint AS updated_time, (e ->> 4)::integer AS attempts,
           (e ->> 5)::boolean AS set_response, e -> 6 AS response,
           (e ->> 7)::boolean AS set_error, e ->> 8 AS error,
           (e ->> 9)::boolean AS oneway_ok, (e ->> 10)::integer AS pos
    FROM jsonb_array_elements($1::text::jsonb) AS e
) AS c
WHERE r.id = ANY (ARRAY(SELECT jsonb_array_elements($1::text::jsonb) ->> 0))
  AND r.id = c.id AND r.status = c.expected AND (c.oneway_ok OR NOT r.oneway)
RETURNING c.pos
"""
# New calls as one JSON array of records (msgspec encodes the RpcRecord
# list in one call; the keys are the column names).  A JSON null becomes
# SQL NULL, as record_row() does.
_INSERT_JSON = (
    f"INSERT INTO rpc ({_COLS}) SELECT {_COLS} FROM jsonb_to_recordset($1::text::jsonb) AS x("
    + ", ".join(f"{c} {'jsonb' if c in ('params', 'response', 'additional_info') else _PG_TYPES.get(c, 'text')}"
                for c in COLUMNS)
    + ") ON CONFLICT (id) DO NOTHING RETURNING id"
)
# Inserts and one round of changes to OTHER rows in one statement: the
# UPDATE does not see the rows the INSERT adds (same snapshot), so the
# caller makes sure no change is for a row inserted here.
_WRITE_JSON = (
    f"WITH ins AS ({_INSERT_JSON}), upd AS ({_UPDATE_JSON.replace('$1::text::jsonb', '$2::text::jsonb')}) "
    "SELECT ins.id, NULL::integer FROM ins UNION ALL SELECT NULL, upd.pos FROM upd"
)
_TERMINAL_SQL = (
    "(status IN ('SUCCESSFUL', 'EXPIRED', 'FAILED', 'DELETED') OR (status = 'DELIVERED' AND oneway))"
)
_UNFINISHED_SQL = "(status IN ('QUEUED', 'SENT', 'TIMEOUT') OR (status = 'DELIVERED' AND NOT oneway))"
_SCHEMA_VERSION_DDL = """
CREATE TABLE IF NOT EXISTS schema_version (
    version      integer PRIMARY KEY,
    name         text    NOT NULL,
    applied_time bigint  NOT NULL
)
"""
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

#: Batches of at least this many new rows go through binary COPY.
COPY_THRESHOLD = 16


def _is_unavailable(e: BaseException) -> bool:
    if isinstance(
        e,
        (
            OSError,
            TimeoutError,
            PostgresConnectionError,  # includes ConnectionDoesNotExistError
            OperatorInterventionError,  # admin/crash shutdown, cannot connect now
            InsufficientResourcesError,  # too many connections, disk full
        ),
    ):
        return True
    # "connection is closed", "the connection was closed in the middle of ..."
    return isinstance(e, asyncpg.InterfaceError) and "closed" in str(e)


class PostgresStore(Store):
    """Persistent-RPC store in PostgreSQL.

    ``schema`` puts the tables in that schema (created if missing) instead of
    the first one on the server's ``search_path``.  The pool opens
    ``min_size`` connections up front and at most ``max_size``.
    """

    backend = "postgresql"

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 8,
        connect_timeout: float = 5.0,
        command_timeout: float | None = 30.0,
        migrate_on_open: bool = True,
        copy_threshold: int = COPY_THRESHOLD,
    ) -> None:
        super().__init__()
        if schema is not None and not _IDENT.match(schema):
            raise ValidationError(f"schema must be a plain SQL identifier, got {schema!r}")
        self.dsn = dsn
        self.schema = schema
        self._min_size = min_size
        self._max_size = max_size
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._migrate_on_open = migrate_on_open
        self._copy_threshold = copy_threshold
        self._pool: asyncpg.Pool | None = None
        self._where = _describe(dsn)

    def __repr__(self) -> str:
        return f"<PostgresStore {self._where}{' schema=' + self.schema if self.schema else ''}>"

    # -- connections ----------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        settings = {"application_name": "fleetrpc"}
        if self.schema:
            settings["search_path"] = self.schema
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
                server_settings=settings,
                reset=_keep_session,
            )
        except Exception as e:
            raise self._translate(e, "connecting") from e
        if self._migrate_on_open:
            try:
                await self.migrate()
            except BaseException:
                await self.close()
                raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.close()
            except Exception:  # closing a pool whose server is gone
                pool.terminate()

    def _translate(self, e: BaseException, doing: str) -> StoreError:
        if _is_unavailable(e):
            return StoreUnavailableError(
                f"PostgreSQL at {self._where} is unavailable ({doing}): {type(e).__name__}: {e}"
            )
        if isinstance(e, UniqueViolationError):
            return DuplicateRpcError(f"PostgreSQL: {e.detail or e}")
        return StoreError(f"PostgreSQL error ({doing}): {type(e).__name__}: {e}")

    @contextlib.asynccontextmanager
    async def _connection(self, doing: str) -> AsyncIterator[asyncpg.Connection]:
        pool = self._pool
        if pool is None:
            raise StoreError("the PostgreSQL store is not open")
        try:
            async with pool.acquire() as conn:
                yield conn
        except FleetRpcError:
            raise
        except Exception as e:
            if _is_unavailable(e):
                # Whatever broke this connection likely broke its siblings:
                # have the pool replace them all on their next acquire.
                await pool.expire_connections()
            raise self._translate(e, doing) from e

    async def _read(self, doing: str, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run a read; once more on a fresh connection if the first died."""
        try:
            async with self._connection(doing) as conn:
                return await fn(conn)
        except StoreUnavailableError:
            async with self._connection(doing) as conn:
                return await fn(conn)

    # -- migrations -----------------------------------------------------------------

    async def migrate(self) -> list[int]:
        done: list[int] = []
        known = migrations.load("postgresql")
        lock_key = f"fleetrpc.migrate.{self.schema or ''}"
        async with self._connection("migrating") as conn:
            for m in known:
                async with conn.transaction():
                    # Serialise migrators (several nodes starting at once).
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", lock_key)
                    if self.schema:
                        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                    await conn.execute(_SCHEMA_VERSION_DDL)
                    applied = {r[0] for r in await conn.fetch("SELECT version FROM schema_version")}
                    newest = max(applied, default=0)
                    if newest > max((m.version for m in known), default=0):
                        raise StoreError(
                            f"the database schema is at version {newest}, newer than this "
                            f"fleetrpc knows ({len(known)}): upgrade fleetrpc"
                        )
                    if m.version in applied:
                        continue
                    for statement in m.statements:
                        await conn.execute(statement)
                    await conn.execute(
                        "INSERT INTO schema_version (version, name, applied_time) "
                        "VALUES ($1, $2, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)",
                        m.version,
                        m.name,
                    )
                    done.append(m.version)
        return done

    async def schema_version(self) -> int:
        async def q(conn: asyncpg.Connection) -> int:
            exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
            if not exists:
                return 0
            return await conn.fetchval("SELECT COALESCE(max(version), 0) FROM schema_version")

        return await self._read("reading the schema version", q)

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
        if first and changes and not atomic:
            result = await self._write_one_statement(inserts, first, keep, changes)
            if result is not None:
                return result
        try:
            rows = [record_row(inserts[i]) for i in first]
        except (TypeError, ValueError) as e:  # msgspec.EncodeError is a ValueError
            raise ValidationError(f"an RPC record has a value that is not JSON: {e}") from e
        change_args = [change_payload(changes, idx).decode() for idx in change_rounds(changes)]

        use_copy = len(rows) >= self._copy_threshold
        while True:
            # A single statement commits on its own: an explicit transaction
            # would only add BEGIN and COMMIT, two more round trips.  (Not
            # for an all-or-nothing INSERT of several rows, which checks for
            # taken ids after the statement.)
            single = len(change_args) + (1 if rows else 0) == 1 and (use_copy or not atomic or len(rows) == 1)
            try:
                async with self._connection("writing") as conn:
                    async with contextlib.nullcontext() if single else conn.transaction():
                        if not rows:
                            new_ids = None
                        elif use_copy:
                            await conn.copy_records_to_table("rpc", records=rows, columns=COLUMNS)
                            new_ids = None  # all of them
                        else:
                            new_ids = {r[0] for r in await conn.fetch(_INSERT_UNNEST, *zip(*rows, strict=True))}
                            if atomic and len(new_ids) < len(rows):
                                taken = sorted(r[0] for r in rows if r[0] not in new_ids)
                                raise DuplicateRpcError(f"RPC already exists: {', '.join(taken)}")
                        applied = [False] * len(changes)
                        for payload in change_args:
                            for rec in await conn.fetch(_UPDATE_JSON, payload):
                                applied[rec[0]] = True
                break
            except DuplicateRpcError:
                # COPY met an id that is taken: redo the transaction with
                # ON CONFLICT DO NOTHING, which tells which ones.
                if use_copy and not atomic:
                    use_copy = False
                    continue
                raise
        self.stats.transactions += 1
        inserted = keep
        if new_ids is not None:
            inserted = [k and inserts[i].id in new_ids for i, k in enumerate(keep)]
        self.stats.rows_inserted += sum(inserted)
        self.stats.rows_changed += sum(applied)
        return WriteResult(inserted=inserted, applied=applied)

    async def _write_one_statement(
        self,
        inserts: Sequence[RpcRecord],
        first: list[int],
        keep: list[bool],
        changes: Sequence[StatusChange],
    ) -> WriteResult | None:
        """New calls and changes to other calls, distinct ids, as one
        statement (one round trip, atomic, commits on its own); None when
        the write does not have that shape."""
        new = inserts if len(first) == len(inserts) else [inserts[i] for i in first]
        new_ids = {r.id for r in new}
        seen: set[str] = set()
        for c in changes:
            if c.id in new_ids or c.id in seen:
                return None  # a row changed twice, or inserted and changed: rounds
            seen.add(c.id)
        try:
            records = _json_encode(new).decode()
        except (TypeError, ValueError) as e:  # msgspec.EncodeError is a ValueError
            raise ValidationError(f"an RPC record has a value that is not JSON: {e}") from e
        payload = change_payload(changes, range(len(changes))).decode()
        async with self._connection("writing") as conn:
            rows = await conn.fetch(_WRITE_JSON, records, payload)
        added: set[str] = set()
        applied = [False] * len(changes)
        for row in rows:
            if row[0] is None:
                applied[row[1]] = True
            else:
                added.add(row[0])
        inserted = [k and inserts[i].id in added for i, k in enumerate(keep)]
        self.stats.transactions += 1
        self.stats.rows_inserted += len(added)
        self.stats.rows_changed += sum(applied)
        return WriteResult(inserted=inserted, applied=applied)

    async def delete(self, rpc_id: str, tenant_id: str | None = None) -> RpcRecord | None:
        sql = f"DELETE FROM rpc WHERE id = $1 {'AND tenant_id = $2' if tenant_id is not None else ''} RETURNING {_COLS}"
        args = (rpc_id,) if tenant_id is None else (rpc_id, tenant_id)
        async with self._connection("deleting") as conn:
            row = await conn.fetchrow(sql, *args)
        self.stats.transactions += 1
        return None if row is None else row_record(row)

    # -- reads ----------------------------------------------------------------------

    async def get(self, rpc_id: str, tenant_id: str | None = None) -> RpcRecord | None:
        sql = f"SELECT {_COLS} FROM rpc WHERE id = $1"
        args: tuple[Any, ...] = (rpc_id,)
        if tenant_id is not None:
            sql += " AND tenant_id = $2"
            args = (rpc_id, tenant_id)
        row = await self._read("reading", lambda conn: conn.fetchrow(sql, *args))
        return None if row is None else row_record(row)

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
            lambda n: f"${n}",
        )
        n = len(args)
        sql = (
            f"SELECT {_COLS} FROM rpc WHERE {cond} ORDER BY {column} {order}, seq {order} "
            f"LIMIT ${n + 1} OFFSET ${n + 2}"
        )

        async def q(conn: asyncpg.Connection) -> tuple[int, list[Any]]:
            total = await conn.fetchval(f"SELECT count(*) FROM rpc WHERE {cond}", *args)
            rows = []
            if total > page * page_size:
                rows = await conn.fetch(sql, *args, page_size, page * page_size)
            return total, rows

        total, rows = await self._read("listing", q)
        return Page.build([row_record(r) for r in rows], total, page_size, page)

    async def load_unfinished(self) -> list[RpcRecord]:
        sql = f"SELECT {_COLS} FROM rpc WHERE {_UNFINISHED_SQL} ORDER BY created_time, seq"
        rows = await self._read("loading unfinished calls", lambda conn: conn.fetch(sql))
        return [row_record(r) for r in rows]

    # -- TTL ------------------------------------------------------------------------

    async def purge_terminal(self, older_than_ms: int, tenant_id: str | None = None) -> int:
        sql = f"DELETE FROM rpc WHERE created_time < $1 AND {_TERMINAL_SQL}"
        args: tuple[Any, ...] = (older_than_ms,)
        if tenant_id is not None:
            sql += " AND tenant_id = $2"
            args += (tenant_id,)
        async with self._connection("purging") as conn:
            tag = await conn.execute(sql, *args)
        self.stats.transactions += 1
        return int(tag.split()[-1])

    async def set_tenant_ttl(self, tenant_id: str, days: int | None) -> None:
        check_ttl_days(days)
        async with self._connection("saving tenant settings") as conn:
            if days is None:
                await conn.execute("DELETE FROM tenant_settings WHERE tenant_id = $1", tenant_id)
            else:
                await conn.execute(
                    "INSERT INTO tenant_settings (tenant_id, rpc_ttl_days) VALUES ($1, $2) "
                    "ON CONFLICT (tenant_id) DO UPDATE SET rpc_ttl_days = excluded.rpc_ttl_days",
                    tenant_id,
                    days,
                )
        self.stats.transactions += 1

    async def get_tenant_ttl(self, tenant_id: str) -> int | None:
        return await self._read(
            "reading tenant settings",
            lambda conn: conn.fetchval(
                "SELECT rpc_ttl_days FROM tenant_settings WHERE tenant_id = $1", tenant_id
            ),
        )

    async def purge_expired(self, now_ms: int, default_days: int | None) -> int:
        check_ttl_days(default_days)
        ttl = "COALESCE((SELECT t.rpc_ttl_days FROM tenant_settings t WHERE t.tenant_id = rpc.tenant_id), $2)"
        sql = (
            f"DELETE FROM rpc WHERE {_TERMINAL_SQL} AND {ttl} > 0 "
            f"AND created_time < $1 - {ttl}::bigint * {DAY_MS}"
        )
        async with self._connection("purging") as conn:
            tag = await conn.execute(sql, now_ms, default_days or 0)
        self.stats.transactions += 1
        return int(tag.split()[-1])


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release.  asyncpg's default sends ``SELECT
    pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` every time
    a connection goes back to the pool: one more round trip per write.  This
    store never leaves session state behind (no session advisory locks,
    cursors, LISTEN or SET; the schema is a startup setting), and asyncpg
    still rolls back an open transaction before calling this."""


def _describe(dsn: str) -> str:
    """host:port/database of a DSN, without credentials, for messages."""
    try:
        from urllib.parse import urlsplit

        u = urlsplit(dsn)
        host = u.hostname or "localhost"
        port = u.port or 5432
        return f"{host}:{port}{u.path or ''}"
    except ValueError:
        return "(unparsable DSN)"
