"""Finished jobs and their per-device rows are deleted after ``jobs.ttl_days``
(SQLite and PostgreSQL), by the engine's periodic clean-up: on a cluster by
the one node holding the named lease ``jobs:ttl``, as ``rpc:ttl`` for
persistent calls."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from fleetrpc.config.server import load_server_settings
from fleetrpc.jobs import JobEngine, JobStatus
from fleetrpc.jobs.model import DeviceOutcome, Job, JobDevice
from fleetrpc.store.db import open_database
from fleetrpc.store.jobs import JobRepository
from tests.helpers.waiting import wait_until
from tests.jobs.test_engine import TENANT, _spec, db_url  # noqa: F401 (fixture)

DAY_MS = 86_400_000


async def _job(repo: JobRepository, status: JobStatus, finished_days_ago: float | None, devices: int = 3) -> Job:
    now = int(time.time() * 1000)
    ids = [f"d{i}" for i in range(devices)]
    job = Job(id=str(uuid.uuid4()), tenant_id=TENANT, customer_id=None, created_by=None, spec=_spec(["d0"]),
              status=status, created_time=now - 90 * DAY_MS,
              finish_ts=None if finished_days_ago is None else now - int(finished_days_ago * DAY_MS))
    await repo.insert(job)
    await repo.record(job, [JobDevice(job_id=job.id, device_id=d, outcome=DeviceOutcome.SUCCEEDED) for d in ids])
    return job


async def _rows_of(db, job_id: str) -> int:
    return int(await db.fetchval("SELECT count(*) FROM job_device WHERE job_id = $1", job_id))


class _Leases:
    """Just enough of a cluster's leases: this node holds ``jobs:ttl`` or not."""

    single_node = False

    def __init__(self, holds_ttl: bool) -> None:
        self.holds_ttl = holds_ttl
        self.asked: list[str] = []

    async def acquire_named(self, name: str) -> bool:
        self.asked.append(name)
        return self.holds_ttl if name == "jobs:ttl" else False


@pytest.fixture
async def db(db_url):  # noqa: F811
    database = await open_database(db_url)
    yield database
    await database.close()


async def test_finished_jobs_older_than_the_ttl_go_with_their_rows(db):
    repo = JobRepository(db)
    old = {s: await _job(repo, s, 31) for s in
           (JobStatus.COMPLETED, JobStatus.ABORTED, JobStatus.CANCELLED, JobStatus.FAILED)}
    recent = await _job(repo, JobStatus.COMPLETED, 29)
    engine = JobEngine(None, repo, ttl_days=30, ttl_check_interval_s=0.05)
    await engine.start()
    # stored after the start, so that it does not resume them: only data here
    running = await _job(repo, JobStatus.RUNNING, None)  # created 90 days ago, still running
    queued = await _job(repo, JobStatus.QUEUED, None, devices=0)
    try:
        await wait_until(lambda: engine.purged >= 4, timeout=10)
        for job in old.values():
            assert await repo.get(TENANT, job.id) is None and await _rows_of(db, job.id) == 0
        for job in (recent, running, queued):
            assert await repo.get(TENANT, job.id) is not None
        assert await _rows_of(db, recent.id) == 3 and await _rows_of(db, running.id) == 3
        assert engine.purged == 4
    finally:
        await engine.close()


async def test_a_ttl_of_zero_keeps_finished_jobs(db):
    repo = JobRepository(db)
    old = await _job(repo, JobStatus.COMPLETED, 3650)
    engine = JobEngine(None, repo, ttl_days=0, ttl_check_interval_s=0.01)
    await engine.start()
    try:
        await asyncio.sleep(0.2)
        assert await engine.purge() == 0
        assert await repo.get(TENANT, old.id) is not None and await _rows_of(db, old.id) == 3
    finally:
        await engine.close()


async def test_on_a_cluster_only_the_holder_of_the_ttl_lease_purges(db):
    repo = JobRepository(db)
    old = await _job(repo, JobStatus.COMPLETED, 31)
    other = JobEngine(None, repo, ttl_days=30, ttl_check_interval_s=0.02)
    other._leases = _Leases(holds_ttl=False)
    task = asyncio.ensure_future(other._ttl_loop())
    try:
        await wait_until(lambda: len(other._leases.asked) >= 3, timeout=10)
        assert await repo.get(TENANT, old.id) is not None
    finally:
        task.cancel()
    holder = JobEngine(None, repo, ttl_days=30, ttl_check_interval_s=0.02)
    holder._leases = _Leases(holds_ttl=True)
    task = asyncio.ensure_future(holder._ttl_loop())
    try:
        await wait_until(lambda: holder.purged == 1, timeout=10)
        assert await repo.get(TENANT, old.id) is None and await _rows_of(db, old.id) == 0
    finally:
        task.cancel()


def test_the_setting_and_its_variable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./fleetrpc.toml
    assert load_server_settings(env={}).jobs.ttl_days == 30
    assert load_server_settings(env={"FLEETRPC_JOBS_TTL_DAYS": "0"}).jobs.ttl_days == 0
    from fleetrpc.errors import ValidationError
    with pytest.raises(ValidationError, match="jobs.ttl_days"):
        load_server_settings(env={"FLEETRPC_JOBS_TTL_DAYS": "-1"})


async def test_the_server_runs_the_clean_up_with_the_setting(start_server, world):
    async with start_server(jobs={"ttl_days": 7}, store={"ttl_check_interval_s": 3600}) as (server, _api):
        engine = server.ctx.jobs
        assert (engine.ttl_days, engine.ttl_check_interval_s) == (7, 3600)
        assert engine._ttl_task is not None and not engine._ttl_task.done()
