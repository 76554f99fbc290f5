"""Persistent-RPC storage: the interface, SQLite and PostgreSQL backends,
group commit, migrations.

    store = await open_store("sqlite:///fleetrpc.db")          # relative path
    store = await open_store("sqlite:////var/lib/fleetrpc.db")  # absolute path
    store = await open_store("sqlite://:memory:")
    store = await open_store("postgresql://user@host/db?schema=fleetrpc")
    store = await open_store(url, group_commit=True)            # GroupCommitStore

:func:`store_from_url` builds the same store without opening it (for
``async with``).  SQLite URLs take ``?synchronous=NORMAL|FULL`` and
``?busy_timeout_ms=``; PostgreSQL URLs take ``?schema=`` (the rest of the URL
goes to asyncpg as is).

Inside a server, the tables share one :class:`Database` (``db.py``): open
it once with :func:`open_database` and build each repository on it --
``rpc_store(db, group_commit=True)`` for persistent calls.
"""

from __future__ import annotations

from typing import Any

from .base import (
    SORT_PROPERTIES,
    DuplicateRpcError,
    Page,
    RpcRecord,
    StatusChange,
    Store,
    StoreStats,
    WriteResult,
)
from .batching import Batcher, BatchStats, GroupCommitStore
from .db import Conn, Database, database_from_url, open_database

__all__ = [
    "Database",
    "Conn",
    "open_database",
    "database_from_url",
    "Store",
    "RpcRecord",
    "StatusChange",
    "Page",
    "WriteResult",
    "StoreStats",
    "DuplicateRpcError",
    "SORT_PROPERTIES",
    "GroupCommitStore",
    "Batcher",
    "BatchStats",
    "SqliteStore",
    "PostgresStore",
    "store_from_url",
    "open_store",
    "rpc_store",
]


def __getattr__(name: str) -> Any:
    # The backends import their drivers; load them only when asked for.
    if name == "SqliteStore":
        from .sqlite import SqliteStore

        return SqliteStore
    if name == "PostgresStore":
        from .postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def rpc_store(db: Database, *, group_commit: bool = False, owns_db: bool = False) -> Store:
    """The persistent-call repository of ``db``'s dialect
    (:class:`SqliteStore` or :class:`PostgresStore`), wrapped in a
    :class:`GroupCommitStore` when ``group_commit``.  With ``owns_db`` the
    store closes the database when it is closed."""
    store: Store
    if db.dialect == "sqlite":
        from .sqlite import SqliteStore

        store = SqliteStore(db)  # type: ignore[arg-type]
    else:
        from .postgres import PostgresStore

        store = PostgresStore(db)  # type: ignore[arg-type]
    store.owns_db = owns_db
    return GroupCommitStore(store) if group_commit else store


def store_from_url(url: str, *, group_commit: bool = False, **options: Any) -> Store:
    """A store for ``url`` on a database of its own, not yet opened.
    ``options`` go to the database's constructor (they win over the URL's
    query options; see :func:`~fleetrpc.store.db.database_from_url`);
    ``group_commit`` wraps it in a :class:`GroupCommitStore`."""
    if "migrate_on_open" in options:  # the stores' name for it
        options["migrate"] = options.pop("migrate_on_open")
    return rpc_store(database_from_url(url, **options), group_commit=group_commit, owns_db=True)


async def open_store(url: str, *, group_commit: bool = False, **options: Any) -> Store:
    """:func:`store_from_url`, opened and migrated."""
    store = store_from_url(url, group_commit=group_commit, **options)
    await store.open()
    return store
