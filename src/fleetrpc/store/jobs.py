"""The fleet-job tables (migration 0200): jobs and their per-device rows.

Every method that reads or changes a job takes its tenant; the only
cross-tenant read is :meth:`JobRepository.load_unfinished`, which the job
engine uses once at start to resume what a restart interrupted.

Writes are batched by the engine: each is one transaction holding the job
(status, cursor, settled prefix, counts, aggregate) and the per-device rows
recorded since the last one.  A device's row is written once, with its
outcome; a call in flight for longer than a second gets an IN_PROGRESS row
first, which its outcome then replaces.

A write never brings back a deleted job, nor stores rows for one: the job
row is updated first and the rows only if it was there
(:class:`~fleetrpc.jobs.model.JobNotFoundError` otherwise).  On
PostgreSQL that update locks the row, so a concurrent ``DELETE`` either
waits for the write and then deletes its rows too, or commits first and
the write finds no job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from ..errors import LeaseLostError
from ..jobs.model import (
    LISTED_PART_BYTES,
    DeviceOutcome,
    Job,
    JobCounts,
    JobDevice,
    JobNotFoundError,
    JobSpec,
    JobStatus,
    abridge_job,
)
from .base import storable_text

__all__ = ["JobRepository"]

_encode = msgspec.json.Encoder().encode
_spec_decoder = msgspec.json.Decoder(JobSpec)
_counts_decoder = msgspec.json.Decoder(JobCounts)
_any_decoder = msgspec.json.Decoder()

_JOB_COLUMNS = (
    "id, tenant_id, customer_id, created_by, spec, status, counts, aggregate, cursor, "
    "created_time, start_ts, finish_ts, cancellation_ts, general_error, settled_through"
)
#: The job's columns for a listing: a spec or aggregate over ``{limit}``
#: characters comes back NULL (PostgreSQL's length() counts characters).
_LISTED_COLUMNS = _JOB_COLUMNS.replace(
    "spec,", "CASE WHEN length(spec) <= {limit} THEN spec END,").replace(
    "aggregate,", "CASE WHEN length(aggregate) <= {limit} THEN aggregate END,")
_DEVICE_COLUMNS = "job_id, device_id, outcome, result, error, rpc_id, start_ts, finish_ts"
#: A job in a final state (the condition of the index of migration 0206, word for word).
_FINISHED = "status IN ('COMPLETED', 'ABORTED', 'CANCELLED', 'FAILED')"


#: Rows written by one statement (a flush may hold more: several statements).
ROWS_PER_STATEMENT = 1000

#: A row with an outcome replaces the device's IN_PROGRESS row; an
#: IN_PROGRESS row (a call in flight for over a second) never replaces one.
_UPSERT = (
    "ON CONFLICT (job_id, device_id) DO UPDATE SET outcome = excluded.outcome, result = excluded.result, "
    "error = excluded.error, rpc_id = excluded.rpc_id, start_ts = excluded.start_ts, "
    "finish_ts = excluded.finish_ts WHERE excluded.outcome <> 'IN_PROGRESS'"
)


def _text(value: Any) -> str | None:
    return None if value is None else _encode(value).decode()


def _storable(error: str | None) -> str | None:
    """An error text as every backend stores it (it may quote a device's
    reply, and a write refused for a NUL in it would hold back the job's
    every later outcome): :func:`~fleetrpc.store.base.storable_text`."""
    return None if error is None else storable_text(error)


def _job(row: Any) -> Job:
    return Job(
        id=row[0], tenant_id=row[1], customer_id=row[2], created_by=row[3],
        spec=_spec_decoder.decode(row[4]), status=JobStatus(row[5]),
        counts=_counts_decoder.decode(row[6]), aggregate=_any_decoder.decode(row[7]),
        cursor=row[8], created_time=row[9], start_ts=row[10], finish_ts=row[11],
        cancellation_ts=row[12], general_error=row[13], settled_through=row[14],
    )


def _device(row: Any) -> JobDevice:
    return JobDevice(
        job_id=row[0], device_id=row[1], outcome=DeviceOutcome(row[2]),
        result=None if row[3] is None else _any_decoder.decode(row[3]),
        error=row[4], rpc_id=row[5], start_ts=row[6], finish_ts=row[7],
    )


async def _check_fence(conn: Any, fence: tuple[str, int] | None) -> None:
    """In a cluster, a run's writes happen only while its node holds the
    job's lease: the lease row is locked (FOR SHARE) until the write
    commits, so a node taking the lease over waits for the commit and then
    reads what was written; a write after the take-over is refused."""
    if fence is None:
        return
    name, epoch = fence
    if await conn.fetchval("SELECT 1 FROM cluster_lease WHERE name = $1 AND epoch = $2 FOR SHARE",
                           name, epoch) is None:
        raise LeaseLostError(f"lease {name} moved to another node; this write is refused")


class JobRepository:
    """Jobs and their per-device rows on a :class:`~fleetrpc.store.db.Database`."""

    def __init__(self, db: Any) -> None:
        self.db = db

    async def insert(self, job: Job) -> None:
        await self.db.execute(
            f"INSERT INTO job ({_JOB_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            job.id, job.tenant_id, job.customer_id, job.created_by, _text(job.spec),
            job.status.value, _text(job.counts), _text(job.aggregate), job.cursor,
            job.created_time, job.start_ts, job.finish_ts, job.cancellation_ts, job.general_error,
            job.settled_through,
        )

    async def get(self, tenant_id: str, job_id: str) -> Job | None:
        row = await self.db.fetchrow(
            f"SELECT {_JOB_COLUMNS} FROM job WHERE id = $1 AND tenant_id = $2", job_id, tenant_id
        )
        return None if row is None else _job(row)

    async def list(
        self, tenant_id: str, page_size: int, page: int, *,
        customer_id: str | None = None, statuses: Sequence[JobStatus] = (),
    ) -> tuple[list[Job], int]:
        """A page of the tenant's jobs, newest first (a customer user sees
        its customer's jobs only), and how many there are in all.

        Each job as a listing shows it (:func:`~fleetrpc.jobs.model.abridge_job`):
        a page holds up to 10,000 jobs, and a job's spec may be megabytes.
        A spec over :data:`LISTED_PART_BYTES` is read on its own, and cut,
        one at a time; a larger aggregate is not read at all."""
        where = ["tenant_id = $1"]
        args: list[Any] = [tenant_id]
        if customer_id is not None:
            args.append(customer_id)
            where.append(f"customer_id = ${len(args)}")
        if statuses:
            marks = []
            for s in statuses:
                args.append(JobStatus(s).value)
                marks.append(f"${len(args)}")
            where.append(f"status IN ({', '.join(marks)})")
        cond = " AND ".join(where)
        total = await self.db.fetchval(f"SELECT count(*) FROM job WHERE {cond}", *args)
        n = len(args)
        rows = await self.db.fetch(
            f"SELECT {_LISTED_COLUMNS.format(limit=f'${n + 3}')} FROM job WHERE {cond} "
            f"ORDER BY created_time DESC, id LIMIT ${n + 1} OFFSET ${n + 2}",
            *args, page_size, page * page_size, LISTED_PART_BYTES,
        )
        jobs = []
        for r in rows:
            r = list(r)
            cut: tuple[str, ...] = ()
            if r[4] is None:  # a large spec: alone, and cut at once
                r[4] = await self.db.fetchval("SELECT spec FROM job WHERE id = $1", r[0])
                if r[4] is None:
                    continue  # deleted meanwhile
            if r[7] is None:
                r[7] = "{}"
                cut = ("result.aggregate",)
            job = _job(r)
            job.abridged = cut
            jobs.append(abridge_job(job))
        return jobs, int(total)

    async def delete(self, tenant_id: str, job_id: str) -> bool:
        return await self._delete(job_id, "tenant_id = $2", tenant_id)

    async def _delete(self, job_id: str, condition: str, *args: Any) -> bool:
        """Delete the job if ``condition`` holds, and then its per-device
        rows, in one transaction; whether it was there."""
        async with self.db.transaction() as conn:
            n = await conn.execute(f"DELETE FROM job WHERE id = $1 AND {condition}", job_id, *args)
            if n:
                await conn.execute("DELETE FROM job_device WHERE job_id = $1", job_id)
        return bool(n)

    async def purge_finished(self, before_ms: int, batch: int = 100) -> int:
        """Delete the jobs that finished (COMPLETED, ABORTED, CANCELLED,
        FAILED) before ``before_ms`` and their per-device rows; returns how
        many jobs.  One transaction per job: a job's rows may be 100,000
        (a transaction for many jobs would hold millions)."""
        n = 0
        while True:
            ids = [r[0] for r in await self.db.fetch(
                f"SELECT id FROM job WHERE {_FINISHED} AND finish_ts < $1 ORDER BY finish_ts LIMIT $2",
                before_ms, batch)]
            for job_id in ids:
                # The status again: only a finished job's rows can no longer change.
                n += await self._delete(job_id, _FINISHED)
            if len(ids) < batch:
                return n

    async def load_unfinished(self) -> list[Job]:
        """Every QUEUED or RUNNING job of every tenant (the engine resumes them)."""
        rows = await self.db.fetch(
            f"SELECT {_JOB_COLUMNS} FROM job WHERE status IN ('QUEUED', 'RUNNING') ORDER BY created_time"
        )
        return [_job(r) for r in rows]

    async def save(self, job: Job, fence: tuple[str, int] | None = None) -> None:
        """The job's status, counts, aggregate, cursor and times
        (:class:`JobNotFoundError` when it was deleted)."""
        if fence is None:
            await self._save(self.db, job)
            return
        async with self.db.transaction() as conn:
            await _check_fence(conn, fence)
            await self._save(conn, job)

    @staticmethod
    async def _save(conn: Any, job: Job) -> None:
        n = await conn.execute(
            "UPDATE job SET status = $2, counts = $3, aggregate = $4, cursor = $5, start_ts = $6, "
            "finish_ts = $7, cancellation_ts = $8, general_error = $9, settled_through = $10 WHERE id = $1",
            job.id, job.status.value, _text(job.counts), _text(job.aggregate), job.cursor,
            job.start_ts, job.finish_ts, job.cancellation_ts, job.general_error, job.settled_through,
        )
        if not n:
            raise JobNotFoundError(f"job {job.id} was deleted")

    async def record(self, job: Job, rows: Sequence[JobDevice] = (), fence: tuple[str, int] | None = None) -> None:
        """Store per-device rows with the job as it is now, in one
        transaction (the stored counts always match the stored rows).
        A row with an outcome replaces the device's IN_PROGRESS row; an
        IN_PROGRESS row never replaces an outcome.  The job first: rows
        written for a job deleted meanwhile would stay, orphans nobody can
        list or delete (:class:`JobNotFoundError`, nothing stored)."""
        async with self.db.transaction() as conn:
            await _check_fence(conn, fence)
            await self._save(conn, job)
            if rows:
                await self._upsert_rows(conn, rows)

    async def _upsert_rows(self, conn: Any, rows: Sequence[JobDevice]) -> None:
        # One statement for the batch, its rows one JSON array, on both
        # backends.  PostgreSQL: msgspec encodes it at ~0.5 us a row, where
        # asyncpg's encoding of eight arrays for unnest() cost 3.4-3.8 us of
        # the event loop's time (and executemany the server a bind and an
        # execute per row).  SQLite: one step on aiosqlite's thread instead
        # of one per row, each a GIL hand-off with the event loop.
        # A device twice in one statement is refused by PostgreSQL's
        # upsert: the last row of a device wins.
        # At most ROWS_PER_STATEMENT rows a statement: the JSON text of a
        # large flush stays small.
        if len({r.device_id for r in rows}) != len(rows):
            rows = list({r.device_id: r for r in rows}.values())
        elements = ("json_array_elements($2::json) AS t(e)" if self.db.dialect == "postgresql"
                    else "(SELECT value AS e FROM json_each($2)) AS t")
        # (WHERE true: SQLite's parser needs it between a SELECT and ON CONFLICT.)
        sql = (f"INSERT INTO job_device ({_DEVICE_COLUMNS}) SELECT $1, e->>0, e->>1, e->>2, e->>3, e->>4, "
               f"CAST(e->>5 AS BIGINT), CAST(e->>6 AS BIGINT) FROM {elements} WHERE true {_UPSERT}")
        for start in range(0, len(rows), ROWS_PER_STATEMENT):
            batch = _encode([
                (r.device_id, r.outcome.value, _text(r.result), _storable(r.error), r.rpc_id, r.start_ts, r.finish_ts)
                for r in rows[start:start + ROWS_PER_STATEMENT]
            ])
            await conn.execute(sql, rows[0].job_id, batch.decode())

    async def request_cancel(self, tenant_id: str, job_id: str) -> bool:
        """Flag a QUEUED or RUNNING job for cancellation by the node running
        it; False when it has finished (or is another tenant's)."""
        n = await self.db.execute(
            "UPDATE job SET cancel_requested = true WHERE id = $1 AND tenant_id = $2 "
            "AND status IN ('QUEUED', 'RUNNING')", job_id, tenant_id)
        return bool(n)

    async def cancel_requested(self, job_ids: Sequence[str]) -> list[str]:
        """Which of these jobs were asked to cancel."""
        if not job_ids:
            return []
        marks = ", ".join(f"${i}" for i in range(1, len(job_ids) + 1))
        rows = await self.db.fetch(f"SELECT id FROM job WHERE id IN ({marks}) AND cancel_requested", *job_ids)
        return [r[0] for r in rows]

    async def in_progress(self, job_id: str) -> list[JobDevice]:
        """Rows a restart left IN_PROGRESS (the engine decides their fate)."""
        rows = await self.db.fetch(
            f"SELECT {_DEVICE_COLUMNS} FROM job_device WHERE job_id = $1 AND outcome = 'IN_PROGRESS' "
            "ORDER BY device_id",
            job_id,
        )
        return [_device(r) for r in rows]

    async def settled(self, job_id: str, device_ids: Sequence[str]) -> set[str]:
        """Which of these devices have their outcome stored."""
        if not device_ids:
            return set()
        marks = ", ".join(f"${i}" for i in range(2, len(device_ids) + 2))
        rows = await self.db.fetch(
            f"SELECT device_id FROM job_device WHERE job_id = $1 AND device_id IN ({marks}) "
            "AND outcome <> 'IN_PROGRESS'", job_id, *device_ids)
        return {r[0] for r in rows}

    async def devices(
        self, tenant_id: str, job_id: str, page_size: int, page: int, *,
        outcome: DeviceOutcome | None = None,
    ) -> tuple[list[JobDevice], int]:
        """A page of a job's per-device rows in device order, optionally of
        one outcome, and how many there are.  Empty for another tenant's job."""
        args: list[Any] = [job_id, tenant_id]
        cond = "d.job_id = $1 AND j.id = d.job_id AND j.tenant_id = $2"
        if outcome is not None:
            args.append(DeviceOutcome(outcome).value)
            cond += " AND d.outcome = $3"
        total = await self.db.fetchval(f"SELECT count(*) FROM job_device d, job j WHERE {cond}", *args)
        rows = await self.db.fetch(
            f"SELECT d.job_id, d.device_id, d.outcome, d.result, d.error, d.rpc_id, d.start_ts, d.finish_ts "
            f"FROM job_device d, job j WHERE {cond} ORDER BY d.device_id "
            f"LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}",
            *args, page_size, page * page_size,
        )
        return [_device(r) for r in rows], int(total)
