"""The endpoint's view of the device registry (``DeviceDirectory``): tokens
not cached are looked up in batches, so a connection storm costs the
database tens of queries instead of one per device; every connection gets
its own device's identity; a token that changes while it is looked up is
answered but not cached; a failing query fails only the connections that
waited on it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from fleetrpc.transport.endpoint.directory import BATCH, DeviceDirectory


async def _auth(directory: DeviceDirectory, token: str):
    got = directory.authenticate(token, None, "client")
    return await got if asyncio.isfuture(got) or asyncio.iscoroutine(got) else got


async def test_a_storm_of_new_tokens_is_a_few_queries(repos):
    t = await repos.tenants.create("T")
    devices = {f"storm-{i:05d}": (await repos.devices.create(t.id, f"d{i}", access_token=f"storm-{i:05d}")).id
               for i in range(1200)}
    queries = []
    by_tokens = repos.devices.by_tokens

    async def counted(tokens, *a, **kw):
        queries.append(len(tokens))
        return await by_tokens(tokens, *a, **kw)

    repos.devices.by_tokens = counted
    found = []
    directory = DeviceDirectory(repos.devices, on_found=found.append)
    try:
        tokens = list(devices) + ["no-such-token", "no-such-token"]
        identities = await asyncio.gather(*(_auth(directory, tok) for tok in tokens))
        assert [i.device_id for i in identities[:-2]] == list(devices.values())
        assert identities[-2:] == [None, None]
        assert sum(queries) == 1201 and len(queries) <= 1201 // BATCH + 2, queries
        assert sorted(found) == sorted(devices.values())
        # cached now, the unknown token too
        assert (await _auth(directory, "storm-00007")).device_id == devices["storm-00007"]
        assert await _auth(directory, "no-such-token") is None
        assert sum(queries) == 1201
    finally:
        directory.close()


class HeldRepo:
    """A registry whose batch query waits until the test releases it."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = tokens
        self.release = asyncio.Event()
        self.asked: list[list[str]] = []
        self.fail: Exception | None = None
        self.listeners = []

    def add_listener(self, fn, other_nodes: bool = False):
        self.listeners.append(fn)  # (one node: there are no others)
        return fn

    def remove_listener(self, fn):
        self.listeners.remove(fn)

    async def by_tokens(self, tokens):
        self.asked.append(list(tokens))
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return {t: SimpleNamespace(id=self.tokens[t], tenant_id="t1", additional_info=None)
                for t in tokens if t in self.tokens}

    def change(self, token: str) -> None:
        change = SimpleNamespace(token=None, old_token=token, kind="credentials",
                                 device=SimpleNamespace(id=self.tokens.get(token, "x")))
        for fn in self.listeners:
            fn([change])


async def test_a_token_that_changes_during_its_lookup_is_answered_not_cached():
    repo = HeldRepo({"a": "dev-a", "b": "dev-b"})
    directory = DeviceDirectory(repo)
    first = asyncio.ensure_future(_auth(directory, "a"))
    await asyncio.sleep(0.01)
    assert repo.asked == [["a"]]
    queued = asyncio.ensure_future(_auth(directory, "b"))  # waits for the next batch
    same = asyncio.ensure_future(_auth(directory, "b"))    # shares it
    await asyncio.sleep(0.01)
    repo.change("a")  # during its query
    repo.change("b")  # while it is queued
    repo.release.set()
    assert (await first).device_id == "dev-a"
    assert (await queued).device_id == "dev-b" and (await same).device_id == "dev-b"
    assert repo.asked == [["a"], ["b"]]
    assert "a" not in directory._cache and "b" not in directory._cache
    directory.close()


async def test_a_failed_query_fails_its_connections_and_the_next_one_asks_again():
    repo = HeldRepo({"a": "dev-a"})
    repo.fail = OSError("database unavailable")
    repo.release.set()
    directory = DeviceDirectory(repo)
    with pytest.raises(OSError):
        await _auth(directory, "a")
    repo.fail = None
    assert (await _auth(directory, "a")).device_id == "dev-a"
    assert repo.asked == [["a"], ["a"]]
    directory.close()


async def test_closing_answers_the_connections_still_waiting():
    repo = HeldRepo({"a": "dev-a", "b": "dev-b"})
    directory = DeviceDirectory(repo)
    first = asyncio.ensure_future(_auth(directory, "a"))
    await asyncio.sleep(0.01)
    queued = asyncio.ensure_future(_auth(directory, "b"))
    await asyncio.sleep(0.01)
    directory.close()
    for waiting in (first, queued):
        with pytest.raises((ConnectionError, asyncio.CancelledError)):
            await waiting
