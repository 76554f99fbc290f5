"""Deleting a job while it is finishing: no per-device row survives it, the
job does not come back, and its run stops (SQLite and PostgreSQL).

A job reads as finished (``status`` COMPLETED in the engine's live view)
from the moment its run decides so, before its last outcomes, counts and
status are stored.  A DELETE in that window used to remove the job and its
rows first; the run's last write then stored the rest of the rows again,
for a job that no longer existed (orphans nobody could list or delete)."""

from __future__ import annotations

import asyncio

import pytest

from fleetrpc.jobs import JobNotFoundError, JobStatus
from fleetrpc.jobs import engine as engine_module
from fleetrpc.jobs.model import DeviceOutcome, Job, JobDevice
from fleetrpc.store.jobs import JobRepository
from tests.helpers.waiting import wait_until
from tests.jobs.test_engine import TENANT, Rig, _spec, db_url, rig  # noqa: F401 (fixtures)

pytestmark = pytest.mark.mqtt


async def _rows_of(db, job_id: str) -> int:
    return int(await db.fetchval("SELECT count(*) FROM job_device WHERE job_id = $1", job_id))


def _gate_final_write(repo: JobRepository) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold the run's writes of a finished job until ``release`` is set;
    ``held`` is set when the first such write is waiting."""
    held, release = asyncio.Event(), asyncio.Event()
    record = repo.record

    async def gated(job, rows=(), fence=None):
        if job.status.value in ("COMPLETED", "ABORTED", "CANCELLED", "FAILED"):
            held.set()
            await release.wait()
        await record(job, rows, fence)

    repo.record = gated
    return held, release


async def test_a_delete_while_the_last_outcomes_are_written_leaves_no_rows(rig):
    ids = [await rig.device() for _ in range(6)]
    held, release = _gate_final_write(rig.engine.repo)
    job = await rig.engine.submit(TENANT, _spec(ids))
    await asyncio.wait_for(held.wait(), 10)
    # The live view already says COMPLETED: the delete is accepted.
    assert (await rig.engine.get(TENANT, job.id)).status is JobStatus.COMPLETED
    deleting = asyncio.ensure_future(rig.engine.delete(TENANT, job.id))
    await asyncio.sleep(0.2)
    release.set()
    await asyncio.wait_for(deleting, 10)
    await wait_until(lambda: not rig.engine._runs, timeout=10)
    assert await _rows_of(rig.db, job.id) == 0
    assert await JobRepository(rig.db).get(TENANT, job.id) is None
    with pytest.raises(JobNotFoundError):
        await rig.engine.get(TENANT, job.id)
    # its end was stored, and announced, before it went
    assert rig.events[-1] == ("JOB_COMPLETED", "COMPLETED")


async def test_a_delete_while_the_end_cannot_be_stored_stops_the_run(rig, monkeypatch):
    """The job's writes fail (the database refuses them for a while) as it
    ends: its run retries, the job reads finished, and a delete goes
    through.  When writes work again, the run writes nothing and stops."""
    monkeypatch.setattr(engine_module, "DELETE_WAIT_S", 0.2)
    ids = [await rig.device() for _ in range(6)]
    repo = rig.engine.repo
    record, down = repo.record, asyncio.Event()
    attempts = []

    async def failing(job, rows=(), fence=None):
        if job.status is not JobStatus.RUNNING and not down.is_set():
            attempts.append(len(rows))
            raise ConnectionError("the database is down (test)")
        await record(job, rows, fence)

    repo.record = failing
    job = await rig.engine.submit(TENANT, _spec(ids))
    await wait_until(lambda: attempts, timeout=10)
    await rig.engine.delete(TENANT, job.id)
    down.set()  # the database is back
    await wait_until(lambda: not rig.engine._runs, timeout=10)
    assert await _rows_of(rig.db, job.id) == 0
    assert await JobRepository(rig.db).get(TENANT, job.id) is None


async def test_a_write_for_a_deleted_job_stores_nothing(db_url):  # noqa: F811
    """The repository's own guard, for a write that races the delete from
    another node or connection: the job row is updated first (on
    PostgreSQL a lock the DELETE waits for, or is refused by), and without
    it no per-device row is stored."""
    from fleetrpc.store.db import open_database

    db = await open_database(db_url)
    try:
        repo = JobRepository(db)
        job = Job(id="6f1b3c8e-0000-4000-8000-000000000001", tenant_id=TENANT, customer_id=None,
                  created_by=None, spec=_spec(["d1", "d2"]), status=JobStatus.RUNNING)
        await repo.insert(job)
        assert await repo.delete(TENANT, job.id)
        row = JobDevice(job_id=job.id, device_id="d1", outcome=DeviceOutcome.SUCCEEDED, result={"ok": True})
        with pytest.raises(JobNotFoundError):
            await repo.record(job, [row])
        with pytest.raises(JobNotFoundError):
            await repo.save(job)
        assert await _rows_of(db, job.id) == 0
        assert await repo.get(TENANT, job.id) is None
    finally:
        await db.close()


async def test_migration_0205_drops_the_rows_of_deleted_jobs(db_url):  # noqa: F811
    """Rows the race left behind in a database migrated before the fix go
    with migration 0205; the rows of jobs that exist stay."""
    from fleetrpc.store.db import open_database

    db = await open_database(db_url)
    try:
        repo = JobRepository(db)
        job = Job(id="6f1b3c8e-0000-4000-8000-000000000002", tenant_id=TENANT, customer_id=None,
                  created_by=None, spec=_spec(["d1"]), status=JobStatus.RUNNING)
        await repo.insert(job)
        await repo.record(job, [JobDevice(job_id=job.id, device_id="d1", outcome=DeviceOutcome.SUCCEEDED)])
        await db.execute("INSERT INTO job_device (job_id, device_id, outcome) VALUES ($1, 'd1', 'SUCCEEDED')",
                         "6f1b3c8e-0000-4000-8000-00000000dead")
        await db.execute("DELETE FROM schema_version WHERE version = 205")
        assert await db.migrate() == [205]
        assert await _rows_of(db, "6f1b3c8e-0000-4000-8000-00000000dead") == 0
        assert await _rows_of(db, job.id) == 1
    finally:
        await db.close()
