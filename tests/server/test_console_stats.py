"""``GET /api/console/stats`` for a tenant administrator: its own tenant's
figures, worked out from its own counters (through the server's HTTP port)."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.mqtt


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_a_tenant_s_stats_do_not_read_every_tenant_s_series(start_server, world):
    """Each tenant administrator's sample (the overview page asks every few
    seconds) collected the whole registry, every tenant's calls and latency
    buckets, to keep its own: its cost grew with the number of tenants.  It
    reads its own tenant's counters only, and says the same."""
    async with start_server() as (server, api):
        metrics = server.ctx.metrics
        started = time.perf_counter()
        for outcome in ("ok", "ok", "timeout", "queued"):
            metrics.rpc_done("twoway", outcome, started, tenant=str(world.t1))
        metrics.rpc_done("oneway", "ok", started, tenant=str(world.t1))
        for i in range(50):  # other tenants
            metrics.rpc_done("twoway", "ok", started, tenant=f"other-{i}")
        collected = []
        collect = metrics.registry.collect
        metrics.registry.collect = lambda: collected.append(1) or collect()
        token = await api.login(world.tenant.email)
        status, body, _ = await api.request("GET", "/api/console/stats", token)
        assert status == 200, body
        stats = json.loads(body)
        assert stats["scope"] == "tenant"
        assert stats["calls"] == {"total": 5, "failed": 1}
        latency = stats["latency"]
        assert latency[-1] == [None, 5] and all(n <= 5 for _, n in latency)
        assert not collected
        # what collecting the registry says of the tenant, to the bucket
        from fleetrpc.console.stats import _buckets, _samples

        samples = _samples(metrics.registry)
        assert latency == _buckets(samples, "fleetrpc_rest_rpc_duration_seconds", tenant=str(world.t1))
