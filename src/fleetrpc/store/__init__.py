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
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import ValidationError
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


def store_from_url(url: str, *, group_commit: bool = False, **options: Any) -> Store:
    """A store for ``url``, not yet opened.  ``options`` go to the backend's
    constructor (they win over the URL's query options); ``group_commit``
    wraps it in a :class:`GroupCommitStore`."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = dict(parse_qsl(parts.query))
    store: Store
    if scheme == "sqlite":
        from .sqlite import SqliteStore

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
                opts[key] = int(value)
            else:
                raise ValidationError(f"unknown SQLite URL option {key!r}")
        opts.update(options)
        store = SqliteStore(path, **opts)
    elif scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        opts = {}
        if "schema" in query:
            opts["schema"] = query.pop("schema")
            url = urlunsplit(parts._replace(query=urlencode(query)))
        opts.update(options)
        store = PostgresStore(url, **opts)
    else:
        raise ValidationError(f"unsupported store URL {url!r}: use sqlite://... or postgresql://...")
    return GroupCommitStore(store) if group_commit else store


async def open_store(url: str, *, group_commit: bool = False, **options: Any) -> Store:
    """:func:`store_from_url`, opened and migrated."""
    store = store_from_url(url, group_commit=group_commit, **options)
    await store.open()
    return store
