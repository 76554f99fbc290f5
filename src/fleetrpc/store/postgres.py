"""The persistent-call table on PostgreSQL: the rpc repository over a
:class:`~fleetrpc.store.db.PostgresDatabase`.

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

Connection trouble becomes :class:`~fleetrpc.errors.StoreUnavailableError`
(the database replaces its pool's connections).  Reads are retried once on
a fresh connection; writes are not (their outcome may be unknown), the
caller gets the error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec

from ..errors import AlreadyExistsError, StoreUnavailableError, ValidationError
from ..rpc.status import RpcStatus
from .base import (
    COLUMNS,
    DAY_MS,
    TERMINAL_SQL,
    UNFINISHED_SQL,
    DuplicateRpcError,
    Page,
    RpcRecord,
    StatusChange,
    Store,
    WriteResult,
    change_payload,
    change_rounds,
    check_tenant,
    check_ttl_days,
    dedupe_inserts,
    list_query,
    record_rows,
    row_record,
)
from .db import PostgresDatabase, _PgConn

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
    "timeout_ms": "bigint",  # migration 0004
    "attempts": "integer",
    "lease_until": "bigint",
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
           (e ->> 9)::boolean AS oneway_ok, (e ->> 10)::integer AS pos,
           (e ->> 11)::integer AS fpart, (e ->> 12)::bigint AS fepoch
    FROM jsonb_array_elements($1::text::jsonb) AS e
) AS c
WHERE r.id = ANY (ARRAY(SELECT jsonb_array_elements($1::text::jsonb) ->> 0))
  AND r.id = c.id AND r.status = c.expected AND (c.oneway_ok OR NOT r.oneway)
  AND (c.fepoch IS NULL OR EXISTS (
      SELECT 1 FROM cluster_partition p WHERE p.partition = c.fpart AND p.epoch = c.fepoch FOR SHARE))
RETURNING c.pos
"""
# A fenced change (cluster) applies only while its partition keeps the
# epoch its writer owns it under.  FOR SHARE on the partition row makes a
# concurrent claim (an UPDATE of that row) wait for this write's commit, or
# this write wait for the claim's and then see the new epoch: a node taking
# a partition over never reads a row that its former owner changes after.
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
#: Batches of at least this many new rows go through binary COPY.
COPY_THRESHOLD = 16


class PostgresStore(Store):
    """The persistent-call table in a PostgreSQL database.

    ``PostgresStore(db)`` works on a shared :class:`PostgresDatabase`;
    ``PostgresStore("postgresql://...", schema=..., min_size=..., ...)``
    opens one of its own (closed with the store).
    """

    backend = "postgresql"

    def __init__(
        self,
        db: PostgresDatabase | str,
        *,
        migrate_on_open: bool = True,
        copy_threshold: int = COPY_THRESHOLD,
        **options: Any,
    ) -> None:
        database, owns = self._database(db, PostgresDatabase, migrate_on_open, options)
        super().__init__(database, owns_db=owns)
        self.db: PostgresDatabase
        self._copy_threshold = copy_threshold

    @property
    def schema(self) -> str | None:
        return self.db.schema

    def __repr__(self) -> str:
        return f"<PostgresStore {self.db.where}{' schema=' + self.schema if self.schema else ''}>"

    async def _read(self, fn: Callable[[_PgConn], Awaitable[T]]) -> T:
        """Run a read; once more on a fresh connection if the first died."""
        try:
            async with self.db.connection() as conn:
                return await fn(conn)
        except StoreUnavailableError:
            async with self.db.connection() as conn:
                return await fn(conn)

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
        rows = record_rows(inserts, first)
        change_args = [change_payload(changes, idx).decode() for idx in change_rounds(changes)]

        use_copy = len(rows) >= self._copy_threshold
        while True:
            # A single statement commits on its own: an explicit transaction
            # would only add BEGIN and COMMIT, two more round trips.  (Not
            # for an all-or-nothing INSERT of several rows, which checks for
            # taken ids after the statement.)
            single = len(change_args) + (1 if rows else 0) == 1 and (use_copy or not atomic or len(rows) == 1)
            try:
                async with self.db.connection() if single else self.db.transaction() as conn:
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
                raise
            except AlreadyExistsError as e:
                # COPY met an id that is taken: redo the transaction with
                # ON CONFLICT DO NOTHING, which tells which ones.
                if use_copy and not atomic:
                    use_copy = False
                    continue
                raise DuplicateRpcError(str(e)) from e.__cause__
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
        rows = await self.db.fetch(_WRITE_JSON, records, payload)
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

    # -- reads ----------------------------------------------------------------------

    async def get(self, rpc_id: str, tenant_id: str) -> RpcRecord | None:
        check_tenant(tenant_id)
        sql = f"SELECT {_COLS} FROM rpc WHERE id = $1 AND tenant_id = $2"
        row = await self._read(lambda conn: conn.fetchrow(sql, rpc_id, tenant_id))
        return None if row is None else row_record(row)

    async def list_by_device(
        self,
        device_id: str,
        *,
        tenant_id: str,
        page_size: int = 10,
        page: int = 0,
        status: RpcStatus | str | None = None,
        sort_property: str = "createdTime",
        sort_order: str = "DESC",
        text_search: str | None = None,
    ) -> Page:
        cond, args, column, order = list_query(
            device_id, tenant_id, page_size, page, status, sort_property, sort_order, text_search,
        )
        n = len(args)
        sql = (
            f"SELECT {_COLS} FROM rpc WHERE {cond} ORDER BY {column} {order}, seq {order} "
            f"LIMIT ${n + 1} OFFSET ${n + 2}"
        )

        async def q(conn: _PgConn) -> tuple[int, list[Any]]:
            total = await conn.fetchval(f"SELECT count(*) FROM rpc WHERE {cond}", *args)
            rows = []
            if total > page * page_size:
                rows = await conn.fetch(sql, *args, page_size, page * page_size)
            return total, rows

        total, rows = await self._read(q)
        return Page.build([row_record(r) for r in rows], total, page_size, page)

    async def load_unfinished(self) -> list[RpcRecord]:
        sql = f"SELECT {_COLS} FROM rpc WHERE {UNFINISHED_SQL} ORDER BY created_time, seq"
        rows = await self._read(lambda conn: conn.fetch(sql))
        return [row_record(r) for r in rows]

    async def claim_unfinished(self, node_id: str) -> list[RpcRecord]:
        async with self.db.transaction() as conn:
            await conn.execute(f"UPDATE rpc SET owner_node = $1 WHERE {UNFINISHED_SQL}", node_id)
            rows = await conn.fetch(f"SELECT {_COLS} FROM rpc WHERE {UNFINISHED_SQL} ORDER BY created_time, seq")
        self.stats.transactions += 1
        return [row_record(r) for r in rows]

    async def unfinished_by_ids(self, ids: Sequence[str]) -> list[RpcRecord]:
        """The unfinished calls among ``ids`` (any tenant: the engine's own
        bookkeeping), in creation order."""
        sql = f"SELECT {_COLS} FROM rpc WHERE id = ANY($1::text[]) AND {UNFINISHED_SQL} ORDER BY created_time, seq"
        rows = await self._read(lambda conn: conn.fetch(sql, list(ids)))
        return [row_record(r) for r in rows]

    async def unfinished_count(self, device_id: str) -> int:
        """How many unfinished calls the device has (any tenant; the index
        on (device_id, created_time) finds its rows)."""
        sql = f"SELECT count(*) FROM rpc WHERE device_id = $1 AND {UNFINISHED_SQL}"
        return int(await self._read(lambda conn: conn.fetchval(sql, device_id)))

    async def unfinished_devices(self, created_ms: int | None = None) -> list[tuple[str, str]]:
        """``(id, device_id)`` of the unfinished calls (created at or after
        ``created_ms``: the BRIN index on created_time keeps that a scan of
        the recent pages), in creation order.  Two short columns: a node
        picks the calls of its partitions, then reads those in full."""
        if created_ms is None:
            sql = f"SELECT id, device_id FROM rpc WHERE {UNFINISHED_SQL} ORDER BY created_time, seq"
            rows = await self._read(lambda conn: conn.fetch(sql))
        else:
            sql = (f"SELECT id, device_id FROM rpc WHERE created_time >= $1 AND {UNFINISHED_SQL} "
                   "ORDER BY created_time, seq")
            rows = await self._read(lambda conn: conn.fetch(sql, created_ms))
        return [(r[0], r[1]) for r in rows]

    # -- TTL ------------------------------------------------------------------------

    async def get_tenant_ttl(self, tenant_id: str) -> int | None:
        check_tenant(tenant_id)
        sql = "SELECT rpc_ttl_days FROM tenant_settings WHERE tenant_id = $1"
        return await self._read(lambda conn: conn.fetchval(sql, tenant_id))

    async def purge_expired(self, now_ms: int, default_days: int | None) -> int:
        check_ttl_days(default_days)
        ttl = "COALESCE((SELECT t.rpc_ttl_days FROM tenant_settings t WHERE t.tenant_id = rpc.tenant_id), $2)"
        n = await self.db.execute(
            f"DELETE FROM rpc WHERE {TERMINAL_SQL} AND {ttl} > 0 AND created_time < $1 - {ttl}::bigint * {DAY_MS}",
            now_ms,
            default_days or 0,
        )
        self.stats.transactions += 1
        return n
