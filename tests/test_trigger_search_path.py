"""PostgreSQL trigger functions act on their own schema's tables, whatever
the search_path of the session that fires them.

fleetrpc sets ``search_path`` to its schema on its own connections only; a
trigger runs with the path of the session that deletes the row (an
operator's psql, another tool).  Deleting a user from such a session must
still record its revocation and drop its API keys in fleetrpc's schema --
not fail ("relation ... does not exist"), nor write into a same-named table
of the session's schema (migration 0104 pins the functions' path)."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from fleetrpc.store.db import PostgresDatabase
from fleetrpc.store.entities import TenantRepository, UserRepository
from fleetrpc.store.entities.api_keys import ApiKeyRepository

from tests.entities_fixtures import CHEAP_HASHER
from tests.services import drop_pg_schema

pytestmark = pytest.mark.pg


@pytest.fixture
async def schema_db(pg_dsn):
    schema = f"e_{uuid.uuid4().hex[:16]}"
    other = f"o_{uuid.uuid4().hex[:16]}"
    db = PostgresDatabase(pg_dsn, schema=schema, max_size=2)
    await db.open()
    yield db, other
    await db.close()
    drop_pg_schema(pg_dsn, schema)
    drop_pg_schema(pg_dsn, other)


async def _user_with_key(db) -> tuple[str, str]:
    tenants, users = TenantRepository(db), UserRepository(db, hasher=CHEAP_HASHER)
    t = await tenants.create(f"T {uuid.uuid4().hex[:6]}")
    u = await users.create(t.id, None, f"{uuid.uuid4().hex[:8]}@example.com", "TENANT_ADMIN", password="pw")
    key, _ = await ApiKeyRepository(db).create(t.id, u.id, "a key", enabled=True)
    return u.id, key.id


async def test_deleting_a_user_by_hand_from_another_search_path(schema_db, pg_dsn):
    db, other = schema_db
    s = db.schema
    conn = await asyncpg.connect(pg_dsn)  # the server's default search_path, as psql would have
    try:
        # a session whose path has none of fleetrpc's tables
        await conn.execute("SET search_path = pg_catalog")
        user_id, key_id = await _user_with_key(db)
        await conn.execute(f'DELETE FROM "{s}".tb_user WHERE id = $1', user_id)
        assert await conn.fetchval(f'SELECT count(*) FROM "{s}".user_token_revocation WHERE user_id = $1',
                                   user_id) == 1
        assert await conn.fetchval(f'SELECT count(*) FROM "{s}".api_key WHERE id = $1', key_id) == 0

        # a session whose path finds tables of the same names in another schema
        await conn.execute(f'CREATE SCHEMA "{other}"')
        await conn.execute(f'CREATE TABLE "{other}".user_token_revocation '
                           "(user_id text PRIMARY KEY, valid_since bigint NOT NULL)")
        await conn.execute(f'CREATE TABLE "{other}".api_key (id text PRIMARY KEY, user_id text NOT NULL)')
        user_id, key_id = await _user_with_key(db)
        await conn.execute(f'INSERT INTO "{other}".api_key (id, user_id) VALUES ($1, $2)', "theirs", user_id)
        await conn.execute(f'SET search_path = "{other}"')
        await conn.execute(f'DELETE FROM "{s}".tb_user WHERE id = $1', user_id)
        assert await conn.fetchval(f'SELECT count(*) FROM "{s}".user_token_revocation WHERE user_id = $1',
                                   user_id) == 1
        assert await conn.fetchval(f'SELECT count(*) FROM "{s}".api_key WHERE id = $1', key_id) == 0
        # the other schema's tables are untouched
        assert await conn.fetchval(f'SELECT count(*) FROM "{other}".user_token_revocation') == 0
        assert await conn.fetchval(f'SELECT count(*) FROM "{other}".api_key') == 1
    finally:
        await conn.close()


async def _functions(db, schema: str) -> dict[str, list[str]]:
    rows = await db.fetch(
        "SELECT p.proname, p.proconfig FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = $1", schema)
    return {r["proname"]: list(r["proconfig"] or []) for r in rows}


async def test_every_function_of_the_schema_has_its_search_path_pinned(schema_db):
    """Every function in fleetrpc's schema (the two trigger functions, and
    any a later migration adds) runs with ``search_path = <its schema>,
    pg_temp`` (pg_temp last: a session's temporary table of the same name
    is not found first)."""
    db, _ = schema_db
    functions = await _functions(db, db.schema)
    assert {"api_key_on_user_delete", "user_token_revocation_on_delete"} <= set(functions)
    assert functions == dict.fromkeys(functions, [f"search_path={db.schema}, pg_temp"])


async def test_without_a_schema_the_functions_are_pinned_to_where_they_are(fresh_pg_db):
    """No ``schema`` setting: the tables go to the server's default
    (public here), and the functions are pinned to it."""
    db = PostgresDatabase(fresh_pg_db, max_size=1)
    await db.open()
    try:
        functions = await _functions(db, "public")
        assert {"api_key_on_user_delete", "user_token_revocation_on_delete"} <= set(functions)
        assert functions == dict.fromkeys(functions, ["search_path=public, pg_temp"])
    finally:
        await db.close()
