"""A stand-in for the store's ``Database`` (SQLite, the brief's API) until
the store branch's ``open_database`` is merged: the Elves repositories are
written against that API and tested through this."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from typing import Any

import aiosqlite

from fleetrpc.errors import StoreError

_PLACEHOLDER = re.compile(r"\$(\d+)")


def _sql(sql: str) -> str:
    return _PLACEHOLDER.sub(r"?\1", sql)


class _Ops:
    _db: aiosqlite.Connection

    async def execute(self, sql: str, *args: Any) -> int:
        try:
            cur = await self._db.execute(_sql(sql), args)
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc
        await self._commit()
        return cur.rowcount

    async def executemany(self, sql: str, args_iterable) -> None:
        try:
            await self._db.executemany(_sql(sql), list(args_iterable))
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc
        await self._commit()

    async def fetch(self, sql: str, *args: Any) -> list:
        async with self._db.execute(_sql(sql), args) as cur:
            return list(await cur.fetchall())

    async def fetchrow(self, sql: str, *args: Any):
        async with self._db.execute(_sql(sql), args) as cur:
            return await cur.fetchone()

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else row[0]

    async def _commit(self) -> None:
        pass


class _Tx(_Ops):
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db


class SqliteDatabase(_Ops):
    dialect = "sqlite"

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._db.row_factory = sqlite3.Row

    async def _commit(self) -> None:
        await self._db.commit()

    @contextlib.asynccontextmanager
    async def transaction(self):
        try:
            yield _Tx(self._db)
        except BaseException:
            await self._db.rollback()
            raise
        await self._db.commit()

    async def close(self) -> None:
        await self._db.close()


async def open_test_database(path: str = ":memory:") -> SqliteDatabase:
    return SqliteDatabase(await aiosqlite.connect(path))
