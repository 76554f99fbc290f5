"""The shared database: one per server, its connection(s) and its migrations.

Every repository (persistent calls, devices, tenants, jobs, ...) is a class
that takes a :class:`Database` and speaks SQL through five methods::

    db = await open_database("sqlite:///fleetrpc.db")   # connects, migrates
    n = await db.execute("UPDATE device SET name = $1 WHERE id = $2", name, id)
    rows = await db.fetch("SELECT id, name FROM device WHERE tenant_id = $1", t)
    rows[0][0] == rows[0]["id"]
    async with db.transaction() as conn:                 # same five methods
        await conn.execute(...)
        await conn.fetchval(...)
    await db.close()

SQL uses ``$1, $2, ...`` placeholders for both dialects (``db.dialect`` is
``"sqlite"`` or ``"postgresql"``); on SQLite they become ``?1, ?2`` (same
numbering, a parameter may be used twice).  Write SQL both dialects accept,
or branch on ``db.dialect`` where they differ (``jsonb`` vs ``TEXT``).

Errors: every driver error becomes a :mod:`fleetrpc.errors` exception, the
driver's own kept as ``__cause__``:

- :class:`~fleetrpc.errors.AlreadyExistsError` for a unique or primary-key
  violation;
- :class:`~fleetrpc.errors.StoreUnavailableError` when trying again later
  may succeed: the database cannot be reached, is busy or locked, is out of
  space, or a transaction was rolled back by a conflict;
- :class:`~fleetrpc.errors.StoreError` for anything else -- in particular a
  value the database refuses (PostgreSQL rejects ``\\u0000`` in text and
  jsonb): writing the same thing again would fail again.

SQLite errors are classified by their error code (``sqlite_errorcode`` /
``sqlite_errorname``), never by their English message.

URLs (:func:`open_database`)::

    sqlite:///relative/path.db   sqlite:////absolute/path.db   sqlite://:memory:
    sqlite:///x.db?synchronous=NORMAL&busy_timeout_ms=5000
    postgresql://user:pw@host:5432/db?schema=fleetrpc   (the rest goes to asyncpg)

Migrations: ``store/migrations/<dialect>/NNNN_name.sql``, every part of the
server in its own range of numbers (see ``migrations.OWNERS``); opening a
database applies every one not yet applied, each in its own transaction.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import inspect
import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import (
    AlreadyExistsError,
    FleetRpcError,
    StoreError,
    StoreUnavailableError,
    ValidationError,
    ValueRefusedError,
)
from . import migrations

_log = logging.getLogger("fleetrpc.store")

__all__ = [
    "Conn",
    "Database",
    "SqliteDatabase",
    "PostgresDatabase",
    "database_from_url",
    "open_database",
    "placeholders",
    "sqlite_placeholders",
]

#: A result row: ``row[0]`` and ``row["column"]`` (sqlite3.Row or asyncpg.Record).
Row = Any


class Conn(Protocol):
    """What :meth:`Database.transaction` yields: the five query methods,
    all inside that one transaction."""

    async def execute(self, sql: str, *args: Any) -> int: ...
    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None: ...
    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...
    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...
    async def fetchval(self, sql: str, *args: Any) -> Any: ...


class Database(abc.ABC):
    """One database shared by every repository: connection(s) + migrations.

    Statements run one at a time in autocommit mode, each its own
    transaction, unless inside ``async with db.transaction() as conn``.
    Inside a transaction, use ``conn``, not ``db`` (on SQLite, ``db`` would
    wait for the transaction to end: there is one connection).
    """

    #: "sqlite" or "postgresql"
    dialect: str = ""
    #: whether :meth:`open` applies pending migrations (the constructors' ``migrate``)
    _migrate: bool = True

    # -- lifecycle --

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply every pending migration (idempotent).  Raises
        :class:`StoreUnavailableError` when the database cannot be reached."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close every connection.  Idempotent."""

    @property
    @abc.abstractmethod
    def is_open(self) -> bool:
        """Whether :meth:`open` succeeded and :meth:`close` was not called."""

    async def __aenter__(self) -> Database:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- queries --

    @abc.abstractmethod
    def _statement(self) -> contextlib.AbstractAsyncContextManager[Conn]:
        """The connection one statement outside a transaction runs on, in
        autocommit mode (the dialects differ only in how they get it)."""

    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; return the number of rows it affected."""
        async with self._statement() as conn:
            return await conn.execute(sql, *args)

    @abc.abstractmethod
    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per argument tuple, in one transaction."""

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """Every row of a query."""
        async with self._statement() as conn:
            return await conn.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        """The first row of a query, or None."""
        async with self._statement() as conn:
            return await conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """The first column of the first row, or None when there is no row."""
        async with self._statement() as conn:
            return await conn.fetchval(sql, *args)

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractAsyncContextManager[Conn]:
        """``async with db.transaction() as conn``: ``conn``'s statements
        commit together when the block ends, or roll back if it raises."""

    # -- migrations --

    async def migrate(self) -> list[int]:
        """Apply the migrations not yet applied, each in its own transaction
        with its row in ``schema_version``; return their numbers (empty when
        the schema is current).  Idempotent, and safe from several processes
        at once.  Raises :class:`StoreError` when the database has a
        migration this fleetrpc does not know (it is newer)."""
        known = migrations.load(self.dialect)
        numbers = {m.version for m in known}
        done: list[int] = []
        for m in known:
            async with self.transaction() as conn:
                await self._before_migration(conn)
                await conn.execute(_SCHEMA_VERSION_DDL[self.dialect])
                applied = {r[0] for r in await conn.fetch("SELECT version FROM schema_version")}
                unknown = sorted(applied - numbers)
                if unknown:
                    raise StoreError(
                        f"the database has migrations {unknown} that this fleetrpc does not "
                        "know (it was migrated by a newer version): upgrade fleetrpc"
                    )
                if m.version in applied:
                    continue
                for statement in m.statements:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_version (version, name, applied_time) VALUES ($1, $2, $3)",
                    m.version,
                    m.name,
                    int(time.time() * 1000),
                )
                done.append(m.version)
        return done

    async def _migrate_opened(self) -> None:
        """The end of :meth:`open`: apply pending migrations unless built
        with ``migrate=False``; a failure closes the database again (never
        left open half-migrated)."""
        if self._migrate:
            try:
                await self.migrate()
            except BaseException:
                await self.close()
                raise

    async def _before_migration(self, conn: Conn) -> None:
        """Dialect hook, inside each migration's transaction."""

    async def schema_version(self) -> int:
        """The highest applied migration number (0 on an empty database)."""
        if not await self._has_table("schema_version"):
            return 0
        return await self.fetchval("SELECT COALESCE(max(version), 0) FROM schema_version")

    async def applied_migrations(self) -> list[int]:
        """Every applied migration number, rising."""
        if not await self._has_table("schema_version"):
            return []
        return [r[0] for r in await self.fetch("SELECT version FROM schema_version ORDER BY version")]

    @abc.abstractmethod
    async def _has_table(self, name: str) -> bool: ...


_SCHEMA_VERSION_DDL = {
    "sqlite": (
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY NOT NULL, name TEXT NOT NULL, applied_time INTEGER NOT NULL)"
    ),
    "postgresql": (
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version integer PRIMARY KEY, name text NOT NULL, applied_time bigint NOT NULL)"
    ),
}


# -- SQLite -------------------------------------------------------------------------

# $n outside quotes; quoted strings and identifiers are skipped whole.
_SQL_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\$(\d+)")
_PLACEHOLDER_CACHE: dict[str, str] = {}
_PLACEHOLDER_CACHE_MAX = 4096


def placeholders(first: int, n: int) -> str:
    """``$first, ..., $(first + n - 1)``: the list of an ``IN (...)`` with
    ``n`` values bound after ``first - 1`` others (both backends)."""
    return ", ".join(f"${i}" for i in range(first, first + n))


def sqlite_placeholders(sql: str) -> str:
    """``$1`` -> ``?1`` outside string literals and quoted identifiers
    (cached: statements are a small fixed set)."""
    out = _PLACEHOLDER_CACHE.get(sql)
    if out is None:
        out = _SQL_TOKEN.sub(lambda m: m.group(0) if m.group(1) is None else "?" + m.group(1), sql)
        if len(_PLACEHOLDER_CACHE) < _PLACEHOLDER_CACHE_MAX:
            _PLACEHOLDER_CACHE[sql] = out
    return out


# Primary result codes (the low byte of the extended code) that mean "not
# now": trying again later may succeed.
_SQLITE_UNAVAILABLE = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_NOTADB,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_PROTOCOL,
    }
)
_SQLITE_UNIQUE = frozenset({"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"})
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


def sqlite_error(e: BaseException, doing: str, where: str) -> StoreError:
    """The fleetrpc error for a SQLite (or aiosqlite) exception."""
    if isinstance(e, sqlite3.Error):
        name = getattr(e, "sqlite_errorname", None) or "no error code"
        code = getattr(e, "sqlite_errorcode", None)
        if name in _SQLITE_UNIQUE:
            return AlreadyExistsError(f"SQLite ({doing}): {e} [{name}]")
        if code is not None and code & 0xFF in _SQLITE_UNAVAILABLE:
            return StoreUnavailableError(f"SQLite database {where} is unavailable ({doing}): {e} [{name}]")
        return StoreError(f"SQLite error ({doing}): {type(e).__name__}: {e} [{name}]")
    if isinstance(e, OSError):
        return StoreUnavailableError(f"SQLite database {where} is unavailable ({doing}): {e}")
    return StoreError(f"SQLite error ({doing}): {type(e).__name__}: {e}")


class _SqliteConn:
    """The one aiosqlite connection, statements translated and errors mapped.
    Not locked: :class:`SqliteDatabase` holds its lock around every use."""

    __slots__ = ("raw", "_where")

    def __init__(self, raw: Any, where: str) -> None:
        self.raw = raw  # the aiosqlite.Connection (for dialect-specific code)
        self._where = where

    async def execute(self, sql: str, *args: Any) -> int:
        try:
            async with self.raw.execute(sqlite_placeholders(sql), args) as cur:
                return max(cur.rowcount, 0)
        except FleetRpcError:
            raise
        except Exception as e:
            raise sqlite_error(e, "executing", self._where) from e

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        try:
            await self.raw.executemany(sqlite_placeholders(sql), args)
        except Exception as e:
            raise sqlite_error(e, "executing", self._where) from e

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        try:
            return list(await self.raw.execute_fetchall(sqlite_placeholders(sql), args))
        except Exception as e:
            raise sqlite_error(e, "querying", self._where) from e

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        rows = await self.fetch(sql, *args)
        return rows[0][0] if rows else None


class SqliteDatabase(Database):
    """One SQLite file (or ``":memory:"``) over one aiosqlite connection.

    One connection, hence one writer: an :class:`asyncio.Lock` keeps each
    statement and each transaction whole (another coroutine's statement
    never lands inside a transaction, and no read sees uncommitted rows).
    The file is in WAL mode, so other processes may read while this one
    writes.  ``synchronous`` defaults to FULL: a commit survives a power
    cut, at one fsync per commit (group commit amortises it).
    """

    dialect = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 5000,
        migrate: bool = True,
    ) -> None:
        if not isinstance(synchronous, str) or synchronous.upper() not in _SYNCHRONOUS:
            raise ValidationError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, got {synchronous!r}")
        self.path = str(path)
        self.synchronous = synchronous.upper()
        self.busy_timeout_ms = int(busy_timeout_ms)
        self._migrate = migrate
        self._conn: _SqliteConn | None = None
        self._lock = asyncio.Lock()
        self._holder: asyncio.Task[Any] | None = None

    def __repr__(self) -> str:
        return f"<SqliteDatabase {self.path}>"

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    async def open(self) -> None:
        if self._conn is not None:
            return
        import aiosqlite

        # isolation_level=None: no implicit transactions, we BEGIN ourselves.
        pending = aiosqlite.connect(self.path, isolation_level=None)
        try:
            raw = await pending
        except Exception as e:
            # aiosqlite stops its worker thread without waiting for it; wait
            # here, or the thread reports to an event loop that may be gone.
            thread = getattr(pending, "_thread", None)
            if thread is not None:
                await asyncio.get_running_loop().run_in_executor(None, thread.join, 5)
                await asyncio.sleep(0)
            raise sqlite_error(e, "opening", self.path) from e
        try:
            raw.row_factory = sqlite3.Row
            if self.path != ":memory:":
                await raw.execute("PRAGMA journal_mode=WAL")
            await raw.execute(f"PRAGMA synchronous={self.synchronous}")
            await raw.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
        except Exception as e:
            await raw.close()
            raise sqlite_error(e, "opening", self.path) from e
        self._conn = _SqliteConn(raw, self.path)
        await self._migrate_opened()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            async with self._lock:
                with contextlib.suppress(Exception):
                    await conn.raw.close()

    @contextlib.asynccontextmanager
    async def locked(self, *, begin: str | None = None) -> AsyncIterator[_SqliteConn]:
        """The connection, alone; inside a transaction when ``begin`` is
        ``"IMMEDIATE"`` / ``"DEFERRED"``.  For repositories' dialect-specific
        code (``conn.raw`` is the aiosqlite connection)."""
        conn = self._conn
        if conn is None:
            raise StoreError(f"the SQLite database {self.path} is not open")
        task = asyncio.current_task()
        if self._holder is not None and self._holder is task:
            raise StoreError("a statement on the Database inside its own transaction: use the transaction's conn")
        async with self._lock:
            if self._conn is None:
                raise StoreError(f"the SQLite database {self.path} is not open")
            self._holder = task
            try:
                if begin is None:
                    yield conn
                    return
                try:
                    # Inside the try: a task cancelled while awaiting BEGIN
                    # leaves the BEGIN queued on aiosqlite's thread, which
                    # runs it anyway; without the ROLLBACK queued behind it,
                    # the connection stays in that transaction and every
                    # later BEGIN fails ("cannot start a transaction within
                    # a transaction").
                    await conn.execute(f"BEGIN {begin}")
                    yield conn
                except BaseException:
                    with contextlib.suppress(Exception):
                        await conn.raw.execute("ROLLBACK")
                    raise
                try:
                    await conn.raw.execute("COMMIT")
                except Exception as e:
                    with contextlib.suppress(Exception):
                        await conn.raw.execute("ROLLBACK")
                    raise sqlite_error(e, "committing", self.path) from e
            finally:
                self._holder = None

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Conn]:
        # IMMEDIATE: take the write lock now, not at the first write (no
        # SQLITE_BUSY half-way through when another process writes).
        return self.locked(begin="IMMEDIATE")

    def _statement(self) -> contextlib.AbstractAsyncContextManager[_SqliteConn]:
        return self.locked()

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        async with self.locked(begin="IMMEDIATE") as conn:
            await conn.executemany(sql, args)

    async def _has_table(self, name: str) -> bool:
        return bool(await self.fetchval("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1", name))


# -- PostgreSQL -----------------------------------------------------------------------

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _quoted(ident: str) -> str:
    """An :data:`_IDENT` as a quoted identifier: the schema is created
    quoted, so ``search_path`` must name it quoted too (unquoted,
    PostgreSQL folds ``MixedCase`` to ``mixedcase`` and finds no schema)."""
    return f'"{ident}"'
# SQLSTATE classes that mean "not now": 08 connection exception, 40
# transaction rollback (serialization failure, deadlock), 53 insufficient
# resources, 57 operator intervention (shutdown, cannot connect now), 58
# system error (I/O).
_PG_UNAVAILABLE_CLASSES = ("08", "40", "53", "57", "58")


def _pg_is_unavailable(e: BaseException) -> bool:
    import asyncpg

    if isinstance(e, (OSError, TimeoutError, asyncpg.PostgresConnectionError)):
        return True
    state = getattr(e, "sqlstate", None)
    if isinstance(state, str) and state[:2] in _PG_UNAVAILABLE_CLASSES:
        return True
    # asyncpg's own "connection is closed" and "the connection was closed in
    # the middle of operation": InterfaceError, which carries no code.
    # InternalClientError ("cannot switch to state 12; another operation (2)
    # is in progress"): a pooled connection whose protocol state the server's
    # death broke (the fault suite's PostgreSQL kill -9).  Taken for a
    # refusal, it made the engine store a SUCCESSFUL call without its reply.
    return (isinstance(e, asyncpg.InterfaceError) and "closed" in str(e)) or isinstance(
        e, asyncpg.InternalClientError
    )


def postgres_error(e: BaseException, doing: str, where: str) -> StoreError:
    """The fleetrpc error for an asyncpg exception."""
    import asyncpg

    if _pg_is_unavailable(e):
        return StoreUnavailableError(f"PostgreSQL at {where} is unavailable ({doing}): {type(e).__name__}: {e}")
    if isinstance(e, asyncpg.UniqueViolationError):
        return AlreadyExistsError(f"PostgreSQL ({doing}): {e.detail or e}")
    state = getattr(e, "sqlstate", None)
    if state in _REFUSED_CHARACTER:
        return ValueRefusedError(f"a text holds a character the database cannot store (NUL) [{state}]")
    code = f" [{state}]" if state else ""
    return StoreError(f"PostgreSQL error ({doing}): {type(e).__name__}: {e}{code}")


#: character_not_in_repertoire (NUL in text), untranslatable_character
#: (\u0000 in jsonb)
_REFUSED_CHARACTER = frozenset({"22021", "22P05"})


def _rowcount(status: str) -> int:
    """Rows affected, from a command tag ("UPDATE 3", "INSERT 0 1", "CREATE TABLE")."""
    last = status.rpartition(" ")[2]
    return int(last) if last.isdigit() else 0


class _PgConn:
    """One pooled asyncpg connection, errors mapped."""

    __slots__ = ("raw", "_db")

    def __init__(self, raw: Any, db: PostgresDatabase) -> None:
        self.raw = raw  # the asyncpg.Connection (for dialect-specific code)
        self._db = db

    async def execute(self, sql: str, *args: Any) -> int:
        try:
            return _rowcount(await self.raw.execute(sql, *args))
        except Exception as e:
            raise await self._db._error(e, "executing") from e

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        try:
            await self.raw.executemany(sql, args)
        except Exception as e:
            raise await self._db._error(e, "executing") from e

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        try:
            return await self.raw.fetch(sql, *args)
        except Exception as e:
            raise await self._db._error(e, "querying") from e

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        try:
            return await self.raw.fetchrow(sql, *args)
        except Exception as e:
            raise await self._db._error(e, "querying") from e

    async def fetchval(self, sql: str, *args: Any) -> Any:
        try:
            return await self.raw.fetchval(sql, *args)
        except Exception as e:
            raise await self._db._error(e, "querying") from e

    async def copy_records_to_table(self, table: str, *, records: Iterable[Sequence[Any]],
                                    columns: Sequence[str]) -> None:
        """Binary COPY (PostgreSQL only): the fastest bulk insert."""
        try:
            await self.raw.copy_records_to_table(table, records=records, columns=columns)
        except Exception as e:
            raise await self._db._error(e, "copying") from e


class PostgresDatabase(Database):
    """PostgreSQL over an asyncpg pool.

    ``schema`` puts every table in that schema (created if missing) instead
    of the first one on the server's ``search_path``.  The pool opens
    ``min_size`` connections up front and at most ``max_size``.  When a
    connection breaks, the pool drops all of its connections and opens
    fresh ones on the next use, so the database comes back by itself.
    """

    dialect = "postgresql"

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 8,
        connect_timeout: float = 5.0,
        command_timeout: float | None = 30.0,
        migrate: bool = True,
    ) -> None:
        if schema is not None and not _IDENT.match(schema):
            raise ValidationError(f"schema must be a plain SQL identifier, got {schema!r}")
        self.dsn = dsn
        self.schema = schema
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._migrate = migrate
        self._pool: Any = None
        self.where = _describe(dsn)

    def __repr__(self) -> str:
        return f"<PostgresDatabase {self.where}{' schema=' + self.schema if self.schema else ''}>"

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    async def open(self) -> None:
        if self._pool is not None:
            return
        import asyncpg

        settings = {"application_name": "fleetrpc"}
        if self.schema:
            settings["search_path"] = _quoted(self.schema)
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self.min_size,
                max_size=self.max_size,
                timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
                server_settings=settings,
                reset=_keep_session,
            )
        except Exception as e:
            raise postgres_error(e, "connecting", self.where) from e
        await self._migrate_opened()

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.close()
            except Exception:  # closing a pool whose server is gone
                pool.terminate()

    async def _error(self, e: BaseException, doing: str) -> StoreError:
        if isinstance(e, FleetRpcError):
            return e  # type: ignore[return-value]
        err = postgres_error(e, doing, self.where)
        if isinstance(err, StoreUnavailableError) and self._pool is not None:
            # Whatever broke this connection likely broke its siblings: have
            # the pool replace them all on their next acquire.
            with contextlib.suppress(Exception):
                await self._pool.expire_connections()
        return err

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[_PgConn]:
        """One pooled connection, in autocommit mode (for repositories'
        dialect-specific code; ``conn.raw`` is the asyncpg connection)."""
        pool = self._pool
        if pool is None:
            raise StoreError(f"the PostgreSQL database at {self.where} is not open")
        try:
            # Bounded like every statement: a pool whose connections are
            # all taken answers "unavailable" rather than leave a request
            # (and its caller) waiting forever.  The bound costs a task
            # (asyncio.wait_for, ~8 us of CPU), so only when there may be a
            # wait: an idle connection is handed over at once.
            if pool.get_idle_size():
                raw = await pool.acquire()
            else:
                raw = await pool.acquire(timeout=self.command_timeout)
        except asyncio.TimeoutError:
            raise StoreUnavailableError(
                f"PostgreSQL at {self.where} is unavailable: no pooled connection within "
                f"{self.command_timeout} s (all {self.max_size} busy, or the server does not answer)") from None
        except Exception as e:
            raise await self._error(e, "connecting") from e
        try:
            yield _PgConn(raw, self)
        finally:
            # Errors of the block are the block's (already mapped, or the
            # caller's own); releasing never raises for a broken connection.
            with contextlib.suppress(Exception):
                await pool.release(raw)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PgConn]:  # type: ignore[override]
        async with self.connection() as conn:
            tx = conn.raw.transaction()
            try:
                await tx.start()
            except Exception as e:
                raise await self._error(e, "beginning") from e
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(Exception):
                    await tx.rollback()
                raise
            try:
                await tx.commit()
            except Exception as e:
                raise await self._error(e, "committing") from e

    def _statement(self) -> contextlib.AbstractAsyncContextManager[_PgConn]:
        return self.connection()

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        async with self.connection() as conn:
            await conn.executemany(sql, args)  # asyncpg: one transaction

    async def _before_migration(self, conn: Conn) -> None:
        # Serialise migrators (several nodes starting at once).
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"fleetrpc.migrate.{self.schema or ''}")
        if self.schema:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')

    async def _has_table(self, name: str) -> bool:
        return bool(await self.fetchval("SELECT to_regclass($1) IS NOT NULL", name))


async def _keep_session(conn: Any) -> None:
    """The pool's reset on release.  asyncpg's default sends ``SELECT
    pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` every time
    a connection goes back to the pool: one more round trip per statement.
    Repositories leave no session state behind (no session advisory locks,
    cursors, LISTEN or SET; the schema is a startup setting), and asyncpg
    still rolls back an open transaction before calling this."""


async def listen(db: Any, channel: str, on_payload: Callable[[str], Any], *, name: str,
                 on_connected: Callable[[], Any] | None = None) -> None:
    """Run until cancelled (PostgreSQL): LISTEN on ``channel`` over a
    connection of its own and hand each notification's payload to
    ``on_payload`` (what it raises is logged).  A lost connection is made
    again, 0.2 s later doubling to 5 s; after each (re)connection
    ``on_connected()`` runs (awaited when it returns an awaitable):
    notifications sent meanwhile were missed.  A dead server is noticed by a
    query every 5 s, not by waiting."""
    import asyncpg

    def received(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            on_payload(payload)
        except Exception:
            _log.exception("handling a notification on %s failed: %r", channel, payload[:200])

    settings = {"application_name": f"fleetrpc-listen-{name}"}
    if getattr(db, "schema", None):
        settings["search_path"] = _quoted(db.schema)
    delay = 0.2
    while True:
        conn = None
        lost = asyncio.get_running_loop().create_future()
        try:
            conn = await asyncpg.connect(db.dsn, timeout=5, server_settings=settings)
            conn.add_termination_listener(lambda c: lost.done() or lost.set_result(None))
            await conn.add_listener(channel, received)
            delay = 0.2
            if on_connected is not None:
                result = on_connected()
                if inspect.isawaitable(result):
                    await result
            while not lost.done():
                try:
                    await asyncio.wait_for(asyncio.shield(lost), 5.0)
                except asyncio.TimeoutError:
                    await asyncio.wait_for(conn.fetchval("SELECT 1"), 5.0)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            _log.warning("%s listener: %s: %s; reconnecting", name, type(e).__name__, e)
        finally:
            if conn is not None:
                conn.terminate()
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


def _describe(dsn: str) -> str:
    """host:port/database of a DSN, without credentials, for messages."""
    try:
        u = urlsplit(dsn)
        return f"{u.hostname or 'localhost'}:{u.port or 5432}{u.path or ''}"
    except ValueError:
        return "(unparsable DSN)"


# -- URLs ----------------------------------------------------------------------------


def database_from_url(url: str, **options: Any) -> Database:
    """A database for ``url``, not yet opened.  ``options`` go to the
    dialect's constructor and win over the URL's query options."""
    if not isinstance(url, str):
        raise ValidationError(f"a database URL must be a string, got {url!r}")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = dict(parse_qsl(parts.query))
    if scheme == "sqlite":
        # sqlite://:memory:, sqlite://, sqlite:///:memory: -> in memory;
        # sqlite:///rel/path.db -> rel/path.db; sqlite:////abs/path.db -> /abs/path.db
        if parts.netloc == ":memory:" or (not parts.netloc and parts.path in ("", "/", "/:memory:")):
            path = ":memory:"
        elif parts.netloc:
            raise ValidationError(
                f"a SQLite URL has no host: use sqlite:///relative.db or sqlite:////abs.db, got {url!r}"
            )
        else:
            path = parts.path[1:]
        opts: dict[str, Any] = {}
        for key, value in query.items():
            if key == "synchronous":
                opts[key] = value
            elif key == "busy_timeout_ms":
                try:
                    opts[key] = int(value)
                except ValueError:
                    raise ValidationError(f"busy_timeout_ms must be an integer, got {value!r}") from None
            else:
                raise ValidationError(f"unknown SQLite URL option {key!r}")
        opts.update(options)
        return SqliteDatabase(path, **opts)
    if scheme in ("postgresql", "postgres"):
        opts = {}
        if "schema" in query:
            opts["schema"] = query.pop("schema")
            url = urlunsplit(parts._replace(query=urlencode(query)))
        opts.update(options)
        return PostgresDatabase(url, **opts)
    raise ValidationError(f"unsupported database URL {url!r}: use sqlite://... or postgresql://...")


async def open_database(url: str, **options: Any) -> Database:
    """:func:`database_from_url`, connected, every migration applied."""
    db = database_from_url(url, **options)
    await db.open()
    return db
