"""The Elves tables: app keys and grants (supervisor), task logs (tasklog).

Repositories on the store's ``Database`` API (``execute``, ``executemany``,
``fetch``, ``fetchrow``, ``fetchval``, ``transaction``; ``$n`` placeholders
in both dialects).  Every method that reads or writes a tenant's rows takes
``tenant_id``; the exceptions say so in their name (``*_any_tenant``): the
lookups of an MQTT caller by its secret key or auth id (the key *is* the
credential, and tells the tenant) and of an agent's async result by the
device that sent it, and the retention clean-up.

The tables are migrations 0300-0399 of the store
(``store/migrations/<dialect>/03xx_elves_*.sql``), applied by
``open_database`` with every other part's.
"""

from __future__ import annotations

from typing import Any, Iterable

import msgspec

__all__ = ["AppKey", "TaskRow", "SupervisorRepository", "TaskRepository", "TASK_COLUMNS"]


# -- supervisor ----------------------------------------------------------------


class AppKey(msgspec.Struct, frozen=True):
    """An Elves app of a tenant and its credentials: ``auth_id`` names it
    (public, used in signatures and MQTT topics), ``auth_key`` proves it
    (secret); the processor's callback address is optional."""

    tenant_id: str
    app: str
    auth_id: str
    auth_key: str
    callback_ip: str | None = None
    callback_port: int | None = None
    created_ms: int = 0


_APP_COLUMNS = "tenant_id, app, auth_id, auth_key, callback_ip, callback_port, created_ms"


def _app(row: Any) -> AppKey | None:
    if row is None:
        return None
    return AppKey(row[0], row[1], row[2], row[3], row[4], row[5], row[6])


class SupervisorRepository:
    """``elves_app`` and ``elves_grant``."""

    def __init__(self, db: Any) -> None:
        self.db = db

    async def create_app(self, key: AppKey) -> None:
        """Insert an app key; the store's AlreadyExistsError if the app,
        auth id or key exists."""
        await self.db.execute(
            f"INSERT INTO elves_app ({_APP_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            key.tenant_id, key.app, key.auth_id, key.auth_key, key.callback_ip, key.callback_port, key.created_ms,
        )

    async def delete_app(self, tenant_id: str, app: str) -> bool:
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM elves_grant WHERE tenant_id = $1 AND app = $2", tenant_id, app)
            return await tx.execute("DELETE FROM elves_app WHERE tenant_id = $1 AND app = $2", tenant_id, app) > 0

    async def get_app(self, tenant_id: str, app: str) -> AppKey | None:
        if "\x00" in app:
            return None  # no app name holds NUL (a topic level cannot); PostgreSQL fails the query
        row = await self.db.fetchrow(
            f"SELECT {_APP_COLUMNS} FROM elves_app WHERE tenant_id = $1 AND app = $2", tenant_id, app
        )
        return _app(row)

    async def get_by_auth_id(self, tenant_id: str, auth_id: str) -> AppKey | None:
        row = await self.db.fetchrow(
            f"SELECT {_APP_COLUMNS} FROM elves_app WHERE tenant_id = $1 AND auth_id = $2", tenant_id, auth_id
        )
        return _app(row)

    async def get_by_key(self, tenant_id: str, auth_key: str) -> AppKey | None:
        row = await self.db.fetchrow(
            f"SELECT {_APP_COLUMNS} FROM elves_app WHERE tenant_id = $1 AND auth_key = $2", tenant_id, auth_key
        )
        return _app(row)

    async def find_by_key_any_tenant(self, auth_key: str) -> AppKey | None:
        """The app whose secret key this is, whatever its tenant (the key
        is the credential of an MQTT caller, who has no tenant before it)."""
        row = await self.db.fetchrow(f"SELECT {_APP_COLUMNS} FROM elves_app WHERE auth_key = $1", auth_key)
        return _app(row)

    async def find_by_auth_id_any_tenant(self, auth_id: str) -> AppKey | None:
        """The app of an auth id, whatever its tenant (an MQTT caller under
        ``mqtt_auth = "topic"``, whose topic the broker's ACL vouches for)."""
        row = await self.db.fetchrow(f"SELECT {_APP_COLUMNS} FROM elves_app WHERE auth_id = $1", auth_id)
        return _app(row)

    async def list_apps(self, tenant_id: str) -> list[AppKey]:
        rows = await self.db.fetch(
            f"SELECT {_APP_COLUMNS} FROM elves_app WHERE tenant_id = $1 ORDER BY app", tenant_id
        )
        return [_app(r) for r in rows]

    async def set_key(self, tenant_id: str, app: str, auth_key: str) -> bool:
        n = await self.db.execute(
            "UPDATE elves_app SET auth_key = $3 WHERE tenant_id = $1 AND app = $2", tenant_id, app, auth_key,
        )
        return n > 0

    async def set_callback(self, tenant_id: str, app: str, ip: str | None, port: int | None) -> bool:
        n = await self.db.execute(
            "UPDATE elves_app SET callback_ip = $3, callback_port = $4 WHERE tenant_id = $1 AND app = $2",
            tenant_id, app, ip, port,
        )
        return n > 0

    async def grant(self, tenant_id: str, app: str, kind: str, values: Iterable[str]) -> None:
        await self.db.executemany(
            "INSERT INTO elves_grant (tenant_id, app, kind, value) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (tenant_id, app, kind, value) DO NOTHING",
            [(tenant_id, app, kind, v) for v in values],
        )

    async def revoke(self, tenant_id: str, app: str, kind: str, values: Iterable[str]) -> None:
        await self.db.executemany(
            "DELETE FROM elves_grant WHERE tenant_id = $1 AND app = $2 AND kind = $3 AND value = $4",
            [(tenant_id, app, kind, v) for v in values],
        )

    async def grants(self, tenant_id: str, app: str) -> dict[str, list[str]]:
        rows = await self.db.fetch(
            "SELECT kind, value FROM elves_grant WHERE tenant_id = $1 AND app = $2 ORDER BY kind, value",
            tenant_id, app,
        )
        out: dict[str, list[str]] = {}
        for kind, value in ((r[0], r[1]) for r in rows):
            out.setdefault(kind, []).append(value)
        return out


# -- task log ------------------------------------------------------------------

#: The columns of ``elves_task`` a task's life fills in, besides its id.
TASK_COLUMNS = (
    "tenant_id", "caller", "type", "mode", "agent_ip", "device", "wire_id", "app", "func",
    "instruct", "param", "timeout", "proxy", "starttime",
    "agent_sync_flag", "agent_sync_error", "agent_sync_costtime",
    "agent_callback_time", "worker_flag", "worker_message", "worker_costtime",
    "module_sync_flag", "module_sync_error", "module_sync_costtime", "module_callback_time",
    "processor_message", "processor_costtime", "endtime", "result_flag",
)
_UPDATABLE = frozenset(TASK_COLUMNS[14:])
_SELECT = "id, " + ", ".join(TASK_COLUMNS)


class TaskRow(msgspec.Struct, kw_only=True):
    """One row of the task log; ``None`` is a step not reached yet."""

    id: str
    tenant_id: str
    caller: str
    type: str
    mode: str
    agent_ip: str
    device: str | None
    wire_id: str
    app: str
    func: str
    instruct: str
    param: str
    timeout: int
    proxy: str
    starttime: int
    agent_sync_flag: int | None = None
    agent_sync_error: str | None = None
    agent_sync_costtime: int | None = None
    agent_callback_time: int | None = None
    worker_flag: int | None = None
    worker_message: str | None = None
    worker_costtime: int | None = None
    module_sync_flag: int | None = None
    module_sync_error: str | None = None
    module_sync_costtime: int | None = None
    module_callback_time: int | None = None
    processor_message: str | None = None
    processor_costtime: int | None = None
    endtime: int | None = None
    result_flag: int = 2


def _task(row: Any) -> TaskRow:
    return TaskRow(id=row[0], **{c: row[i + 1] for i, c in enumerate(TASK_COLUMNS)})


class TaskRepository:
    """``elves_task``."""

    def __init__(self, db: Any) -> None:
        self.db = db

    async def insert_many(self, rows: list[TaskRow]) -> None:
        cols = ", ".join(TASK_COLUMNS)
        marks = ", ".join(f"${i}" for i in range(1, len(TASK_COLUMNS) + 2))
        await self.db.executemany(
            f"INSERT INTO elves_task (id, {cols}) VALUES ({marks})",
            [(r.id, *(getattr(r, c) for c in TASK_COLUMNS)) for r in rows],
        )

    async def update_many(self, tenant_id: str, ids: list[str], fields: dict[str, Any]) -> None:
        """Set the same ``fields`` on each of ``ids`` (of the tenant)."""
        await self.update_each(tenant_id, [(i, fields) for i in ids])

    async def update_each(self, tenant_id: str, changes: list[tuple[str, dict[str, Any]]]) -> None:
        """``[(id, {column: value})]``: rows with the same set of columns
        go in one ``executemany``."""
        groups: dict[tuple[str, ...], list[tuple]] = {}
        for task_id, fields in changes:
            bad = set(fields) - _UPDATABLE
            if bad:
                raise ValueError(f"not updatable task columns: {sorted(bad)}")
            names = tuple(sorted(fields))
            groups.setdefault(names, []).append((tenant_id, task_id, *(fields[n] for n in names)))
        for names, args in groups.items():
            sets = ", ".join(f"{n} = ${i + 3}" for i, n in enumerate(names))
            await self.db.executemany(f"UPDATE elves_task SET {sets} WHERE tenant_id = $1 AND id = $2", args)

    async def get_many(self, tenant_id: str, ids: list[str]) -> list[TaskRow]:
        if not ids:
            return []
        marks = ", ".join(f"${i + 2}" for i in range(len(ids)))
        rows = await self.db.fetch(
            f"SELECT {_SELECT} FROM elves_task WHERE tenant_id = $1 AND id IN ({marks})", tenant_id, *ids
        )
        return [_task(r) for r in rows]

    async def find_by_wire_any_tenant(self, device: str, wire_id: str) -> TaskRow | None:
        """The task an agent (``device``, as authenticated by the broker)
        reports on by the id it was sent; the row tells the tenant."""
        row = await self.db.fetchrow(
            f"SELECT {_SELECT} FROM elves_task WHERE device = $1 AND wire_id = $2", device, wire_id
        )
        return None if row is None else _task(row)

    async def purge_any_tenant(self, before_ms: int) -> int:
        """Retention: delete every task started before ``before_ms``."""
        return await self.db.execute("DELETE FROM elves_task WHERE starttime < $1", before_ms)
