"""A job's targets in the server: devices of the registry, by selector.

:class:`RegistryTargets` pages through the ``device`` table (migration 0100)
in id order after a cursor, filtered by the job's selector and, for a
customer user's job, by its customer.  :class:`JobTargets` is what the
server hands the job engine and the REST API: it builds a job's source and
checks, before a job is stored, that its creator may reach what it names.

A ``deviceIds`` list (up to 100,000 ids) is never bound into one query: it
is sorted here and looked up :data:`ID_CHUNK` ids at a time, the keyset
cursor a bisection in the sorted list.  With the whole list in every query,
PostgreSQL refused a list over 32,767 ids (asyncpg's limit on arguments),
and SQLite took 16 s to prepare each of the three statements of a
100,000-id job, then bound all 100,000 ids for every page of 1000.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

from ..errors import ValidationError
from ..store.db import placeholders
from .model import Job, Targets
from .targets import TargetSource

__all__ = ["RegistryTargets", "JobTargets", "ID_CHUNK"]


#: Ids bound into one query (a ``deviceIds`` chunk).
ID_CHUNK = 1000


def _like(pattern: str) -> str:
    """``*`` is the wildcard; SQL's own wildcards are matched literally
    (PostgreSQL's LIKE: case-sensitive on the ``C``-collated name)."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


def _glob(pattern: str) -> str:
    """The same pattern for SQLite's GLOB (case-sensitive, where its LIKE
    is not): ``*`` stays the wildcard, ``?`` and ``[`` match themselves."""
    return pattern.replace("[", "[[]").replace("?", "[?]")


class RegistryTargets:
    """The devices a selector matches in one tenant (and customer), in
    device-id order.  A name pattern, like the other selectors, matches
    names exactly as stored: case-sensitive on both databases."""

    def __init__(self, db: Any, tenant_id: str, targets: Targets, customer_id: str | None = None) -> None:
        self.db = db
        where = ["tenant_id = $1"]
        args: list[Any] = [tenant_id]

        def add(cond: str, value: Any) -> None:
            args.append(value)
            where.append(cond.replace("?", f"${len(args)}"))

        kind, value = targets.selector()
        #: deviceIds: the ids asked for, in device-id order (Python's str
        #: order is the tables' byte order: SQLite's BINARY, PostgreSQL's "C").
        self._ids: list[str] | None = sorted(set(value)) if kind == "deviceIds" else None
        if kind == "deviceType":
            add("type = ?", value)
        elif kind == "label":
            add("label = ?", value)
        elif kind == "namePattern":
            if db.dialect == "sqlite":
                add("name GLOB ?", _glob(value))
            else:
                add("name LIKE ? ESCAPE '\\'", _like(value))
        elif kind == "customerId":
            add("customer_id = ?", value)
        if customer_id is not None:
            add("customer_id = ?", customer_id)
        self._where = " AND ".join(where)
        self._args = args

    async def _known(self, chunk: list[str]) -> list[str]:
        """Those of ``chunk`` that the selector's tenant (and customer) has."""
        n = len(self._args)
        rows = await self.db.fetch(
            f"SELECT id FROM device WHERE {self._where} AND id IN ({placeholders(n + 1, len(chunk))})",
            *self._args, *chunk,
        )
        return [r[0] for r in rows]

    async def count(self) -> int:
        if self._ids is None:
            return int(await self.db.fetchval(f"SELECT count(*) FROM device WHERE {self._where}", *self._args))
        total = 0
        for start in range(0, len(self._ids), ID_CHUNK):
            total += len(await self._known(self._ids[start:start + ID_CHUNK]))
        return total

    async def page(self, after: str | None, limit: int) -> list[str]:
        if self._ids is not None:
            ids = self._ids
            start = 0 if after is None else bisect_right(ids, after)
            found: list[str] = []
            while len(found) < limit and start < len(ids):
                chunk = ids[start:start + ID_CHUNK]
                start += len(chunk)
                found += sorted(await self._known(chunk))
            return found[:limit]
        args = list(self._args)
        cond = self._where
        if after is not None:
            args.append(after)
            cond += f" AND id > ${len(args)}"
        args.append(limit)
        rows = await self.db.fetch(
            f"SELECT id FROM device WHERE {cond} ORDER BY id LIMIT ${len(args)}", *args
        )
        return [r[0] for r in rows]


class JobTargets:
    """The server's target resolver for the job engine and the REST API."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def __call__(self, job: Job) -> TargetSource:
        return RegistryTargets(self.db, job.tenant_id, job.spec.targets, job.customer_id)

    async def check_access(self, tenant_id: str, customer_id: str | None, targets: Targets) -> None:
        """Raise ValidationError for device ids or a customer id the tenant does not have,
        PermissionError when a customer user names what is not its own."""
        kind, value = targets.selector()
        if customer_id is not None and kind == "customerId" and value != customer_id:
            raise PermissionError("You don't have permission to perform this operation!")
        if kind == "customerId" and await self.db.fetchval(
                "SELECT 1 FROM customer WHERE id = $1 AND tenant_id = $2", value, tenant_id) is None:
            # as an unknown device id: a job that could only ever reach nothing
            # (another tenant's customer is unknown here, in the same words)
            raise ValidationError(f"unknown customer id: {value}")
        if kind != "deviceIds":
            return
        found: dict[str, str] = {}
        ids = list(dict.fromkeys(value))
        for start in range(0, len(ids), ID_CHUNK):
            chunk = ids[start:start + ID_CHUNK]
            rows = await self.db.fetch(
                f"SELECT id, customer_id FROM device WHERE tenant_id = $1 AND id IN ({placeholders(2, len(chunk))})",
                tenant_id, *chunk,
            )
            found.update((r[0], r[1]) for r in rows)
        missing = [d for d in ids if d not in found]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ValidationError(f"unknown device ids: {shown}")
        if customer_id is not None and any(c != customer_id for c in found.values()):
            raise PermissionError("You don't have permission to perform this operation!")

