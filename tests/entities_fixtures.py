"""Fixtures shared by the entity, broker-auth and server-side identity
tests: a migrated Database on SQLite and on PostgreSQL, and the
repositories on it (with a cheap password hasher)."""

from __future__ import annotations

import uuid

import pytest
from argon2 import PasswordHasher

from fleetrpc.store.db import PostgresDatabase, SqliteDatabase
from fleetrpc.store.entities import CustomerRepository, DeviceRepository, TenantRepository, UserRepository

from tests.services import drop_pg_schema

#: Argon2id at its cheapest: the tests check behaviour, not hashing cost.
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
async def edb(request, tmp_path):
    """An open Database with every migration applied, on one test's own
    SQLite file or PostgreSQL schema."""
    if request.param == "sqlite":
        db = SqliteDatabase(str(tmp_path / "entities.sqlite"), synchronous="OFF")
        await db.open()
        yield db
        await db.close()
        return
    dsn = request.getfixturevalue("pg_dsn")
    schema = f"e_{uuid.uuid4().hex[:16]}"
    db = PostgresDatabase(dsn, schema=schema, max_size=4)
    await db.open()
    yield db
    await db.close()
    drop_pg_schema(dsn, schema)


class Repos:
    def __init__(self, db) -> None:
        self.db = db
        self.devices = DeviceRepository(db)
        self.tenants = TenantRepository(db, devices=self.devices)
        self.customers = CustomerRepository(db)
        self.users = UserRepository(db, hasher=CHEAP_HASHER)


@pytest.fixture
def repos(edb) -> Repos:
    return Repos(edb)
