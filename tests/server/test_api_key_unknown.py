"""Refused API key values (api/auth.py's ApiKeyAuth): a client repeating a
value that matches no key, or a disabled or expired key's, costs one database
query per ``UNKNOWN_KEY_TTL_S``, not one per request; a key created or enabled
on this node works at once all the same; the values remembered stay few
however many distinct ones a client sends."""

from __future__ import annotations

import asyncio
import time

import pytest

from fleetrpc.api.auth import API_KEY_EXPIRED, NOT_ACTIVE, UNKNOWN_KEY_TTL_S, ApiKeyAuth
from fleetrpc.api.errors import ApiError
from fleetrpc.store.entities.api_keys import ApiKeyRepository


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Counting:
    """The keys' repository, counting its lookups by value; ``gate`` holds them."""

    def __init__(self, keys) -> None:
        self.keys = keys
        self.queries = 0
        self.gate: asyncio.Event | None = None

    async def by_value(self, value: str):
        self.queries += 1
        if self.gate is not None:
            await self.gate.wait()
        return await self.keys.by_value(value)


class _Users:
    def __init__(self, users) -> None:
        self.users = users

    async def by_id(self, user_id: str):
        return await self.users.get(user_id)


class _NoKeys:
    async def by_value(self, value: str):
        return None


async def _refused(auth: ApiKeyAuth, value: str) -> str:
    with pytest.raises(ApiError) as info:
        await auth.verify(value)
    return str(info.value)


async def test_an_unknown_value_costs_one_query_per_ttl():
    keys, clock = _Counting(_NoKeys()), _Clock()
    auth = ApiKeyAuth(keys, None, recheck_s=5.0, cache_size=100, clock=clock)
    value = "tb_" + "A" * 86
    first = await _refused(auth, value)
    for _ in range(50):
        assert await _refused(auth, value) == first  # the same refusal, from memory
    assert keys.queries == 1 and auth.unknown_hits == 50
    # stopped keys and a reconnected listener (missed stops) leave it unknown
    auth.key_changed("k", "u")
    auth.user_revoked("u", 1)
    auth.clear()
    await _refused(auth, value)
    assert keys.queries == 1
    # another unknown value is asked for itself
    await _refused(auth, "tb_" + "B" * 86)
    assert keys.queries == 2
    # past the time to live: asked again (the key may exist by now)
    clock.now += UNKNOWN_KEY_TTL_S
    await _refused(auth, value)
    assert keys.queries == 3


async def test_a_key_created_on_this_node_works_at_once(repos, monkeypatch):
    """Its value tried (and refused) before it existed: creating it through
    the repository clears what this node remembered as unknown."""
    t = await repos.tenants.create("T")
    u = await repos.users.create(t.id, None, "admin@example.com", "TENANT_ADMIN", password="pw")
    repo = ApiKeyRepository(repos.db)
    keys = _Counting(repo)
    auth = ApiKeyAuth(keys, _Users(repos.users), recheck_s=5.0, cache_size=100)
    repo.add_create_listener(auth.key_created)  # as the server wires it (api/auth.py's _keep_api_keys)
    value = "tb_" + "C" * 86
    monkeypatch.setattr("fleetrpc.store.entities.api_keys.new_value", lambda: value)
    await _refused(auth, value)
    await _refused(auth, value)
    assert keys.queries == 1
    await repo.create(t.id, u.id, "a key", enabled=True)
    assert (await auth.verify(value)).user_id == u.id
    assert keys.queries == 2


async def test_a_lookup_raced_by_a_creation_is_not_remembered():
    """Read before a key was created here, answered after: not kept as unknown."""
    keys = _Counting(_NoKeys())
    auth = ApiKeyAuth(keys, None, recheck_s=5.0, cache_size=100)
    keys.gate = asyncio.Event()
    lookup = asyncio.ensure_future(_refused(auth, "tb_raced"))
    await asyncio.sleep(0)
    assert keys.queries == 1
    auth.key_created("k", "u")
    keys.gate.set()
    await lookup
    await _refused(auth, "tb_raced")
    assert keys.queries == 2


async def test_the_unknown_values_remembered_stay_bounded():
    keys, clock = _Counting(_NoKeys()), _Clock()
    auth = ApiKeyAuth(keys, None, recheck_s=5.0, cache_size=100, clock=clock, unknown_cache_size=64)
    for i in range(1000):
        await _refused(auth, f"tb_{i}")
    assert keys.queries == 1000 and len(auth._refused) == 64
    # the newest are the ones kept
    await _refused(auth, "tb_999")
    assert keys.queries == 1000
    await _refused(auth, "tb_0")
    assert keys.queries == 1001
    # the expired ones go as soon as another is remembered
    clock.now += UNKNOWN_KEY_TTL_S
    await _refused(auth, "tb_new")
    assert len(auth._refused) == 1


async def _key_of(repos, monkeypatch, value: str, **kw):
    t = await repos.tenants.create("T")
    u = await repos.users.create(t.id, None, "admin@example.com", "TENANT_ADMIN", password="pw")
    repo = ApiKeyRepository(repos.db)
    monkeypatch.setattr("fleetrpc.store.entities.api_keys.new_value", lambda: value)
    key, _ = await repo.create(t.id, u.id, "a key", **kw)
    return repo, key, u


async def test_a_disabled_key_costs_one_query_per_ttl_until_enabled_here(repos, monkeypatch):
    """A client repeating a disabled key's value is refused from memory (the
    same refusal); enabling the key on this node makes it work at once."""
    value = "tb_" + "D" * 86
    repo, key, u = await _key_of(repos, monkeypatch, value, enabled=False)
    keys, clock = _Counting(repo), _Clock()
    clock.now = time.time()
    auth = ApiKeyAuth(keys, _Users(repos.users), recheck_s=5.0, cache_size=100, clock=clock)
    repo.add_create_listener(auth.key_created)  # as the server wires it (api/auth.py's _keep_api_keys)
    first = await _refused(auth, value)
    assert first == NOT_ACTIVE
    for _ in range(20):
        assert await _refused(auth, value) == first
    assert keys.queries == 1
    clock.now += UNKNOWN_KEY_TTL_S
    assert await _refused(auth, value) == first
    assert keys.queries == 2
    await repo.update(key.id, enabled=True)
    assert (await auth.verify(value)).user_id == u.id
    assert keys.queries == 3


async def test_an_expired_key_costs_one_query_per_ttl(repos, monkeypatch):
    value = "tb_" + "E" * 86
    repo, _, _ = await _key_of(repos, monkeypatch, value, enabled=True, expiration_time=int(time.time() * 1000) - 1)
    keys = _Counting(repo)
    auth = ApiKeyAuth(keys, _Users(repos.users), recheck_s=5.0, cache_size=100)
    for _ in range(20):
        assert await _refused(auth, value) == API_KEY_EXPIRED
    assert keys.queries == 1
