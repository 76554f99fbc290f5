"""A device's changes reach the other nodes sharing the PostgreSQL database
at once (the repository's notifications), not when their caches expire:
node B's endpoint closes the connections of a device deleted or re-tokened
on node A and refuses its old token, and takes its new one, within a
moment -- its token cache (``endpoint.auth_cache_ttl_s``) would otherwise
keep the old answer for minutes.  Only the listeners that asked for other
nodes' changes hear them (a side effect such as the broker provisioning
runs once, on the node of the change); a node ignores its own."""

from __future__ import annotations

import asyncio
import time

import pytest

from fleetrpc.store.db import open_database
from fleetrpc.store.entities import DeviceRepository, TenantRepository
from tests.endpoint import rawmqtt as raw
from tests.server.conftest import cluster_nodes

#: As tests/endpoint/test_server.py's; the token cache is left at its
#: default (300 s) so that only a notification can make B forget.
ENDPOINT = {"enabled": True, "host": "127.0.0.1", "port": 0}
ACCEPTED = b"\x00\x00"


async def _connect(port: int, token: str, client_id: str) -> tuple[raw.RawClient, bytes]:
    c = await raw.RawClient.open(port)
    _, body = await c.connect(token, client_id=client_id)
    return c, body


async def _accepted(port: int, token: str, client_id: str) -> bool:
    c, body = await _connect(port, token, client_id)
    c.close()
    return body == ACCEPTED


@pytest.mark.mqtt
@pytest.mark.pg
async def test_a_device_deleted_on_one_node_is_cut_off_on_the_other(mqtt_url, fresh_pg_db, tmp_path, world):
    async with cluster_nodes(mqtt_url, fresh_pg_db, tmp_path, world, endpoint=ENDPOINT) as (_, (a, b)):
        device = await a.ctx.devices.create(world.t1, "Doomed", access_token="doomed-token-1")
        port_b = b.ctx.endpoint.ports["tcp"]
        c, body = await _connect(port_b, "doomed-token-1", "doomed-1")
        try:
            assert body == ACCEPTED  # and node B's directory now caches the token
            started = time.monotonic()
            await a.ctx.devices.delete(world.t1, device.id)
            try:
                await c.closed(timeout=1.5)
            except asyncio.TimeoutError:
                pytest.fail("node B kept the deleted device's connection open")
            assert time.monotonic() - started < 1.5
        finally:
            c.close()
        assert not await _accepted(port_b, "doomed-token-1", "doomed-2"), "node B still takes a deleted token"


@pytest.mark.mqtt
@pytest.mark.pg
async def test_a_token_replaced_on_one_node_is_refused_on_the_other_and_the_new_one_works(
        mqtt_url, fresh_pg_db, tmp_path, world):
    async with cluster_nodes(mqtt_url, fresh_pg_db, tmp_path, world, endpoint=ENDPOINT) as (_, (a, b)):
        device = await a.ctx.devices.create(world.t1, "Re-keyed", access_token="old-token-1")
        port_b = b.ctx.endpoint.ports["tcp"]
        # B caches both answers: the old token is a device, the new one unknown.
        assert not await _accepted(port_b, "new-token-1", "rekeyed-0")
        c, body = await _connect(port_b, "old-token-1", "rekeyed-1")
        try:
            assert body == ACCEPTED
            await a.ctx.devices.set_credentials(world.t1, device.id, "new-token-1")
            try:
                await c.closed(timeout=1.5)
            except asyncio.TimeoutError:
                pytest.fail("node B kept the connection of the replaced token open")
        finally:
            c.close()
        deadline = time.monotonic() + 1.0
        while await _accepted(port_b, "old-token-1", "rekeyed-2"):
            assert time.monotonic() < deadline, "node B still takes the replaced token"
            await asyncio.sleep(0.05)
        assert await _accepted(port_b, "new-token-1", "rekeyed-3"), "node B refuses the new token"
        # and node A, where the change was made, alike
        port_a = a.ctx.endpoint.ports["tcp"]
        assert not await _accepted(port_a, "old-token-1", "rekeyed-4")
        assert await _accepted(port_a, "new-token-1", "rekeyed-5")


async def _until(predicate, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


@pytest.mark.pg
async def test_only_the_listeners_that_asked_hear_other_nodes_and_never_their_own(fresh_pg_db):
    db, db_b = await open_database(fresh_pg_db), await open_database(fresh_pg_db)
    try:
        node_a, node_b = DeviceRepository(db), DeviceRepository(db_b)  # two nodes: a pool each
        assert DeviceRepository(db).origin == node_a.origin != node_b.origin
        tenant = await TenantRepository(db, devices=node_a).create("T")
        caches: list = []
        effects: list = []
        own: list = []
        node_b.add_listener(caches.extend, other_nodes=True)
        node_b.add_listener(effects.extend)  # a side effect: this node's changes only
        node_a.add_listener(own.extend, other_nodes=True)
        followers = [asyncio.ensure_future(r.follow_other_nodes()) for r in (node_a, node_b)]
        try:
            await asyncio.sleep(0.5)  # both LISTENing
            device = await node_a.create(tenant.id, "D", access_token="tok-a")
            await node_a.set_credentials(tenant.id, device.id, "tok-b")
            await node_a.delete(tenant.id, device.id)
            await _until(lambda: len(caches) == 3)
            assert [(c.kind, c.device.id, c.device.tenant_id, c.token, c.old_token, c.remote) for c in caches] == [
                ("created", device.id, tenant.id, "tok-a", None, True),
                ("credentials", device.id, tenant.id, "tok-b", "tok-a", True),
                ("deleted", device.id, tenant.id, None, "tok-b", True),
            ]
            assert effects == []
            assert [c.remote for c in own] == [False, False, False]  # its own, heard once, locally
            # A tenant's devices deleted together: several notifications
            # (a payload is at most 8000 bytes), every device announced.
            for k in range(120):
                await node_a.create(tenant.id, f"bulk-{k}", access_token=f"bulk-token-{k:03d}-" + "x" * 60)
            await _until(lambda: len(caches) == 3 + 120)
            caches.clear()
            await TenantRepository(db, devices=node_a).delete(tenant.id)
            await _until(lambda: len(caches) == 120)
            assert {c.kind for c in caches} == {"deleted"}
            assert len({c.old_token for c in caches}) == 120
            assert len(own) == 3 + 240
            # what is not such a notification is ignored, without its text in the log
            for junk in ("", "{", '{"o": "x"}', '{"o": "x", "c": [[1]]}', '{"o":"x","c":[["deleted",1,2,3,"secret-tok",null]]}'):
                node_b._heard(junk)
            assert len(caches) == 120
        finally:
            for f in followers:
                f.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
    finally:
        await db.close()
        await db_b.close()


async def test_sqlite_has_no_other_nodes(sqlite_url):
    db = await open_database(sqlite_url)
    try:
        await asyncio.wait_for(DeviceRepository(db).follow_other_nodes(), 1.0)  # returns at once
    finally:
        await db.close()
