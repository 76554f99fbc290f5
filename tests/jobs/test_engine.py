"""Fleet jobs end to end: a real Mosquitto, real devices, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import pytest

from fleetrpc import DeviceClient, Dispatcher, EventBus, PersistentRpc, Settings
from fleetrpc.errors import ValidationError
from fleetrpc.jobs import engine as engine_module
from fleetrpc.jobs import DeviceOutcome, JobEngine, JobNotFoundError, JobStatus, job_rpc_id, parse_spec
from fleetrpc.store import open_store
from fleetrpc.store.db import open_database
from fleetrpc.store.jobs import JobRepository
from tests.helpers.waiting import wait_until
from tests.services import _pg_drop_database, _pg_execute, with_database

pytestmark = pytest.mark.mqtt

TENANT = "11111111-1111-1111-1111-111111111111"
OTHER = "22222222-2222-2222-2222-222222222222"
_seq = iter(range(10**9))


def _name(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns() % 10**9}-{next(_seq)}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/jobs.db"
    return request.getfixturevalue("fresh_pg_db")


class Rig:
    """A dispatcher, a job engine on a database, devices that count calls."""

    def __init__(self, mqtt_url: str, db_url: str) -> None:
        self.mqtt_url = mqtt_url
        self.db_url = db_url
        self.settings = Settings(mqtt_url=mqtt_url, node_id=_name("node"), min_timeout_ms=0,
                                 default_timeout_ms=2000, ttl_enabled=False)
        self.devices: dict[str, DeviceClient] = {}
        self.calls: Counter[str] = Counter()
        self.events: list[tuple[str, str]] = []

    async def start(self, *, persistent: bool = False, **engine_options) -> "Rig":
        self.db = await open_database(self.db_url)
        self.dispatcher = Dispatcher(self.settings)
        await self.dispatcher.start()
        self.persistent = None
        if persistent:
            self.store = await open_store(self.db_url, group_commit=True)
            self.persistent = PersistentRpc(self.dispatcher, self.store)
            await self.persistent.start()
        engine_options.setdefault("progress_interval", 0.0)
        self.engine = JobEngine(self.dispatcher, JobRepository(self.db), persistent=self.persistent,
                                emit=lambda t, body: self.events.append((t, body["status"])),
                                **engine_options)
        return self

    async def resume(self) -> int:
        return await self.engine.start()

    async def device(self, name: str | None = None, *, connect: bool = True, reply=None) -> str:
        name = name or _name("jd")
        dev = DeviceClient(name, self.mqtt_url)

        @dev.method("version")
        def version(params):
            self.calls[name] += 1
            return reply(name) if reply else {"fw": "1.2", "ok": True}

        self.devices[name] = dev
        if connect:
            await dev.connect()
            await wait_until(lambda: self.dispatcher.is_online(name))
        return name

    async def close(self) -> None:
        await self.engine.close()
        if self.persistent is not None:
            await self.persistent.close()
        await self.dispatcher.close()
        if self.persistent is not None:
            await self.store.close()
        await self.db.close()
        for dev in self.devices.values():
            await dev.close()


@pytest.fixture
async def rig(mqtt_url, db_url):
    r = await Rig(mqtt_url, db_url).start()
    yield r
    await r.close()


def _spec(ids, **over):
    body = {"targets": {"deviceIds": list(ids)}, "method": "version", "params": {}}
    body.update(over)
    return parse_spec(body)


async def test_lightweight_job_reaches_every_device_and_aggregates(rig):
    ids = [await rig.device(reply=lambda n: {"fw": "1.3" if n.endswith(("0", "2")) else "1.2"})
           for _ in range(12)]
    offline = _name("gone")
    job = await rig.engine.submit(TENANT, _spec(ids + [offline]))
    job = await rig.engine.wait(TENANT, job.id, timeout=20)
    c = job.counts
    assert job.status is JobStatus.COMPLETED
    assert (c.total, c.succeeded, c.offline, c.in_progress, c.queued) == (13, 12, 1, 0, 0)
    assert sum(job.aggregate["fw"]["values"].values()) == 12
    assert all(rig.calls[i] == 1 for i in ids)
    rows, total = await rig.engine.devices(TENANT, job.id, 100, 0)
    assert total == 13 and {r.device_id for r in rows} == set(ids) | {offline}
    off, n_off = await rig.engine.devices(TENANT, job.id, 100, 0, outcome=DeviceOutcome.OFFLINE)
    assert n_off == 1 and off[0].device_id == offline and "not connected" in off[0].error
    assert rig.events[0] == ("JOB_STARTED", "RUNNING") and rig.events[-1] == ("JOB_COMPLETED", "COMPLETED")
    # stored exactly as the live view said
    stored = await JobRepository(rig.db).get(TENANT, job.id)
    assert stored.counts == job.counts and stored.status is JobStatus.COMPLETED


@pytest.mark.parametrize("interval, progress", [(0.0, 12), (1e9, 1)])
async def test_progress_events_are_throttled(mqtt_url, interval, progress):
    """JOB_PROGRESS at most once per ``progress_interval`` (the first outcome
    reports at once); every status change has its event, unthrottled."""
    rig = await Rig(mqtt_url, "sqlite:///:memory:").start(progress_interval=interval)
    try:
        ids = [await rig.device() for _ in range(12)]
        job = await rig.engine.submit(TENANT, _spec(ids))
        await rig.engine.wait(TENANT, job.id, timeout=20)
        types = [t for t, _ in rig.events]
        assert types[0] == "JOB_STARTED" and types[-1] == "JOB_COMPLETED"
        assert types.count("JOB_PROGRESS") == progress and len(types) == progress + 2
    finally:
        await rig.close()


async def test_another_tenant_sees_nothing(rig):
    dev = await rig.device()
    job = await rig.engine.submit(TENANT, _spec([dev]))
    await rig.engine.wait(TENANT, job.id, timeout=10)
    with pytest.raises(JobNotFoundError):
        await rig.engine.get(OTHER, job.id)
    with pytest.raises(JobNotFoundError):
        await rig.engine.devices(OTHER, job.id, 10, 0)
    with pytest.raises(JobNotFoundError):
        await rig.engine.cancel(OTHER, job.id)
    assert (await rig.engine.list(OTHER, 10, 0)) == ([], 0)
    jobs, total = await rig.engine.list(TENANT, 10, 0)
    assert total == 1 and jobs[0].id == job.id


async def test_abort_at_the_failure_threshold_skips_the_rest(rig):
    ids = [await rig.device(reply=lambda n: {"error": {"code": "E", "message": "broken"}}) for _ in range(6)]
    spec = _spec(ids, rollout={"maxInFlight": 1},
                 abort=[{"failureType": "FAILED", "thresholdPercentage": 50, "minExecuted": 3}])
    job = await rig.engine.wait(TENANT, (await rig.engine.submit(TENANT, spec)).id, timeout=20)
    c = job.counts
    assert job.status is JobStatus.ABORTED and "threshold" in job.general_error
    assert c.failed == 3 and c.skipped == 3 and c.succeeded == 0
    assert sum(rig.calls.values()) == 3
    assert rig.events[-1] == ("JOB_ABORTED", "ABORTED")


async def test_rate_limit_is_held_and_cancel_skips_what_did_not_start(rig):
    ids = [await rig.device() for _ in range(30)]
    spec = _spec(ids, rollout={"maxPerMinute": 600})  # 10/s
    job = await rig.engine.submit(TENANT, spec)
    t0 = time.monotonic()
    await asyncio.sleep(1.0)
    job = await rig.engine.cancel(TENANT, job.id)
    elapsed = time.monotonic() - t0
    started = job.counts.total - job.counts.skipped
    # 10/s with a one-device head start: never more than the rate allows
    assert 1 <= started <= 10 * elapsed + 2
    assert job.status is JobStatus.CANCELLED and job.cancellation_ts is not None
    assert job.counts.skipped == 30 - started and job.counts.in_progress == 0
    assert sum(rig.calls.values()) == started
    assert rig.events[-1] == ("JOB_CANCELLED", "CANCELLED")


async def test_restart_mid_job_sends_no_device_the_call_twice(mqtt_url, db_url):
    first = await Rig(mqtt_url, db_url).start()
    ids = [await first.device() for _ in range(20)]
    job = await first.engine.submit(TENANT, _spec(ids, rollout={"maxPerMinute": 1200}))  # 20/s
    await wait_until(lambda: sum(first.calls.values()) >= 5, timeout=10)
    await first.engine.close()  # the node stops mid-job (the row stays RUNNING)
    await first.dispatcher.close()
    stored = await JobRepository(first.db).get(TENANT, job.id)
    assert stored.status is JobStatus.RUNNING
    await first.db.close()

    second = Rig(mqtt_url, db_url)
    second.devices, second.calls = first.devices, first.calls  # same devices, same counters
    await second.start()
    try:
        assert await second.resume() == 1
        job = await second.engine.wait(TENANT, job.id, timeout=20)
        c = job.counts
        assert job.status is JobStatus.COMPLETED and c.total == 20
        assert c.succeeded + c.failed == 20 and c.in_progress == 0
        assert max(second.calls.values()) == 1  # nobody twice
        rows, _ = await second.engine.devices(TENANT, job.id, 100, 0, outcome=DeviceOutcome.FAILED)
        assert all("interrupted" in r.error for r in rows)
    finally:
        await second.close()


async def test_a_crash_mid_job_recovers_what_was_started_after_the_settled_prefix(mqtt_url, db_url):
    """The node dies mid-job (nothing more is written, as after a kill -9)
    with outcomes recorded in memory but not stored: the restart pages the
    targets between the stored settled prefix and the cursor, records those
    without a stored outcome interrupted (a lightweight call is not sent
    again), keeps the outcomes that were stored, and sends the rest once."""
    first = await Rig(mqtt_url, db_url).start(flush_interval=3600)  # outcomes only ride on start writes
    ids = [await first.device() for _ in range(20)]
    job = await first.engine.submit(TENANT, _spec(ids, rollout={"maxPerMinute": 1200}))  # 20/s
    await wait_until(lambda: sum(first.calls.values()) >= 5, timeout=10)
    first.engine._runs[job.id].abandon()  # writes nothing more
    await first.engine.close()
    await first.dispatcher.close()
    stored = await JobRepository(first.db).get(TENANT, job.id)
    assert stored.status is JobStatus.RUNNING and stored.cursor is not None
    assert stored.settled_through is None or stored.settled_through < stored.cursor
    await first.db.close()

    second = Rig(mqtt_url, db_url)
    second.devices, second.calls = first.devices, first.calls
    await second.start()
    try:
        assert await second.resume() == 1
        job = await second.engine.wait(TENANT, job.id, timeout=20)
        c = job.counts
        assert job.status is JobStatus.COMPLETED and c.total == 20 and c.in_progress == 0
        assert max(second.calls.values()) == 1 and len(second.calls) == 20  # everyone, once
        rows, total = await second.engine.devices(TENANT, job.id, 100, 0)
        assert total == 20
        by_outcome = Counter(r.outcome for r in rows)
        assert by_outcome == Counter({DeviceOutcome.SUCCEEDED: c.succeeded, DeviceOutcome.FAILED: c.failed})
        interrupted = [r for r in rows if r.outcome is DeviceOutcome.FAILED]
        # the last batch started before the crash had no later write to carry its outcome
        assert interrupted and all("interrupted" in r.error for r in interrupted)
        assert all(r.device_id <= stored.cursor for r in interrupted)
        assert stored.settled_through is None or all(r.device_id > stored.settled_through for r in interrupted)
    finally:
        await second.close()


async def test_each_device_row_is_written_once_with_its_outcome(rig, monkeypatch):
    """No IN_PROGRESS row before the send and an update after: a device's
    row is written once, when its outcome is known (calls ending within
    IN_PROGRESS_AFTER_S never get an IN_PROGRESS row)."""
    monkeypatch.setattr(engine_module, "IN_PROGRESS_AFTER_S", 60.0)
    written: Counter[tuple[str, DeviceOutcome]] = Counter()
    record = rig.engine.repo.record

    async def counting(job, rows=(), fence=None):
        written.update((r.device_id, r.outcome) for r in rows)
        await record(job, rows, fence)

    rig.engine.repo.record = counting
    ids = [await rig.device() for _ in range(12)]
    job = await rig.engine.submit(TENANT, _spec(ids, rollout={"maxInFlight": 4}))
    job = await rig.engine.wait(TENANT, job.id, timeout=20)
    assert job.counts.succeeded == 12
    assert written == Counter({(d, DeviceOutcome.SUCCEEDED): 1 for d in ids})
    assert job.settled_through == job.cursor == max(ids)
    stored = await JobRepository(rig.db).get(TENANT, job.id)
    assert stored.settled_through == stored.cursor == max(ids)


async def test_a_reply_holding_nul_is_stored_and_the_job_completes(rig):
    """A device's error text with NUL in it (PostgreSQL's text refuses NUL)
    is stored with U+FFFD in its place; the result keeps its JSON escape.
    A refused write would have held back every later outcome of the job."""
    bad = await rig.device(reply=lambda name: {"error": {"code": "E\x00", "message": "m\x00"}})
    odd = await rig.device(reply=lambda name: {"fw": "1.\x002"})
    job = await rig.engine.submit(TENANT, _spec([bad, odd]))
    job = await rig.engine.wait(TENANT, job.id, timeout=10)
    assert job.status is JobStatus.COMPLETED and (job.counts.failed, job.counts.succeeded) == (1, 1)
    rows, _ = await rig.engine.devices(TENANT, job.id, 10, 0)
    by_device = {r.device_id: r for r in rows}
    assert by_device[bad].error == "E\ufffd: m\ufffd"
    assert by_device[odd].result == {"fw": "1.\x002"}


async def test_a_listing_shows_calls_just_started_in_flight(rig):
    """Rows of calls in flight are written lazily, but a listing of a
    running job writes them first: it shows every device started."""
    release = asyncio.Event()
    slow = DeviceClient(_name("slow"), rig.mqtt_url)

    @slow.method("version")
    async def version(params):
        await release.wait()
        return {"fw": "2.0"}

    rig.devices[slow.device_id] = slow
    await slow.connect()
    await wait_until(lambda: rig.dispatcher.is_online(slow.device_id))
    job = await rig.engine.submit(TENANT, _spec([slow.device_id], timeout=10_000))
    await wait_until(lambda: rig.engine._runs[job.id].inflight)
    rows, total = await rig.engine.devices(TENANT, job.id, 10, 0)
    assert total == 1 and rows[0].outcome is DeviceOutcome.IN_PROGRESS and rows[0].finish_ts is None
    release.set()
    job = await rig.engine.wait(TENANT, job.id, timeout=10)
    rows, total = await rig.engine.devices(TENANT, job.id, 10, 0)
    assert total == 1 and rows[0].outcome is DeviceOutcome.SUCCEEDED and rows[0].result == {"fw": "2.0"}


@pytest.mark.parametrize("crash", [False, True], ids=["stopped", "crashed"])
async def test_restart_mid_persistent_job_runs_every_device_once(mqtt_url, db_url, crash):
    """A persistent job whose node stops mid-rollout (``crashed``: dies with
    outcomes recorded but not stored, writing nothing more, as after a kill
    -9): after the restart the calls stored before it are refused as
    duplicates and followed by their ids (not sent again as new calls, not
    recorded as interrupted), the rest are started, and every device ran
    the method exactly once (the RPC id is derived from job and device; the
    device recognises a resent request by it).

    The first device in rollout order answers only after the node stopped,
    so its reply is lost: its call was SENT when the node stopped, and
    after the restart it counts as timed out (the persistent engine's
    rule); ``retries: 1`` sends it again under its id, and the device
    answers from memory (with no retry it would be FAILED: CI once caught
    that race, with a device that happened to answer that late)."""
    first = await Rig(mqtt_url, db_url).start(persistent=True, **({"flush_interval": 3600} if crash else {}))
    late = f"jd-0-{uuid.uuid4().hex}"  # sorts first: the rollout starts it first
    stopped = asyncio.Event()

    async def after_stop():
        await stopped.wait()
        return {"fw": "1.2", "ok": True}

    ids = [await first.device(late, reply=lambda n: after_stop())]
    ids += [await first.device() for _ in range(19)]
    job = await first.engine.submit(TENANT, _spec(ids, persistent=True, retries=1,
                                                  rollout={"maxPerMinute": 1200}))
    await wait_until(lambda: sum(first.calls.values()) >= 5, timeout=10)
    assert first.calls[late] == 1
    if crash:
        first.engine._runs[job.id].abandon()  # writes nothing more
    await first.engine.close()  # the node stops mid-job
    await first.persistent.close()
    await first.dispatcher.close()
    await first.store.close()
    stopped.set()  # the late device answers now, to nobody
    stored = await JobRepository(first.db).get(TENANT, job.id)
    assert stored.status is JobStatus.RUNNING and stored.cursor >= max(first.calls)
    if crash:  # outcomes ride only on start writes: a range to recover
        assert stored.settled_through is None or stored.settled_through < stored.cursor
    await first.db.close()

    second = Rig(mqtt_url, db_url)
    second.devices, second.calls = first.devices, first.calls
    await second.start(persistent=True)
    try:
        assert await second.resume() == 1
        job = await second.engine.wait(TENANT, job.id, timeout=30)
        c = job.counts
        assert job.status is JobStatus.COMPLETED and c.total == 20
        assert c.succeeded == 20 and c.in_progress == 0 and c.queued == 0 and c.failed == 0
        assert len(second.calls) == 20 and max(second.calls.values()) == 1  # everyone, once
        assert second.devices[late].duplicates >= 1  # the retry, answered from memory
        rows, total = await second.engine.devices(TENANT, job.id, 100, 0)
        assert total == 20 and {r.outcome for r in rows} == {DeviceOutcome.SUCCEEDED}
        assert {r.rpc_id for r in rows} == {job_rpc_id(job.id, d) for d in ids}
    finally:
        await second.close()


async def test_persistent_job_reaches_offline_devices_when_they_connect(mqtt_url, db_url):
    rig = await Rig(mqtt_url, db_url).start(persistent=True)
    try:
        online = [await rig.device() for _ in range(3)]
        late = await rig.device(connect=False)
        exp = int(time.time() * 1000) + 30_000
        job = await rig.engine.submit(TENANT, _spec(online + [late], persistent=True, expirationTime=exp))
        await wait_until(lambda: sum(rig.calls.values()) == 3, timeout=10)
        live = await rig.engine.get(TENANT, job.id)
        assert live.status is JobStatus.RUNNING and live.counts.in_progress >= 1
        # a call in flight for over a second gets its IN_PROGRESS row unasked
        repo = JobRepository(rig.db)
        deadline = time.monotonic() + 10
        while late not in {r.device_id for r in await repo.in_progress(job.id)}:
            assert time.monotonic() < deadline, "no IN_PROGRESS row for the offline device"
            await asyncio.sleep(0.1)
        rows, _ = await rig.engine.devices(TENANT, job.id, 10, 0, outcome=DeviceOutcome.IN_PROGRESS)
        assert [r.device_id for r in rows] == [late] and rows[0].rpc_id
        await rig.devices[late].connect()
        job = await rig.engine.wait(TENANT, job.id, timeout=20)
        assert job.status is JobStatus.COMPLETED and job.counts.succeeded == 4
        assert rig.calls[late] == 1
        rows, _ = await rig.engine.devices(TENANT, job.id, 10, 0)
        assert all(r.rpc_id for r in rows)
        rec = await rig.persistent.get(rows[0].rpc_id, tenant_id=TENANT)
        assert rec.status.value == "SUCCESSFUL"
    finally:
        await rig.close()


async def test_unsupported_selector_without_a_registry_is_refused(rig):
    with pytest.raises(ValidationError, match="registry"):
        await rig.engine.submit(TENANT, parse_spec({"targets": {"deviceType": "t"}, "method": "m"}))
    assert (await rig.engine.list(TENANT, 10, 0))[1] == 0


@pytest.mark.pg
async def test_a_jobs_devices_list_in_code_point_order_under_a_language_locale(mqtt_url, pg_dsn):
    """On a PostgreSQL database created with a language collation (ICU's
    en-US: "alpha" before "Beta"), a job's devices still list in code-point
    order, the order of its rollout and of the device registry's ids."""
    name = f"fleetrpc_t_{uuid.uuid4().hex[:16]}"
    await _pg_execute(pg_dsn, f"CREATE DATABASE \"{name}\" TEMPLATE template0 "
                              "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'")
    rig = None
    try:
        rig = await Rig(mqtt_url, with_database(pg_dsn, name)).start()
        ids = ["alpha-" + _name("d"), "Beta-" + _name("d"), "zeta-" + _name("d"), "Zeta-" + _name("d")]
        job = await rig.engine.submit(TENANT, _spec(ids))  # nobody connected: OFFLINE at once
        job = await rig.engine.wait(TENANT, job.id, timeout=10)
        assert job.counts.offline == 4
        rows, total = await rig.engine.devices(TENANT, job.id, 10, 0)
        assert total == 4 and [r.device_id for r in rows] == sorted(ids)
        rows, _ = await rig.engine.devices(TENANT, job.id, 10, 0, outcome=DeviceOutcome.OFFLINE)
        assert [r.device_id for r in rows] == sorted(ids)
    finally:
        if rig is not None:
            await rig.close()
        await _pg_drop_database(pg_dsn, name)


def test_a_jobs_snapshot_copies_what_changes_and_shares_its_spec():
    """What a write stores and a caller gets: counts and aggregate as they
    are now (later outcomes do not change them), the spec shared -- copying
    a 100,000-id deviceIds list with every write made each write cost 3 ms."""
    from fleetrpc.jobs.engine import _copy
    from fleetrpc.jobs.model import Job

    job = Job(id=str(uuid.uuid4()), tenant_id=TENANT, customer_id=None, created_by=None,
              spec=_spec([f"d{i}" for i in range(1000)]))
    job.counts.succeeded = 3
    job.aggregate["fw"] = {"count": 3, "values": {"1.2": 3}, "overflow": False}
    snap = _copy(job)
    job.counts.succeeded += 1
    job.aggregate["fw"]["values"]["1.2"] += 1
    job.aggregate["$"] = {"count": 1, "values": {}, "overflow": False}
    assert snap.counts.succeeded == 3 and snap.aggregate == {"fw": {"count": 3, "values": {"1.2": 3}, "overflow": False}}
    assert snap.spec is job.spec and snap == _copy(snap)
