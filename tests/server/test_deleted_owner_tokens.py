"""The users deleted with their customer or their tenant lose their tokens
at once: on the node that deleted them (its revocation listeners) and on
the others (the revoking transaction's PostgreSQL notification), not at
the next read of the revocations' table (``cluster.poll_interval_s``, an
hour here so that only the immediate paths can pass)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import aiohttp
import pytest

from fleetrpc.server import Server, ServerContext
from tests.entities_fixtures import CHEAP_HASHER
from tests.server.conftest import Api, server_settings

pytestmark = pytest.mark.mqtt

NO_POLL = {"poll_interval_s": 3600.0}
EXPIRED = (401, 11)


#: A route that does not read the user (``/api/auth/user`` would 401 a deleted one anyway).
PROBE = "/api/deviceInfos/all?pageSize=10&page=0"


async def _refused(api: Api, token: str, path: str = PROBE) -> tuple[int, int | None]:
    status, body, _ = await api.request("GET", path, token)
    code = json.loads(body).get("errorCode") if body.startswith(b"{") else None
    return status, code


async def test_a_deleted_customer_s_users_tokens_stop_at_once(start_server, world):
    async with start_server(cluster=NO_POLL) as (server, api):
        tenant = await api.login(world.tenant.email)
        victim = await api.login(world.customer.email)
        other = await api.login(world.customer2.email)
        assert (await api.request("GET", PROBE, victim))[0] == 200  # cached by the node
        assert (await api.request("DELETE", f"/api/customer/{world.c1}", tenant))[0] == 200
        assert await _refused(api, victim) == EXPIRED
        status, raw, _ = await api.request("POST", f"/api/rpc/oneway/{world.dev_c1.id}", victim,
                                           json={"method": "x", "persistent": True})
        assert status == 401, raw
        assert (await api.request("GET", "/api/auth/user", other))[0] == 200  # customer B's user keeps its own
        assert (await api.request("GET", "/api/auth/user", tenant))[0] == 200


async def test_a_deleted_tenant_s_users_tokens_stop_at_once(start_server, world):
    async with start_server(cluster=NO_POLL) as (server, api):
        sysadmin = await api.login(world.sysadmin.email)
        admin2 = await api.login(world.tenant2.email)
        customer3 = await api.login(world.customer3.email)
        tenant1 = await api.login(world.tenant.email)
        for token in (admin2, customer3):
            assert (await api.request("GET", PROBE, token))[0] == 200
        assert (await api.request("DELETE", f"/api/tenant/{world.t2}", sysadmin))[0] == 200
        assert await _refused(api, admin2) == EXPIRED
        assert await _refused(api, customer3) == EXPIRED
        # the deleted tenant's administrator creates nothing in it any more
        status, raw, _ = await api.request("POST", "/api/customer", admin2, json={"title": "Ghost"})
        assert status == 401, raw
        assert (await api.request("GET", "/api/auth/user", tenant1))[0] == 200


@contextlib.asynccontextmanager
async def _two_nodes(mqtt_url: str, store_url: str, tmp_path, world):
    await world.seed(store_url)
    servers: list[Server] = []
    try:
        for k in range(2):
            settings = server_settings(mqtt_url, store_url, tmp_path / f"node{k}",
                                       cluster={"lease_ttl_s": 2.0, "partitions": 16, **NO_POLL})
            ctx = ServerContext(settings)
            ctx.password_hasher = CHEAP_HASHER
            server = Server(settings, ctx=ctx)
            await server.start()
            servers.append(server)
        async with aiohttp.ClientSession() as session:
            yield [Api(s.ctx.url, session) for s in servers]
    finally:
        for server in reversed(servers):
            await server.stop()


@pytest.mark.pg
async def test_the_other_node_refuses_them_at_once(mqtt_url, fresh_pg_db, tmp_path, world):
    async with _two_nodes(mqtt_url, fresh_pg_db, tmp_path, world) as (a, b):
        customer = await b.login(world.customer.email)
        admin2 = await b.login(world.tenant2.email)
        for token in (customer, admin2):
            assert (await b.request("GET", PROBE, token))[0] == 200  # cached on B
        tenant = await a.login(world.tenant.email)
        sysadmin = await a.login(world.sysadmin.email)
        assert (await a.request("DELETE", f"/api/customer/{world.c1}", tenant))[0] == 200
        assert (await a.request("DELETE", f"/api/tenant/{world.t2}", sysadmin))[0] == 200
        for token in (customer, admin2):
            deadline = time.monotonic() + 2.0  # a notification's latency is milliseconds
            while await _refused(b, token) != EXPIRED:
                assert time.monotonic() < deadline, "node B still accepts a deleted user's token"
                await asyncio.sleep(0.01)
