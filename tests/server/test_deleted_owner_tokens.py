"""The users deleted with their customer or their tenant lose their tokens
at once: on the node that deleted them (its revocation listeners) and on
the others (the revoking transaction's PostgreSQL notification), not at
the next read of the revocations' table (``cluster.poll_interval_s``, an
hour here so that only the immediate paths can pass)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.server.conftest import Api, cluster_nodes

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


@pytest.mark.pg
async def test_the_other_node_refuses_them_at_once(mqtt_url, fresh_pg_db, tmp_path, world):
    async with cluster_nodes(mqtt_url, fresh_pg_db, tmp_path, world, **NO_POLL) as ((a, b), _):
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
