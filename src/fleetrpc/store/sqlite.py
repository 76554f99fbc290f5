"""The persistent-call table on SQLite: the rpc repository over a
:class:`~fleetrpc.store.db.SqliteDatabase`.

The database has one connection, hence one writer: its lock keeps each
transaction whole.  A batch of inserts is one ``executemany``; a batch of
status changes is one ``UPDATE ... FROM json_each($1)`` per round of
distinct ids, the whole round passed as a single JSON parameter (one trip
to the worker thread).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import AlreadyExistsError
from ..rpc.status import RpcStatus
from .base import (
    COLUMNS,
    DAY_MS,
    UNFINISHED_SQL,
    TERMINAL_SQL,
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
from .db import SqliteDatabase

__all__ = ["SqliteStore"]

_COLS = ", ".join(COLUMNS)
_INSERT = f"INSERT INTO rpc ({_COLS}) VALUES ({', '.join(f'${i}' for i in range(1, len(COLUMNS) + 1))})"
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
    FROM json_each($1)
) AS c
WHERE rpc.id = c.id AND rpc.status = c.expected AND (c.oneway_ok OR NOT rpc.oneway)
RETURNING rpc.id
"""
# Below SQLite's smallest default limit of host parameters (999).
_MAX_PARAMS = 900


class SqliteStore(Store):
    """The persistent-call table in a SQLite database.

    ``SqliteStore(db)`` works on a shared :class:`SqliteDatabase`;
    ``SqliteStore("path.db", synchronous=..., busy_timeout_ms=...)`` opens
    one of its own (closed with the store).
    """

    backend = "sqlite"

    def __init__(self, db: SqliteDatabase | str, *, migrate_on_open: bool = True, **options: Any) -> None:
        database, owns = self._database(db, SqliteDatabase, migrate_on_open, options)
        super().__init__(database, owns_db=owns)
        self.db: SqliteDatabase

    @property
    def path(self) -> str:
        return self.db.path

    def __repr__(self) -> str:
        return f"<SqliteStore {self.db.path}>"

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
        rows = record_rows(inserts, first)
        rounds = change_rounds(changes)
        payloads = [change_payload(changes, idx).decode() for idx in rounds]

        taken: set[str] = set()
        check_first = False
        while True:
            try:
                async with self.db.transaction() as conn:
                    if rows and check_first:
                        ids = [r[0] for r in rows]
                        for k in range(0, len(ids), _MAX_PARAMS):
                            chunk = ids[k : k + _MAX_PARAMS]
                            marks = ", ".join(f"${i}" for i in range(1, len(chunk) + 1))
                            found = await conn.fetch(f"SELECT id FROM rpc WHERE id IN ({marks})", *chunk)
                            taken.update(r[0] for r in found)
                        await conn.executemany(_INSERT, [r for r in rows if r[0] not in taken] if taken else rows)
                    elif rows:
                        await conn.executemany(_INSERT, rows)
                    applied = [False] * len(changes)
                    for idx, payload in zip(rounds, payloads, strict=True):
                        hit = {r[0] for r in await conn.fetch(_UPDATE_JSON, payload)}
                        for j in idx:
                            if changes[j].id in hit:
                                applied[j] = True
                break
            except AlreadyExistsError as e:
                # An id is taken: redo the transaction, skipping taken ids.
                if atomic or check_first:
                    raise DuplicateRpcError(str(e)) from e.__cause__
                check_first = True
        self.stats.transactions += 1
        inserted = [k and inserts[i].id not in taken for i, k in enumerate(keep)] if taken else keep
        self.stats.rows_inserted += sum(inserted)
        self.stats.rows_changed += sum(applied)
        return WriteResult(inserted=inserted, applied=applied)

    # -- reads ----------------------------------------------------------------------

    async def get(self, rpc_id: str, tenant_id: str) -> RpcRecord | None:
        check_tenant(tenant_id)
        row = await self.db.fetchrow(f"SELECT {_COLS} FROM rpc WHERE id = $1 AND tenant_id = $2", rpc_id, tenant_id)
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
        sql = (f"SELECT {_COLS} FROM rpc WHERE {cond} ORDER BY {column} {order}, rowid {order} "
               f"LIMIT ${n + 1} OFFSET ${n + 2}")
        async with self.db.locked() as conn:  # both queries see the same rows
            total = await conn.fetchval(f"SELECT count(*) FROM rpc WHERE {cond}", *args)
            rows = []
            if total > page * page_size:
                rows = await conn.fetch(sql, *args, page_size, page * page_size)
        return Page.build([row_record(r) for r in rows], total, page_size, page)

    async def load_unfinished(self) -> list[RpcRecord]:
        rows = await self.db.fetch(f"SELECT {_COLS} FROM rpc WHERE {UNFINISHED_SQL} ORDER BY created_time, rowid")
        return [row_record(r) for r in rows]

    async def claim_unfinished(self, node_id: str) -> list[RpcRecord]:
        async with self.db.transaction() as conn:
            await conn.execute(f"UPDATE rpc SET owner_node = $1 WHERE {UNFINISHED_SQL}", node_id)
            rows = await conn.fetch(f"SELECT {_COLS} FROM rpc WHERE {UNFINISHED_SQL} ORDER BY created_time, rowid")
        self.stats.transactions += 1
        return [row_record(r) for r in rows]

    # -- TTL ------------------------------------------------------------------------

    async def get_tenant_ttl(self, tenant_id: str) -> int | None:
        check_tenant(tenant_id)
        return await self.db.fetchval("SELECT rpc_ttl_days FROM tenant_settings WHERE tenant_id = $1", tenant_id)

    async def purge_expired(self, now_ms: int, default_days: int | None) -> int:
        check_ttl_days(default_days)
        ttl = "COALESCE((SELECT t.rpc_ttl_days FROM tenant_settings t WHERE t.tenant_id = rpc.tenant_id), $1)"
        n = await self.db.execute(
            f"DELETE FROM rpc WHERE {TERMINAL_SQL} AND {ttl} > 0 AND created_time < $2 - {ttl} * {DAY_MS}",
            default_days or 0,
            now_ms,
        )
        self.stats.transactions += 1
        return n
