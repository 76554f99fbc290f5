"""Fleet jobs in a cluster: a job is run by the holder of its named lease;
when that node stops renewing (cut off, or dead), another node takes the
run over once the lease lapsed and finishes it: no device gets the call
twice, none is left out."""

from __future__ import annotations

import asyncio

import pytest

from fleetrpc.cluster import ClusterSettings, LeaseManager
from fleetrpc.jobs import DeviceOutcome, JobEngine, JobStatus
from fleetrpc.store.jobs import JobRepository
from tests.helpers.waiting import wait_until
from tests.jobs.test_engine import TENANT, Rig, _spec

pytestmark = [pytest.mark.mqtt, pytest.mark.pg]

TTL = 1.0


async def _node(mqtt_url, dsn, name) -> tuple[Rig, LeaseManager]:
    rig = await Rig(mqtt_url, dsn).start()
    leases = LeaseManager(rig.db, name, ClusterSettings(partitions=16, lease_ttl_s=TTL))
    await leases.start()
    rig.engine = JobEngine(rig.dispatcher, JobRepository(rig.db), leases=leases, progress_interval=0.0)
    await rig.engine.start()
    return rig, leases


async def _close(a: Rig, la: LeaseManager, b: Rig, lb: LeaseManager) -> None:
    """Stop both nodes; the devices are a's (b shares them)."""
    for leases in (la, lb):
        await leases.stop()
    await a.close()
    b.devices = {}
    await b.close()


async def test_a_job_is_taken_over_when_its_node_stops_renewing(mqtt_url, fresh_pg_db):
    a, la = await _node(mqtt_url, fresh_pg_db, "jobs-a")
    b, lb = await _node(mqtt_url, fresh_pg_db, "jobs-b")
    b.calls = a.calls  # one counter for every device
    try:
        ids = [await a.device() for _ in range(30)]
        job = await a.engine.submit(TENANT, _spec(ids, rollout={"maxPerMinute": 1200}))  # 20/s
        assert la.holds_named(f"job:{job.id}") and not lb.holds_named(f"job:{job.id}")
        await wait_until(lambda: sum(a.calls.values()) >= 5, timeout=10)
        # b does not run it while a holds the lease
        assert job.id not in b.engine._runs
        # a is cut off from the database: it stops renewing, fences itself
        # at its deadline (the run halts, writing nothing more), and b takes
        # the job over once a's session expired.
        la._task.cancel()
        await wait_until(lambda: job.id in b.engine._runs, timeout=TTL * 6)
        assert job.id not in a.engine._runs
        done = await b.engine.wait(TENANT, job.id, timeout=20)
        c = done.counts
        assert done.status is JobStatus.COMPLETED and c.total == 30
        assert c.succeeded + c.failed == 30 and c.in_progress == 0 and c.queued == 0
        assert max(a.calls.values()) == 1  # nobody twice
        assert sum(a.calls.values()) >= c.succeeded  # every success was a real call
        rows, _ = await b.engine.devices(TENANT, done.id, 100, 0, outcome=DeviceOutcome.FAILED)
        assert all("interrupted" in r.error for r in rows)
        # every device has its row: none left out
        rows, total = await b.engine.devices(TENANT, done.id, 100, 0)
        assert total == 30 and {r.device_id for r in rows} == set(ids)
    finally:
        await _close(a, la, b, lb)


async def test_a_cancel_through_another_node_stops_the_run(mqtt_url, fresh_pg_db):
    a, la = await _node(mqtt_url, fresh_pg_db, "jobs-a")
    b, lb = await _node(mqtt_url, fresh_pg_db, "jobs-b")
    b.calls = a.calls
    try:
        ids = [await a.device() for _ in range(30)]
        job = await a.engine.submit(TENANT, _spec(ids, rollout={"maxPerMinute": 600}))  # 10/s
        await wait_until(lambda: sum(a.calls.values()) >= 3, timeout=10)
        cancelled = await b.engine.cancel(TENANT, job.id)  # b does not run it
        assert cancelled.status is JobStatus.CANCELLED, cancelled.status
        c = cancelled.counts
        assert c.skipped > 0 and c.succeeded + c.failed + c.skipped + c.cancelled == 30
        assert max(a.calls.values()) == 1
    finally:
        await _close(a, la, b, lb)
