"""The job engine: runs fleet jobs on the dispatcher, durably.

A job's run resolves its targets in pages (device-id order), starts them
no faster than its rollout allows and with at most ``maxInFlight`` calls
open, and records each outcome.  Lightweight jobs start a batch of devices
with one :meth:`Dispatcher.broadcast` (one completion for the batch, no
future per device); persistent jobs store a batch's persistent RPCs
together with :meth:`~fleetrpc.rpc.persistent.PersistentRpc.call_many` and
follow each by a future (no task per device).  A persistent RPC's id is
derived from the job and the device, so a restart can never store it twice.

Durability without duplicates: before a batch of devices is sent, the
job's cursor (the batch's last device) is committed together with its
settled prefix (every target up to it has its outcome stored); a device's
row is then written once, with its outcome, in the next batch of outcomes
(a call in flight for over :data:`IN_PROGRESS_AFTER_S` gets an IN_PROGRESS
row meanwhile, so listings show calls that wait for offline devices).
After a restart, the targets between the settled prefix and the cursor
that have no outcome stored are the ones that may be in flight: a
lightweight job records them FAILED ("interrupted, not sent again": the
call may or may not have reached the device, and sending it again could
run it twice); a persistent job stores each again, and a call stored
before the restart is refused as a duplicate and followed by its id to its
end.  The run then continues after the cursor.  (Writing an IN_PROGRESS
row for every device before sending it, and updating it after, doubled a
job's database writes: PostgreSQL's CPU per device fell by 40 % when they
went; docs/jobs.md.  A persistent job's batch could skip waiting for the
cursor -- its calls are committed under derived ids --, but measured it
cost more: 1.22x the engine's time against 1.03x, with 20 % more CPU.)

Several nodes (``leases``, a cluster on PostgreSQL): a job is run by the
node holding its named lease ``job:<id>``, so a rollout runs once.  Every
node looks for unfinished jobs nobody runs (every lease renewal interval)
and takes them; a node that loses a lease (its own lease lapsed) halts the
run at once without writing anything more, and the node that takes it over
resumes it as after a restart (from the cursor; its in-flight devices as
above).

Outcomes are written in batches (every ``flush_interval`` seconds) together
with the job's counts and aggregate, so the stored counts always match the
stored rows.

Retention (``ttl_days``, the server's ``jobs.ttl_days``): every
``ttl_check_interval_s`` the jobs that finished over ``ttl_days`` days ago
are deleted with their rows; in a cluster by the node holding the named
lease ``jobs:ttl`` only, as persistent calls' ``rpc:ttl``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from ..errors import (
    DeviceOfflineError,
    DuplicateRpcError,
    FleetRpcError,
    LeaseLostError,
    RpcTimeoutError,
    ValidationError,
)
from .aggregate import add_reply
from .model import (
    MAX_PER_MINUTE,
    TERMINAL_JOB,
    DeviceOutcome,
    Job,
    JobDevice,
    JobNotFoundError,
    JobSpec,
    JobStatus,
    Rollout,
    abridge_job,
    check_spec,
)
from .targets import PAGE_SIZE, ListTargets, TargetSource

__all__ = ["JobEngine", "JobNotFoundError", "job_rpc_id", "JOB_EVENTS"]

log = logging.getLogger("fleetrpc.jobs")

#: Event types a job emits, one per status change (JOB_PROGRESS throttled).
JOB_EVENTS = ("JOB_STARTED", "JOB_PROGRESS", "JOB_COMPLETED", "JOB_ABORTED", "JOB_CANCELLED", "JOB_FAILED")
_FINAL_EVENT = {
    JobStatus.COMPLETED: "JOB_COMPLETED",
    JobStatus.ABORTED: "JOB_ABORTED",
    JobStatus.CANCELLED: "JOB_CANCELLED",
    JobStatus.FAILED: "JOB_FAILED",
}
#: A call in flight longer than this (s) gets an IN_PROGRESS row before its
#: outcome arrives: a listing shows it, and a restart finds it even if its
#: device has left the job's targets meanwhile.
IN_PROGRESS_AFTER_S = 1.0
_INTERRUPTED = "interrupted by a server restart; not sent again (it may or may not have reached the device)"


def job_rpc_id(job_id: str, device_id: str) -> str:
    """The persistent RPC id of a job's call to a device: the same after a
    restart, so the store refuses a second copy.  ``uuid5(job, device)``."""
    return _rpc_id(uuid.UUID(job_id).bytes, device_id)


def _rpc_id(namespace: bytes, device_id: str) -> str:
    """``str(uuid.uuid5(UUID(bytes=namespace), device_id))`` without two
    UUID objects: computed once or twice per device of a persistent job,
    uuid5 was a fifth of the job engine's CPU."""
    h = bytearray(hashlib.sha1(namespace + device_id.encode()).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50  # version 5
    h[8] = (h[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


#: An RPC id as long as a job's (uuid5), to size a persistent request.
_SAMPLE_RPC_ID = str(uuid.UUID(int=0))


def _now_ms() -> int:
    return int(time.time() * 1000)


_replace = msgspec.structs.replace


def _copy(job: Job) -> Job:
    """``job`` as it is now, for a write or a caller: its counts and
    aggregate copied, its spec shared (a spec never changes once the job is
    submitted).  Copying the spec too copied a ``deviceIds`` list with every
    write: 3 ms a write for 100,000 ids, a third of the engine's CPU per
    device in such a job, and more the larger the job."""
    return _replace(job, counts=_replace(job.counts), aggregate=msgspec.to_builtins(job.aggregate))


#: Seconds of rollout starts a pacer may owe and catch up on at once.
BURST_S = 0.5
#: Paced starts go in batches of this many seconds of the rate (at least
#: one device): each batch is a transaction, and one per device made a
#: 200/s job cost a quarter of a core.
TICK_S = 0.05


class Pacer:
    """A token bucket for the rollout rate; ``None`` rate means unlimited.
    Starts are taken in batches of :data:`TICK_S` of the rate.  At most
    :data:`BURST_S` of tokens accumulate: a late wake-up starts
    what it missed, up to that, and no more.  (50 ms lost the tokens of
    every longer stall -- a start transaction queued behind an outcome
    write on a busy machine --, 1-2 % of the rate over a minute.)"""

    def __init__(self, rollout: Rollout, clock: Callable[[], float]) -> None:
        self._max = rollout.max_per_minute
        self._exp = rollout.exponential_rate
        self._clock = clock
        self._tokens = 1.0
        self._first = True  # the first device starts at once
        self._last = clock()

    def rate(self, succeeded: int) -> float | None:
        """Devices per second now (``succeeded`` drives the exponential ramp)."""
        exp = self._exp
        if exp is not None:
            # The ramp stops at maxPerMinute, else at the highest rate a spec
            # may ask for: uncapped, factor 2 every 10 devices overflowed a
            # float after 10,240 successes (OverflowError) and failed the job.
            cap = self._max if self._max is not None else MAX_PER_MINUTE
            try:
                per_min = min(exp.base_per_minute * exp.increment_factor ** (succeeded // exp.every_succeeded), cap)
            except OverflowError:
                per_min = cap
            return per_min / 60.0
        return None if self._max is None else self._max / 60.0

    def take(self, want: int, succeeded: int) -> int:
        """Take up to ``want`` starts allowed now."""
        rate = self.rate(succeeded)
        if rate is None:
            return want
        now = self._clock()
        self._tokens = min(self._tokens + (now - self._last) * rate, max(1.0, rate * BURST_S))
        self._last = now
        n = min(want, int(self._tokens))
        if n < min(want, _quantum(rate)) and not self._first:
            return 0  # wait for a batch's worth
        self._first = False
        self._tokens -= n
        return n

    def delay(self, succeeded: int, want: int = 1) -> float | None:
        """Seconds until the next batch of up to ``want`` starts is allowed
        (``None``: not limited)."""
        rate = self.rate(succeeded)
        if rate is None:
            return None
        need = min(max(want, 1), _quantum(rate))
        return max(0.001, (need - self._tokens) / rate)


def _quantum(rate: float) -> int:
    return max(1, int(rate * TICK_S))


class JobEngine:
    """Runs fleet jobs on a dispatcher (and a persistent-RPC engine for
    persistent jobs), stored in a :class:`~fleetrpc.store.jobs.JobRepository`.

    ``targets(job)`` returns the :class:`TargetSource` of a job; by default
    only ``deviceIds`` targets are supported (the server plugs its device
    registry in).  ``emit(event_type, body)`` receives every job event.
    ``ttl_days`` (0: keep them) deletes the jobs that finished longer ago,
    with their rows, every ``ttl_check_interval_s`` seconds.
    """

    def __init__(
        self,
        dispatcher: Any,
        repo: Any,
        *,
        persistent: Any = None,
        targets: Callable[[Job], TargetSource] | None = None,
        emit: Callable[[str, dict], Any] | None = None,
        default_timeout_ms: int | None = None,
        progress_interval: float = 1.0,
        flush_interval: float = 0.05,
        leases: Any = None,
        ttl_days: int = 0,
        ttl_check_interval_s: float = 7200.0,
    ) -> None:
        self.dispatcher = dispatcher
        self.repo = repo
        self.persistent = persistent
        self._targets = targets or _list_targets_only
        self._emit_hook = emit
        settings = getattr(dispatcher, "settings", None)
        self.default_timeout_ms = default_timeout_ms or getattr(settings, "default_timeout_ms", 10_000)
        self.progress_interval = progress_interval
        self.flush_interval = flush_interval
        self._runs: dict[str, _Run] = {}
        self._closed = False
        self._leases = leases if leases is not None and not leases.single_node else None
        self._watcher: asyncio.Task | None = None
        if type(ttl_days) is not int or ttl_days < 0:
            raise ValidationError(f"ttl_days must be a whole number of days >= 0, not {ttl_days!r}")
        self.ttl_days = ttl_days
        self.ttl_check_interval_s = ttl_check_interval_s
        self._ttl_task: asyncio.Task | None = None
        #: finished jobs deleted by the retention since the start
        self.purged = 0

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> int:
        """Resume every job a restart left QUEUED or RUNNING; returns how many.
        In a cluster: those whose lease this node takes, and from now on
        every unfinished job whose runner is gone."""
        if self.ttl_days > 0 and self.ttl_check_interval_s > 0:
            self._ttl_task = asyncio.ensure_future(self._ttl_loop())
        if self._leases is not None:
            self._leases.on_named_lost(self._leases_lost)
            n = await self._adopt()
            self._watcher = asyncio.ensure_future(self._watch())
            return n
        jobs = await self.repo.load_unfinished()
        for job in jobs:
            self._launch(job)
        return len(jobs)

    async def purge(self) -> int:
        """Delete the jobs that finished over ``ttl_days`` days ago and their
        per-device rows (none when ``ttl_days`` is 0); returns how many jobs."""
        if self.ttl_days <= 0:
            return 0
        n = await self.repo.purge_finished(_now_ms() - self.ttl_days * 86_400_000)
        self.purged += n
        return n

    async def _ttl_loop(self) -> None:
        while not self._closed:
            try:
                # One node of a cluster purges (the lease moves on failure).
                if self._leases is None or await self._leases.acquire_named("jobs:ttl"):
                    n = await self.purge()
                    if n:
                        log.info("jobs TTL clean-up removed %d finished jobs", n)
            except FleetRpcError as e:
                log.warning("jobs TTL clean-up failed: %s", e)
            await asyncio.sleep(self.ttl_check_interval_s)

    async def _adopt(self) -> int:
        """Run the unfinished jobs whose lease this node can take."""
        n = 0
        for job in await self.repo.load_unfinished():
            if self._closed or job.id in self._runs:
                continue
            if await self._leases.acquire_named(_lease(job.id)) and not self._closed and job.id not in self._runs:
                # Read again under the lease: the former runner may have
                # finished it between the listing and the lease.
                fresh = await self.repo.get(job.tenant_id, job.id)
                if fresh is None or fresh.status in TERMINAL_JOB:
                    await self._leases.release_named(_lease(job.id))
                    continue
                log.info("job %s: taken over by this node", job.id)
                self._launch(fresh)
                n += 1
        return n

    async def _watch(self) -> None:
        interval = self._leases.settings.renew_interval
        while not self._closed:
            await asyncio.sleep(interval)
            try:
                await self._adopt()
                for job_id in await self.repo.cancel_requested(list(self._runs)):
                    run = self._runs.get(job_id)
                    if run is not None and run.stop_status is None:
                        log.info("job %s: cancelled through another node", job_id)
                        run.stop(JobStatus.CANCELLED, None)
            except FleetRpcError as e:
                log.warning("looking for jobs to take over failed (%s); retrying", e)

    def _leases_lost(self, names: list[str]) -> None:
        for name in names:
            if name.startswith("job:"):
                run = self._runs.get(name[4:])
                if run is not None:
                    log.warning("job %s: lease lost; another node resumes it", run.job.id)
                    run.abandon()

    async def close(self) -> None:
        """Stop running jobs; they stay RUNNING in the store and resume on
        the next start (in-flight devices then count as interrupted)."""
        self._closed = True
        for task in (self._watcher, self._ttl_task):
            if task is not None:
                task.cancel()
        runs = list(self._runs.values())
        for run in runs:
            run.halt()
        if runs:
            await asyncio.gather(*(r.task for r in runs), return_exceptions=True)

    # -- API ----------------------------------------------------------------

    async def submit(
        self,
        tenant_id: str,
        spec: JobSpec,
        *,
        customer_id: str | None = None,
        created_by: str | None = None,
    ) -> Job:
        """Store a new job and start running it; returns it as stored."""
        if self._closed:
            raise FleetRpcError("the job engine is closed")
        check_spec(spec)
        if spec.persistent and self.persistent is None:
            raise ValidationError("persistent jobs need a persistent-RPC engine")
        job = Job(
            id=str(uuid.uuid4()), tenant_id=tenant_id, customer_id=customer_id,
            created_by=created_by, spec=spec, created_time=_now_ms(),
        )
        self._targets(job)  # an unsupported selector fails here, before storing
        request_payload = getattr(self.dispatcher, "request_payload", None)
        if request_payload is not None:
            # A request over the transport's max_payload (or params that are
            # not JSON) is refused now, not by every device's call: a
            # persistent call carries its id in the request too.
            request_payload(spec.method, spec.params, _SAMPLE_RPC_ID if spec.persistent else None)
        await self.repo.insert(job)
        if self._leases is not None and not await self._leases.acquire_named(_lease(job.id)):
            return _copy(job)  # QUEUED: a node that can take its lease runs it
        self._launch(job)
        return _copy(job)

    async def get(self, tenant_id: str, job_id: str) -> Job:
        run = self._runs.get(job_id)
        if run is not None and run.job.tenant_id == tenant_id:
            return _copy(run.job)
        job = await self.repo.get(tenant_id, job_id)
        if job is None:
            raise JobNotFoundError(f"no job {job_id!r}")
        return job

    async def list(self, tenant_id: str, page_size: int, page: int, **query: Any) -> tuple[list[Job], int]:
        """A page of jobs as a listing shows them: large parts left out or
        cut (:func:`~fleetrpc.jobs.model.abridge_job`, the ``abridged`` field)."""
        jobs, total = await self.repo.list(tenant_id, page_size, page, **query)
        return [self._live_view(j) for j in jobs], total

    async def devices(self, tenant_id: str, job_id: str, page_size: int, page: int, **query: Any):
        await self.get(tenant_id, job_id)  # 404 for another tenant's job
        run = self._runs.get(job_id)
        if run is not None:
            await run.flush(in_flight=True)
        return await self.repo.devices(tenant_id, job_id, page_size, page, **query)

    async def cancel(self, tenant_id: str, job_id: str) -> Job:
        """Cancel a job: targets not started are skipped; in-flight calls
        finish (or are cancelled with ``cancelInFlight``).  Returns the job
        once it has stopped, or after :data:`CANCEL_WAIT_S` still RUNNING
        (its calls in flight end, then it ends CANCELLED).  A finished job
        is returned unchanged."""
        run = self._runs.get(job_id)
        if run is not None and run.job.tenant_id == tenant_id:
            run.stop(JobStatus.CANCELLED, None)
            # Calls in flight end first (a persistent one waiting for an
            # offline device: when it expires), so the wait is bounded: the
            # job is then returned RUNNING, with its cancellationTs, and ends
            # CANCELLED by itself.  (Unbounded, the request hung that long.)
            try:
                await asyncio.wait_for(asyncio.shield(run.task), CANCEL_WAIT_S)
            except asyncio.TimeoutError:
                pass
            return _copy(run.job)
        job = await self.get(tenant_id, job_id)
        if self._leases is not None and job.status not in TERMINAL_JOB:
            # Run by another node (or about to be): flag it; the node running
            # it cancels it at its next look; return the job once stopped.
            if await self.repo.request_cancel(tenant_id, job_id):
                loop = asyncio.get_running_loop()
                deadline = loop.time() + CANCEL_WAIT_S
                while loop.time() < deadline:
                    await asyncio.sleep(0.1)
                    job = await self.get(tenant_id, job_id)
                    if job.status in TERMINAL_JOB:
                        break
            return job
        if job.status is JobStatus.QUEUED:  # stored, run by no one here
            job.status = JobStatus.CANCELLED
            job.cancellation_ts = job.finish_ts = _now_ms()
            job.counts.skipped += job.counts.queued
            job.counts.queued = 0
            await self.repo.save(job)
            self._emit("JOB_CANCELLED", job)
        return job

    async def delete(self, tenant_id: str, job_id: str) -> None:
        """Delete a finished job and its per-device rows (cancel it first).

        A job reads finished as soon as its run decides so, before its last
        outcomes and its end are stored: the delete waits for that write
        (:data:`DELETE_WAIT_S` at most: the database may be refusing it),
        and a run still there afterwards stops without writing anything
        more (the repository also refuses rows for a job that is gone)."""
        job = await self.get(tenant_id, job_id)
        if job.status not in TERMINAL_JOB:
            raise ValidationError("cancel the job before deleting it")
        run = self._runs.get(job_id)
        if run is not None:
            try:
                await asyncio.wait_for(asyncio.shield(run.task), DELETE_WAIT_S)
            except asyncio.TimeoutError:
                pass
        await self.repo.delete(tenant_id, job_id)
        run = self._runs.get(job_id)
        if run is not None:
            log.info("job %s: deleted before its end was stored; its run stops", job_id)
            run.abandon()

    async def wait(self, tenant_id: str, job_id: str, timeout: float | None = None) -> Job:
        """Wait until the job has finished; returns it."""
        run = self._runs.get(job_id)
        if run is not None and run.job.tenant_id == tenant_id:
            await asyncio.wait_for(asyncio.shield(run.task), timeout)
        return await self.get(tenant_id, job_id)

    # -- internals ----------------------------------------------------------

    def _live_view(self, job: Job) -> Job:
        run = self._runs.get(job.id)
        return abridge_job(_copy(run.job)) if run is not None else job

    def _launch(self, job: Job) -> None:
        run = _Run(self, job)
        if self._leases is not None:
            epoch = self._leases.named_token(_lease(job.id))
            if epoch is None:
                return  # lost already: the node holding it runs the job
            run.fence = (_lease(job.id), epoch)
        self._runs[job.id] = run
        run.task = asyncio.ensure_future(run.run())
        run.task.add_done_callback(lambda _t, jid=job.id: self._run_ended(jid, run))

    def _run_ended(self, job_id: str, run: "_Run") -> None:
        if self._runs.get(job_id) is run:
            del self._runs[job_id]
        if self._leases is not None and run.job.status in TERMINAL_JOB:
            asyncio.ensure_future(self._release(job_id))

    async def _release(self, job_id: str) -> None:
        try:
            await self._leases.release_named(_lease(job_id))
        except FleetRpcError:
            pass  # it lapses with the session

    def _emit(self, type_: str, job: Job) -> None:
        if self._emit_hook is not None:
            try:
                self._emit_hook(type_, msgspec.to_builtins(job.to_json()))
            except Exception:
                log.exception("job event sink failed")


#: How long cancel() waits for a job to stop (s): for its calls in flight to
#: end, or for another node that runs it to stop it.
CANCEL_WAIT_S = 30.0
#: How long delete() waits for a finished job's last write (s).
DELETE_WAIT_S = 5.0


def _lease(job_id: str) -> str:
    """The named lease of a job's run."""
    return f"job:{job_id}"


def _list_targets_only(job: Job) -> TargetSource:
    kind, value = job.spec.targets.selector()
    if kind != "deviceIds":
        raise ValidationError(f"targets.{kind} needs the server's device registry; use deviceIds")
    return ListTargets(value)


def classify(ok: bool, result: Any, error: BaseException | None) -> tuple[DeviceOutcome, Any, str | None]:
    """A lightweight call's end as a job outcome: ``(outcome, result, error)``."""
    if ok:
        err = result.get("error") if type(result) is dict and len(result) == 1 else None
        if type(err) is dict and isinstance(err.get("code"), str):
            return DeviceOutcome.FAILED, result, f"{err.get('code')}: {err.get('message')}"
        return DeviceOutcome.SUCCEEDED, result, None
    if isinstance(error, RpcTimeoutError):
        return DeviceOutcome.TIMED_OUT, None, str(error)
    if isinstance(error, DeviceOfflineError):
        return DeviceOutcome.OFFLINE, None, str(error)
    return DeviceOutcome.FAILED, None, f"{type(error).__name__}: {error}"


def classify_persistent(record: Any) -> tuple[DeviceOutcome, Any, str | None]:
    """A persistent call's final record as a job outcome."""
    status = getattr(record.status, "value", record.status)
    if status in ("SUCCESSFUL", "DELIVERED"):
        return classify(True, record.response, None)
    if status == "EXPIRED":
        if not record.attempts:
            return DeviceOutcome.OFFLINE, None, record.error or "not delivered before the expiration time"
        return DeviceOutcome.TIMED_OUT, None, record.error
    if status == "DELETED":
        return DeviceOutcome.CANCELLED, None, "the RPC was deleted"
    if status == "TIMEOUT":
        return DeviceOutcome.TIMED_OUT, None, record.error
    return DeviceOutcome.FAILED, None, record.error


class _Batch:
    """Devices started together: where they sit in the targets and how many
    have no outcome yet (the settled prefix ends before the oldest batch
    that has some)."""

    __slots__ = ("after", "devices", "ts", "unsettled")

    def __init__(self, after: str | None, devices: Sequence[str], ts: int) -> None:
        self.after = after  # the cursor before the batch: its devices sort after it
        self.devices = devices
        self.ts = ts
        self.unsettled = len(devices)


class _Run:
    """One job being run by this engine."""

    def __init__(self, engine: JobEngine, job: Job) -> None:
        self.engine = engine
        self.job = job
        self.task: asyncio.Task | None = None
        self.inflight: dict[str, _Batch] = {}  # device -> the batch it was started in
        self.rows: list[JobDevice] = []        # outcomes not yet written
        self._batches: deque[_Batch] = deque()  # started, with devices in flight, in target order
        self._rowless: deque[_Batch] = deque()  # started, IN_PROGRESS rows not written, in start order
        self.wake = asyncio.Event()
        self.stop_status: JobStatus | None = None
        self._halted = False
        self._abandoned = False
        #: (lease name, epoch) fencing this run's writes in a cluster
        self.fence: tuple[str, int] | None = None
        self._tasks: set[asyncio.Future] = set()  # tasks, and the futures following persistent calls
        # The first outcome reports progress at once, whatever the clock
        # reads (0.0 made it wait until the monotonic clock passed the interval).
        self._last_progress = float("-inf")
        self._flushing: asyncio.Future | None = None
        spec = job.spec
        self._timeout_s = (spec.timeout or engine.default_timeout_ms) / 1000.0
        self._ns = uuid.UUID(job.id).bytes  # of the persistent RPC ids

    def rpc_id(self, device: str) -> str:
        """The persistent RPC id of this job's call to ``device``."""
        return _rpc_id(self._ns, device)

    # -- control --------------------------------------------------------------

    def stop(self, status: JobStatus, reason: str | None) -> None:
        """Stop starting targets; the run ends once in-flight calls end."""
        if self.stop_status is not None:
            return
        job = self.job
        self.stop_status = status
        if status is JobStatus.CANCELLED:
            job.cancellation_ts = _now_ms()
        if reason:
            job.general_error = reason
        if job.spec.cancel_in_flight and self.inflight:
            now = _now_ms()
            for device in list(self.inflight):
                self._record(device, DeviceOutcome.CANCELLED, None, "cancelled while in flight", now)
                if job.spec.persistent:
                    self._spawn(self._delete_rpc(device))
        self.wake.set()

    def halt(self) -> None:
        """The engine is closing: end the run where it is (resumed later)."""
        self._halted = True
        self.wake.set()

    def abandon(self) -> None:
        """This node lost the job's lease: stop at once and write nothing
        more (the node that takes the lease resumes from what is stored)."""
        self._abandoned = True
        self.halt()
        for task in list(self._tasks):
            task.cancel()

    async def flush(self, *, in_flight: bool = False) -> None:
        """Write the outcomes recorded so far (``in_flight``: and an
        IN_PROGRESS row for every call in flight, however recent: a listing
        then shows them all)."""
        await self._persist(in_flight=in_flight)

    async def _persist(self, *, job_row: bool = False, in_flight: bool = False) -> None:
        """Write the outcomes recorded so far, the IN_PROGRESS rows of calls
        in flight for long (``in_flight``: of all), and the job as it is at
        this moment (its cursor and settled prefix too): the stored counts
        always match the stored rows, also when the run stops between two
        writes (a crash, a lease taken over).  ``job_row``: write the job
        even with no rows.  One write at a time, in order."""
        while self._flushing is not None:
            await asyncio.shield(self._flushing)
        if self._abandoned:
            return
        # Rows and job together, with no await between: outcomes recorded
        # while the write is on its way go into the next one, counts too.
        rows, self.rows = self.rows, []
        marked = self._in_progress_rows(rows, everything=in_flight)
        if not rows and not job_row:
            return
        self._settle()
        snapshot = _copy(self.job)
        self._flushing = asyncio.get_running_loop().create_future()
        try:
            await self.engine.repo.record(snapshot, rows, self.fence)
            for batch in marked:
                batch.devices = ()  # their rows are written: only the counts are needed now
        except (LeaseLostError, JobNotFoundError):  # taken over, or deleted: write nothing more
            self.abandon()
            raise
        except BaseException:
            # Kept for the next attempt, also when cancelled mid-write
            # (writing an outcome twice is harmless; losing it is not).
            self.rows[:0] = [r for r in rows if r.outcome is not DeviceOutcome.IN_PROGRESS]
            self._rowless.extendleft(reversed(marked))
            raise
        finally:
            fut, self._flushing = self._flushing, None
            fut.set_result(None)

    def _in_progress_rows(self, rows: list[JobDevice], *, everything: bool) -> list[_Batch]:
        """Add IN_PROGRESS rows for the calls of batches started over
        :data:`IN_PROGRESS_AFTER_S` ago (``everything``: of every batch)
        still in flight; returns those batches."""
        rowless = self._rowless
        if not rowless:
            return []
        due = _now_ms() - int(IN_PROGRESS_AFTER_S * 1000)
        marked = []
        job_id = self.job.id
        persistent = self.job.spec.persistent
        inflight = self.inflight
        while rowless:
            batch = rowless[0]
            if batch.unsettled and not everything and batch.ts > due:
                break
            rowless.popleft()
            if not batch.unsettled:  # settled in time: no IN_PROGRESS row
                batch.devices = ()
                continue
            marked.append(batch)
            rows.extend(
                JobDevice(job_id=job_id, device_id=d, outcome=DeviceOutcome.IN_PROGRESS, start_ts=batch.ts,
                          rpc_id=self.rpc_id(d) if persistent else None)
                for d in batch.devices if inflight.get(d) is batch
            )
        return marked

    def _settle(self) -> None:
        """Move the job's settled prefix past the batches whose devices all
        have an outcome (recorded now, so written with this snapshot)."""
        batches = self._batches
        while batches and not batches[0].unsettled:
            batches.popleft()
        job = self.job
        job.settled_through = batches[0].after if batches else job.cursor

    # -- the run ----------------------------------------------------------------

    async def run(self) -> None:
        engine, job = self.engine, self.job
        try:
            targets = engine._targets(job)
            if job.status is JobStatus.QUEUED:
                total = await targets.count()
                job.status = JobStatus.RUNNING
                job.start_ts = _now_ms()
                job.counts.total = job.counts.queued = total
                await engine.repo.save(job, self.fence)
                engine._emit("JOB_STARTED", job)
            else:
                await self._recover(targets)
            flusher = asyncio.ensure_future(self._flush_loop())
            try:
                await self._roll_out(targets)
                while self.inflight and not self._halted:
                    self.wake.clear()
                    await self.wake.wait()
            finally:
                flusher.cancel()
                await asyncio.gather(flusher, return_exceptions=True)
            if self._halted:
                await self.flush()
                return
            await self._end(self.stop_status or JobStatus.COMPLETED)
        except asyncio.CancelledError:
            raise
        except LeaseLostError:
            self._abandoned = True
            log.warning("job %s: lease lost; the node that took it over resumes it", job.id)
        except JobNotFoundError:
            self._abandoned = True
            log.info("job %s: deleted; its run stops", job.id)
        except Exception as exc:
            if self._abandoned:
                return
            log.exception("job %s failed", job.id)
            job.general_error = f"{type(exc).__name__}: {exc}"
            try:
                await self._end(JobStatus.FAILED)
            except Exception:
                log.exception("job %s: could not store its failure", job.id)
        finally:
            for task in list(self._tasks):
                task.cancel()

    async def _end(self, status: JobStatus) -> None:
        """:meth:`_finish`, retried while the database refuses the write
        (backing off up to 30 s) until it is stored or the engine closes
        (then the job is resumed on the next start).  Given up at once,
        the job stayed RUNNING in the store with nothing running it: it
        could be neither cancelled nor deleted until a restart."""
        delay = 0.5
        while True:
            try:
                await self._finish(status)
                return
            except (LeaseLostError, JobNotFoundError):
                raise
            except Exception as exc:
                if self._halted or self._abandoned:
                    raise
                log.warning("job %s: storing its end (%s) failed (%s); retrying in %.1f s",
                            self.job.id, status.value, exc, delay)
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), delay)  # halt() wakes it
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, 30.0)

    async def _roll_out(self, targets: TargetSource) -> None:
        job = self.job
        pacer = Pacer(job.spec.rollout, asyncio.get_running_loop().time)
        max_in_flight = job.spec.rollout.max_in_flight
        # Not limited by a rate, the rollout waits until a start can carry
        # an eighth of the in-flight bound (or what is left of the page):
        # every start is a transaction, and starting as each call ended
        # made hundreds of them of a few devices each, which cost a
        # SQLite-backed job as much as all its rows.
        min_batch = max(1, max_in_flight // 8)
        buffer: deque[str] = deque()
        resolved = job.cursor
        exhausted = False
        while self.stop_status is None and not self._halted:
            self.wake.clear()
            if not buffer and not exhausted:
                page = await targets.page(resolved, PAGE_SIZE)
                exhausted = len(page) < PAGE_SIZE
                if page:
                    resolved = page[-1]
                    buffer.extend(page)
            if not buffer:
                return
            room = min(len(buffer), max_in_flight - len(self.inflight))
            if room < min(min_batch, len(buffer)) and self.inflight and pacer.rate(job.counts.succeeded) is None:
                room = 0  # wait for more calls to end
            n = pacer.take(room, job.counts.succeeded) if room > 0 else 0
            if n > 0:
                await self._start([buffer.popleft() for _ in range(n)])
                continue
            delay = pacer.delay(job.counts.succeeded, room) if room > 0 else None
            try:
                await asyncio.wait_for(self.wake.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def _start(self, batch: Sequence[str]) -> None:
        job, spec = self.job, self.job.spec
        if self._halted:
            return
        started = _Batch(job.cursor, batch, _now_ms())
        c = job.counts
        n = len(batch)
        if c.queued < n:  # devices added since the count
            c.total += n - c.queued
            c.queued = n
        c.queued -= n
        c.in_progress += n
        job.cursor = batch[-1]
        self._batches.append(started)
        await self._persist(job_row=True)  # the cursor is committed before anything is sent
        if self._abandoned:
            return  # the lease moved meanwhile: its new runner recovers them from the cursor
        inflight = self.inflight
        for d in batch:
            inflight[d] = started
        self._rowless.append(started)
        if spec.persistent:
            self._spawn(self._persistent_calls(batch))
        else:
            try:
                bc = self.engine.dispatcher.broadcast(
                    batch, spec.method, spec.params, timeout=self._timeout_s, oneway=spec.oneway,
                )
            except FleetRpcError as exc:  # the dispatcher closed meanwhile
                now = _now_ms()
                for d in batch:
                    self._record(d, DeviceOutcome.FAILED, None, f"{type(exc).__name__}: {exc}", now)
                return
            self._spawn(self._follow(bc))

    async def _follow(self, bc: Any) -> None:
        async for o in bc:
            outcome, result, error = classify(o.ok, o.result, o.error)
            self._record(o.device, outcome, result, error, _now_ms())

    async def _persistent_calls(self, batch: Sequence[str]) -> None:
        """Store and start a batch's persistent calls together, then follow
        each to its end (a future per call, no task per device)."""
        job, spec = self.job, self.job.spec
        engine = self.engine.persistent
        ids = [self.rpc_id(d) for d in batch]
        try:
            stored = await engine.call_many(
                batch, spec.method, spec.params, request_uuids=ids,
                timeout_ms=spec.timeout, expiration_time=spec.expiration_time,
                oneway=spec.oneway, retries=spec.retries, tenant_id=job.tenant_id,
            )
        except FleetRpcError as exc:  # the engine closed meanwhile
            stored = [exc] * len(batch)
        now = _now_ms()
        for device, rpc_id, result in zip(batch, ids, stored):
            # A DuplicateRpcError: stored before a restart; follow it.
            if type(result) is str or isinstance(result, DuplicateRpcError):
                self._follow_persistent(device, rpc_id, engine.final(rpc_id, tenant_id=job.tenant_id))
            else:
                self._record(device, DeviceOutcome.FAILED, None, f"{type(result).__name__}: {result}", now, rpc_id)

    def _follow_persistent(self, device: str, rpc_id: str, final: asyncio.Future) -> None:
        def done(fut: asyncio.Future) -> None:
            self._tasks.discard(fut)
            if fut.cancelled():
                return  # the run ended (halted, or the lease was lost)
            exc = fut.exception()
            if exc is not None:
                self._record(device, DeviceOutcome.FAILED, None, f"{type(exc).__name__}: {exc}", _now_ms(), rpc_id)
            else:
                self._record(device, *classify_persistent(fut.result()), _now_ms(), rpc_id)

        self._tasks.add(final)
        final.add_done_callback(done)

    async def _delete_rpc(self, device: str) -> None:
        try:
            await self.engine.persistent.delete(self.rpc_id(device), tenant_id=self.job.tenant_id)
        except FleetRpcError:
            pass  # already finished, or never stored

    async def _recover(self, targets: TargetSource) -> None:
        """Decide the fate of the devices a restart may have left in flight:
        the targets between the settled prefix and the cursor with no
        outcome stored, and those with an IN_PROGRESS row."""
        job, repo = self.job, self.engine.repo
        found = {row.device_id: row.start_ts for row in await repo.in_progress(job.id)}
        after, cursor = job.settled_through, job.cursor
        while cursor is not None and after != cursor:
            page = await targets.page(after, PAGE_SIZE)
            within = [d for d in page if d <= cursor]
            settled = await repo.settled(job.id, within)
            for d in within:
                if d not in settled:
                    found.setdefault(d, None)
            if len(within) < PAGE_SIZE:
                break
            after = within[-1]
        c = job.counts
        # Devices that left the targets unsettled, or joined them inside
        # the range since, change the count of those in flight (and the total).
        c.total += len(found) - c.in_progress
        c.in_progress = len(found)
        if not found:
            return
        now = _now_ms()
        batch = _Batch(job.settled_through, sorted(found), min((t for t in found.values() if t), default=now))
        self._batches.append(batch)
        for d in batch.devices:
            self.inflight[d] = batch
        if job.spec.persistent:
            self._rowless.append(batch)
            # Stored before the restart: refused as a duplicate, and followed.
            self._spawn(self._persistent_calls(batch.devices))
            return
        for d in batch.devices:
            self._record(d, DeviceOutcome.FAILED, None, _INTERRUPTED, now)
        await self.flush()

    # -- outcomes -------------------------------------------------------------

    def _record(self, device: str, outcome: DeviceOutcome, result: Any, error: str | None, now: int,
                rpc_id: str | None = None) -> None:
        """Count a device's outcome and keep its row for the next write
        (``rpc_id``: its persistent call's, when the caller has it at hand)."""
        batch = self.inflight.pop(device, None)
        if batch is None:
            return  # cancelled while in flight, or a duplicate
        batch.unsettled -= 1
        job = self.job
        if rpc_id is None and job.spec.persistent:
            rpc_id = self.rpc_id(device)
        c = job.counts
        c.in_progress -= 1
        c.add(outcome)
        if outcome is DeviceOutcome.SUCCEEDED and result is not None:
            add_reply(job.aggregate, result)
        self.rows.append(JobDevice(
            job_id=job.id, device_id=device, outcome=outcome, result=result, error=error,
            rpc_id=rpc_id,
            start_ts=batch.ts, finish_ts=now,
        ))
        self._check_abort()
        self.wake.set()
        loop_now = time.monotonic()
        if loop_now - self._last_progress >= self.engine.progress_interval:
            self._last_progress = loop_now
            self.engine._emit("JOB_PROGRESS", job)

    def _check_abort(self) -> None:
        if self.stop_status is not None:
            return
        c = self.job.counts
        executed = c.succeeded + c.failed + c.timed_out + c.offline
        for crit in self.job.spec.abort:
            if executed < crit.min_executed:
                continue
            failures = {
                "FAILED": c.failed, "TIMED_OUT": c.timed_out, "OFFLINE": c.offline,
                "ALL": c.failed + c.timed_out + c.offline,
            }[crit.failure_type.value]
            if failures * 100.0 > crit.threshold_percentage * executed:
                self.stop(JobStatus.ABORTED, (
                    f"aborted: {failures} of {executed} devices with an outcome "
                    f"({failures * 100.0 / executed:.1f}%) ended {crit.failure_type.value}, "
                    f"over the {crit.threshold_percentage:g}% threshold"
                ))
                return

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.engine.flush_interval)
            rowless = self._rowless
            if self.rows or (rowless and rowless[0].ts <= _now_ms() - IN_PROGRESS_AFTER_S * 1000):
                try:
                    # Shielded: the run cancels this loop when it ends, and a
                    # write is finished, not cut (the run's last flush waits).
                    await asyncio.shield(self.flush())
                except (LeaseLostError, JobNotFoundError):
                    return
                except Exception as exc:  # the database is down: keep the rows, retry
                    log.warning("job %s: writing outcomes failed (%s); will retry", self.job.id, exc)

    async def _finish(self, status: JobStatus) -> None:
        job = self.job
        c = job.counts
        c.skipped += c.queued  # never started: counted, no row each
        c.queued = 0
        job.status = status
        job.finish_ts = _now_ms()
        await self.flush()
        self._settle()
        if self._abandoned:
            return
        await self.engine.repo.save(job, self.fence)
        self.engine._emit(_FINAL_EVENT[status], job)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("job %s: %r", self.job.id, task.exception())
