"""The persistent-RPC benchmark behind ``fleetrpc bench --persistent`` and
``benchmarks/bench_persistent.py``: whole persistent two-way lifecycles per
second, end to end.

One run: a broker (a throwaway tuned Mosquitto unless a URL is given), one
simulated fleet in worker processes that acknowledges every delivery
(:class:`~fleetrpc.sim.Behaviour` ``ack=True``), and, in this process, one
:class:`~fleetrpc.dispatch.Dispatcher` + :class:`~fleetrpc.rpc.persistent.PersistentRpc`
engine per *target*, all connected at once and taking turns against the same
fleet:

``pg-group``
    PostgreSQL behind :class:`~fleetrpc.store.batching.GroupCommitStore`:
    concurrent writes share one transaction (the default store for a server).
``pg-row``
    The same engine on the plain :class:`~fleetrpc.store.postgres.PostgresStore`
    (``open_store(url, group_commit=False)``): every insert and every status
    change is its own transaction and its own commit.  The per-row baseline.
``sqlite-group`` / ``sqlite-row``
    The same two on SQLite (``synchronous=FULL`` unless told otherwise).

With PostgreSQL, every round also measures a *reference* that is not a
target: the ceiling of any per-row-autocommit implementation on this
machine at that moment -- ``pool`` connections each looping the four plain
autocommit statements of a lifecycle (INSERT, three UPDATEs by primary key)
on the same table, no engine, no broker, no devices.  Group commit is
compared with it too.

What a caller does (``callers`` of them, each bounded by time and count)::

    rpc_id = await engine.call(device, "echo", params)     # QUEUED committed
    record = await engine.wait(rpc_id, durable=True)         # SUCCESSFUL committed

so a lifecycle (QUEUED, SENT, DELIVERED -- the devices ack --, SUCCESSFUL)
is counted only once its final status is committed to the database, and a
caller starts its next call only then.  Every write is durable
(``synchronous_commit=on`` / SQLite ``FULL``, whatever the server is set
to; the report shows it).  After each phase the database itself is asked
how many rows are in which status, and the report says whether that agrees
with the count.

PostgreSQL runs in a database created for the run (``CREATE DATABASE
fleetrpc_bench_<random>`` on the DSN's server, one schema per target),
dropped at the end; SQLite in a temporary directory, removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..sim.fleet import Behaviour, Fleet, raise_nofile_limit
from .cpu import GcMeter, machine_cpu, processes_named
from .rig import cpu_seconds, percentiles, throwaway_broker

__all__ = [
    "DEFAULT_DSN",
    "PERSISTENT_TARGETS",
    "PersistentBenchConfig",
    "default_dsn",
    "format_report",
    "run_persistent_bench",
]

PERSISTENT_TARGETS = ("pg-group", "pg-row", "sqlite-group", "sqlite-row")
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
SCHEMA = 1

#: log(message)
Log = Callable[[str], None]


def default_dsn() -> str:
    """``$FLEETRPC_PG_DSN``, else the local test server."""
    return os.environ.get("FLEETRPC_PG_DSN") or DEFAULT_DSN


@dataclass
class PersistentBenchConfig:
    """Everything one persistent benchmark run needs."""

    #: PostgreSQL server to create the run's database on.
    dsn: str = field(default_factory=default_dsn)
    devices: int = 1000
    #: Concurrent callers, each one lifecycle at a time.
    callers: int = 1000
    #: Seconds of each timed phase.
    duration: float = 5.0
    #: Untimed phase per target before the first timed one.
    warmup: float = 1.0
    #: Timed phases per target; the targets take turns, round after round
    #: (every other round in reverse order).
    rounds: int = 1
    targets: tuple[str, ...] = PERSISTENT_TARGETS
    #: Broker URL; None starts a throwaway tuned Mosquitto.
    url: str | None = None
    #: Simulator worker processes (None: one per CPU, at most 4).
    processes: int | None = None
    qos: int = 1
    #: Transport timeout of one attempt (s); a caller waits at most this + 10 s.
    timeout: float = 10.0
    #: PostgreSQL pool size of every target (the per-row store uses them all).
    pool: int = 16
    #: GroupCommitStore: most writes per transaction.
    max_batch: int = 1000
    #: GroupCommitStore: merge consecutive queued changes of one call.
    coalesce: bool = True
    sqlite_sync: str = "FULL"
    #: Attach an event sink that builds every event body (RPC_QUEUED ...).
    events: bool = False
    #: Most lifecycles per caller per phase (None: derived from duration).
    max_calls: int | None = None
    #: Write a cProfile of every pg-group timed phase to this path prefix.
    profile: str | None = None
    #: gc.freeze() once everything is started and raise the collector's
    #: first threshold to this (None: Python's defaults, 700).
    gc_threshold: int | None = None
    params: dict = field(default_factory=lambda: {"v": 1, "s": "fleetrpc"})

    def __post_init__(self) -> None:
        unknown = set(self.targets) - set(PERSISTENT_TARGETS)
        if unknown:
            raise ValueError(f"unknown targets: {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(PERSISTENT_TARGETS)})")
        if not self.targets:
            raise ValueError("no target")
        if self.qos not in (0, 1):
            raise ValueError("qos must be 0 or 1")
        if self.devices < 1 or self.callers < 1 or self.duration <= 0 or self.rounds < 1:
            raise ValueError("devices, callers, duration and rounds must be positive")

    def quick(self) -> PersistentBenchConfig:
        """A tiny run for tests."""
        self.duration = min(self.duration, 0.5)
        self.warmup = min(self.warmup, 0.2)
        self.callers = min(self.callers, 16)
        self.timeout = min(self.timeout, 5.0)
        if self.processes is None:
            self.processes = 1
        return self


# -- CPU accounting ------------------------------------------------------------------


def _postgres_pids() -> list[int]:
    """Every ``postgres`` process (the whole server: it is shared)."""
    return processes_named("postgres")


class _CpuMeter:
    """CPU seconds used, per group of processes, between start() and stop()."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups

    def _sample(self) -> dict[str, float]:
        out = {"bench process": time.process_time()}
        for name, pids in self.groups.items():
            out[name] = cpu_seconds(pids(), gone_as_zero=True)
        return out

    def start(self) -> None:
        self._t = time.perf_counter()
        self._m = machine_cpu()
        self._s = self._sample()
        self._pg = {p: cpu_seconds([p], gone_as_zero=True) for p in _postgres_pids()}

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self._t
        m = machine_cpu()
        s = self._sample()
        used = {k: s[k] - self._s[k] for k in s}
        # postgres backends come and go: count the CPU of those alive at the end
        pg = sum(cpu_seconds([p], gone_as_zero=True) - self._pg.get(p, 0.0) for p in _postgres_pids())
        used["postgres (whole server)"] = pg
        out: dict[str, Any] = {"wall_s": round(wall, 3),
                               "cpu_s": {k: round(v, 2) for k, v in used.items()}}
        if m is not None and self._m is not None:
            busy = m[0] - self._m[0]
            total = m[1] - self._m[1]
            out["machine_busy_pct"] = round(100.0 * busy / total, 1) if total else None
            out["cpu_s"]["machine (all cores)"] = round(busy, 2)
            out["cpu_s"]["other processes"] = round(max(0.0, busy - sum(used.values())), 2)
        return out


# -- targets ----------------------------------------------------------------------------


class _Target:
    """One engine on one store, with its own dispatcher (node id)."""

    def __init__(self, name: str, store_url: str, cfg: PersistentBenchConfig, mqtt_url: str) -> None:
        self.name = name
        self.backend, mode = name.split("-")
        self.group = mode == "group"
        self.store_url = store_url
        self.cfg = cfg
        self.mqtt_url = mqtt_url
        self.events = 0
        self.store: Any = None
        self.dispatcher: Any = None
        self.engine: Any = None
        self.durable_wait = False

    async def start(self, devices: list[str]) -> None:
        from ..config import Settings
        from ..dispatch import Dispatcher
        from ..rpc.persistent import PersistentRpc
        from ..store import GroupCommitStore, store_from_url

        cfg = self.cfg
        options: dict[str, Any] = {}
        if self.backend == "pg":
            options = {"max_size": cfg.pool, "min_size": min(cfg.pool, 4)}
        base = store_from_url(self.store_url, **options)
        if self.group:
            kw: dict[str, Any] = {"max_batch": cfg.max_batch}
            if "coalesce" in inspect.signature(GroupCommitStore).parameters:
                kw["coalesce"] = cfg.coalesce
            self.store = GroupCommitStore(base, **kw)
        else:
            self.store = base
        await self.store.open()
        per_device = cfg.callers // len(devices) + 1
        settings = Settings(
            mqtt_url=self.mqtt_url,
            node_id=f"pbench-{self.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
            qos=cfg.qos,
            min_timeout_ms=0,
            ttl_enabled=False,
            queue_cap=max(100, 4 * per_device),
            inflight_window=max(20_000, 2 * cfg.callers),
        )
        self.dispatcher = Dispatcher(settings)
        await self.dispatcher.start()
        def count_event(event_type: str, body: dict) -> None:
            self.events += 1

        self.engine = PersistentRpc(self.dispatcher, self.store, emit=count_event if cfg.events else None)
        await self.engine.start()
        self.durable_wait = "durable" in inspect.signature(self.engine.wait).parameters
        # Presence is retained: every device shows up within a moment.
        deadline = time.perf_counter() + 30.0 + len(devices) / 500
        want = set(devices)
        while not want <= self.dispatcher.online_devices:
            if time.perf_counter() > deadline:
                missing = len(want - self.dispatcher.online_devices)
                raise RuntimeError(f"{self.name}: {missing} devices never showed as online")
            await asyncio.sleep(0.05)

    def counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        base = getattr(self.store, "store", self.store)
        st = base.stats
        out["transactions"] = st.transactions
        out["rows_inserted"] = st.rows_inserted
        out["rows_changed"] = st.rows_changed
        bs = getattr(self.store, "batch_stats", None)
        if bs is not None:
            out["batches"] = bs.batches
            out["batched_writes"] = bs.items
            out["coalesced"] = getattr(bs, "coalesced", 0)
            out["failed_batches"] = bs.failed_batches
        es = self.engine.stats
        out["status_changes"] = es.sent + es.delivered + es.successful + es.timeouts + es.expired + es.failed
        out["write_errors"] = es.write_errors
        out["acks"] = self.dispatcher.stats.acks
        out["replies"] = self.dispatcher.stats.replies
        out["events"] = self.events
        return out

    async def status_counts(self) -> dict[str, int]:
        """Rows per status, as the database has them (a fresh connection)."""
        if self.backend == "pg":
            import asyncpg

            parts = urlsplit(self.store_url)
            schema = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p).get("schema")
            conn = await asyncpg.connect(urlunsplit(parts._replace(query="")),
                                         server_settings={"search_path": schema} if schema else None)
            try:
                rows = await conn.fetch("SELECT status, count(*) FROM rpc GROUP BY status")
            finally:
                await conn.close()
            return {r[0]: r[1] for r in rows}

        import sqlite3

        def q() -> dict[str, int]:
            con = sqlite3.connect(urlsplit(self.store_url).path[1:])
            try:
                return dict(con.execute("SELECT status, count(*) FROM rpc GROUP BY status").fetchall())
            finally:
                con.close()

        return await asyncio.to_thread(q)

    async def close(self) -> None:
        for step in (self.engine, self.dispatcher, self.store):
            if step is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(step.close(), 30.0)


# -- the database of the run ------------------------------------------------------------


@contextlib.asynccontextmanager
async def _pg_database(dsn: str, log: Log) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A database created for the run on ``dsn``'s server: (its DSN, the
    server's durability settings).  Dropped afterwards."""
    import asyncpg

    name = f"fleetrpc_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        settings = dict(await admin.fetch(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('synchronous_commit', 'fsync', 'wal_sync_method', 'commit_delay', 'server_version')"))
    finally:
        await admin.close()
    log(f"database {name} created (PostgreSQL {settings.get('server_version')}, "
        f"synchronous_commit={settings.get('synchronous_commit')}, fsync={settings.get('fsync')})")
    parts = urlsplit(dsn)
    settings["database"] = name
    try:
        yield urlunsplit(parts._replace(path="/" + name)), settings
    finally:
        admin = await asyncpg.connect(dsn, timeout=10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        log(f"database {name} dropped")


# -- one phase -----------------------------------------------------------------------------


async def _phase(target: _Target, devices: list[str], cfg: PersistentBenchConfig,
                 seconds: float, meter: _CpuMeter | None) -> dict[str, Any]:
    """``callers`` closed loops of whole lifecycles for ``seconds``."""
    from ..rpc.status import RpcStatus

    engine = target.engine
    call = engine.call
    wait = engine.wait
    durable = target.durable_wait
    params = cfg.params
    timeout_ms = int(cfg.timeout * 1000)
    wait_s = cfg.timeout + 10.0
    n = len(devices)
    callers = cfg.callers
    limit = cfg.max_calls or int(seconds * 100_000 / callers) + 1
    clock = time.perf_counter
    ok = 0
    other: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    queued_lat: list[float] = []
    life_lat: list[float] = []
    SUCCESSFUL = RpcStatus.SUCCESSFUL

    async def caller(k: int) -> None:
        nonlocal ok
        i = k
        for _ in range(limit):
            t = clock()
            if t >= end:
                return
            try:
                rpc_id = await call(devices[i % n], "echo", params, timeout_ms=timeout_ms)
                t1 = clock()
                if durable:
                    rec = await wait(rpc_id, wait_s, durable=True)
                else:
                    rec = await wait(rpc_id, wait_s)
            except Exception as exc:  # noqa: BLE001 - counted, never fatal
                errors[type(exc).__name__] += 1
                await asyncio.sleep(0.01)
            else:
                if rec.status is SUCCESSFUL:
                    ok += 1
                    queued_lat.append(t1 - t)
                    life_lat.append(clock() - t)
                else:
                    other[rec.status.value] += 1
            i += callers

    before = target.counters()
    prof = None
    if cfg.profile and target.name == "pg-group" and meter is not None:
        import cProfile

        prof = cProfile.Profile()
    if meter is not None:
        meter.start()
    t0 = clock()
    end = t0 + seconds
    if prof is not None:
        prof.enable()
    with GcMeter() as gcm:
        await asyncio.gather(*(caller(k) for k in range(callers)))
    if not durable:
        await engine.flush()  # an engine without durable waits: commit the rest before the clock stops
    elapsed = clock() - t0
    if prof is not None:
        prof.disable()
        path = f"{cfg.profile}.{target.name}.{int(time.time())}.prof"
        prof.dump_stats(path)
    cpu = meter.stop() if meter is not None else {}
    after = target.counters()
    delta = {k: after[k] - before.get(k, 0) for k in after}
    own_cpu = cpu.get("cpu_s", {}).get("bench process")
    return {
        "lifecycles": ok,
        "elapsed_s": round(elapsed, 3),
        "lifecycles_per_s": round(ok / elapsed, 1),
        "not_successful": dict(other),
        "errors": dict(errors),
        "queued_latency": percentiles(queued_lat),
        "lifecycle_latency": percentiles(life_lat),
        "counters": delta,
        "rows_per_lifecycle": round((delta["rows_inserted"] + delta["rows_changed"]) / ok, 2) if ok else None,
        "writes_per_transaction": round((delta["rows_inserted"] + delta["rows_changed"])
                                        / delta["transactions"], 1) if delta["transactions"] else None,
        "bench_cpu_us_per_lifecycle": round(own_cpu / ok * 1e6, 1) if ok and own_cpu is not None else None,
        "cpu": cpu,
        "gc": {"seconds": round(gcm.seconds, 3), "collections": gcm.collections,
               "seconds_by_generation": [round(x, 3) for x in gcm.by_generation]},
        "commit_wait": "per call (wait(durable=True))" if durable else "flush at phase end",
    }


# -- the run ----------------------------------------------------------------------------------


async def _run_targets(cfg: PersistentBenchConfig, mqtt_url: str, fleet: Fleet, pg_url: str | None,
                       sqlite_dir: str, meter: _CpuMeter, log: Log) -> dict[str, Any]:
    devices = fleet.device_ids
    results: dict[str, Any] = {}
    live: dict[str, _Target] = {}
    for name in cfg.targets:
        if name.startswith("pg"):
            if pg_url is None:
                results[name] = {"error": "no PostgreSQL"}
                continue
            url = f"{pg_url}?schema=bench_{name.replace('-', '_')}"
        else:
            url = f"sqlite:///{sqlite_dir}/{name}.db?synchronous={cfg.sqlite_sync}"
        target = _Target(name, url, cfg, mqtt_url)
        try:
            await target.start(devices)
        except Exception as exc:  # noqa: BLE001 - the report says what failed
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"{name}: {results[name]['error']}")
            await target.close()
            continue
        live[name] = target
        results[name] = {"phases": [], "store": target.store_url.split("?")[0].rsplit("/", 1)[-1]}
    if cfg.gc_threshold:
        import gc

        gc.collect()
        gc.freeze()  # what a long-running server does after start-up
        gc.set_threshold(cfg.gc_threshold, *gc.get_threshold()[1:])
    try:
        if cfg.warmup > 0:
            for name, target in live.items():
                w = await _phase(target, devices, cfg, cfg.warmup, None)
                results[name]["warmup_lifecycles"] = w["lifecycles"]
                log(f"{name}: warm-up {w['lifecycles']} lifecycles")
        for rnd in range(cfg.rounds):
            # Every other round in reverse order: whoever runs right after
            # another target inherits its leftovers (autovacuum, checkpoints).
            order = list(live.items()) if rnd % 2 == 0 else list(reversed(live.items()))
            for name, target in order:
                ph = await _phase(target, devices, cfg, cfg.duration, meter)
                ph["round"] = rnd + 1
                results[name]["phases"].append(ph)
                log(f"{name}: round {rnd + 1}: {ph['lifecycles_per_s']:,.0f} lifecycles/s "
                    f"({ph['lifecycles']} in {ph['elapsed_s']} s, {ph['errors'] or 'no errors'}, "
                    f"machine busy {ph['cpu'].get('machine_busy_pct')} %)")
                await asyncio.sleep(0.2)
            if pg_url is not None and any(n.startswith("pg") for n in live):
                raw = await _raw_per_row(pg_url, cfg, cfg.duration, meter)
                raw["round"] = rnd + 1
                results.setdefault("pg-row-raw (reference, DB only)", {"phases": []})["phases"].append(raw)
                log(f"per-row autocommit ceiling (DB only): round {rnd + 1}: "
                    f"{raw['lifecycles_per_s']:,.0f} lifecycles/s ({raw['statements_per_s']:,.0f} statements/s)")
                await asyncio.sleep(0.2)
        for name, target in live.items():
            await target.engine.flush()
            counts = await target.status_counts()
            total_ok = results[name].get("warmup_lifecycles", 0) + sum(p["lifecycles"] for p in results[name]["phases"])
            results[name]["db_status_counts"] = counts
            results[name]["db_agrees"] = counts.get("SUCCESSFUL", 0) == total_ok and not any(
                counts.get(s) for s in ("QUEUED", "SENT", "DELIVERED", "TIMEOUT"))
            results[name]["engine_unfinished"] = target.engine.unfinished
    finally:
        for target in live.values():
            await target.close()
    for name, r in results.items():
        phases = r.get("phases") or []
        if phases:
            life = sum(p["lifecycles"] for p in phases)
            secs = sum(p["elapsed_s"] for p in phases)
            r["lifecycles_per_s"] = round(life / secs, 1) if secs else None
    return results


_RAW_INSERT = (
    "INSERT INTO rpc (id, tenant_id, device_id, created_time, expiration_time, method, params, oneway, "
    "persisted, retries, timeout_ms, attempts, status, updated_time) "
    "VALUES ($1, 'default', $2, $3, $4, 'echo', $5::jsonb, false, true, 0, $6, 0, 'QUEUED', $3)"
)
_RAW_SENT = "UPDATE rpc SET status = 'SENT', attempts = 1, updated_time = $2 WHERE id = $1 AND status = 'QUEUED'"
_RAW_DELIVERED = "UPDATE rpc SET status = 'DELIVERED', updated_time = $2 WHERE id = $1 AND status = 'SENT'"
_RAW_SUCCESSFUL = ("UPDATE rpc SET status = 'SUCCESSFUL', response = $3::jsonb, updated_time = $2 "
                   "WHERE id = $1 AND status = 'DELIVERED'")


async def _raw_per_row(pg_url: str, cfg: PersistentBenchConfig, seconds: float,
                       meter: _CpuMeter) -> dict[str, Any]:
    """The per-row-autocommit ceiling: ``pool`` connections, each looping the
    four plain statements of one lifecycle, each its own transaction."""
    import asyncpg
    import msgspec

    from ..store import PostgresStore

    schema = "bench_pg_row_raw"
    table = PostgresStore(pg_url, schema=schema, min_size=1, max_size=1)
    await table.open()  # creates the schema and the rpc table
    await table.close()
    pool = await asyncpg.create_pool(pg_url, min_size=cfg.pool, max_size=cfg.pool,
                                     server_settings={"search_path": schema})
    params = msgspec.json.encode(cfg.params).decode()
    timeout_ms = int(cfg.timeout * 1000)
    limit = int(seconds * 100_000 / cfg.pool) + 1
    done = 0

    async def worker(k: int) -> None:
        nonlocal done
        async with pool.acquire() as conn:
            for _ in range(limit):
                if time.perf_counter() >= end:
                    return
                rpc_id = str(uuid.uuid4())
                now = int(time.time() * 1000)
                await conn.execute(_RAW_INSERT, rpc_id, f"dev-{k:05d}", now, now + timeout_ms, params, timeout_ms)
                await conn.execute(_RAW_SENT, rpc_id, now)
                await conn.execute(_RAW_DELIVERED, rpc_id, now)
                await conn.execute(_RAW_SUCCESSFUL, rpc_id, now, params)
                done += 1

    try:
        meter.start()
        t0 = time.perf_counter()
        end = t0 + seconds
        await asyncio.gather(*(worker(k) for k in range(cfg.pool)))
        elapsed = time.perf_counter() - t0
        cpu = meter.stop()
    finally:
        await pool.close()
    return {
        "what": f"{cfg.pool} connections x (INSERT + 3 UPDATE by id), each statement its own "
                "transaction; database only: no engine, broker or devices",
        "lifecycles": done,
        "elapsed_s": round(elapsed, 3),
        "lifecycles_per_s": round(done / elapsed, 1),
        "statements_per_s": round(4 * done / elapsed, 1),
        "cpu": cpu,
    }


def _summary(cfg: PersistentBenchConfig, results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"target_rate": 25_000, "target_ratio": 5.0}
    for backend in ("pg", "sqlite"):
        g, r = results.get(f"{backend}-group", {}), results.get(f"{backend}-row", {})
        if g.get("lifecycles_per_s") and r.get("lifecycles_per_s"):
            per_round = [round(a["lifecycles_per_s"] / b["lifecycles_per_s"], 2)
                         for a, b in zip(g["phases"], r["phases"]) if b["lifecycles_per_s"]]
            out[f"{backend}_group_over_row"] = round(g["lifecycles_per_s"] / r["lifecycles_per_s"], 2)
            out[f"{backend}_group_over_row_per_round"] = per_round
    raw = results.get("pg-row-raw (reference, DB only)", {})
    g = results.get("pg-group", {})
    if g.get("lifecycles_per_s") and raw.get("lifecycles_per_s"):
        out["pg_group_over_raw_row"] = round(g["lifecycles_per_s"] / raw["lifecycles_per_s"], 2)
        out["pg_group_over_raw_row_per_round"] = [
            round(a["lifecycles_per_s"] / b["lifecycles_per_s"], 2)
            for a, b in zip(g["phases"], raw["phases"]) if b["lifecycles_per_s"]]
    pg = results.get("pg-group", {}).get("lifecycles_per_s")
    if pg:
        out["pg_group_lifecycles_per_s"] = pg
        out["rate_target_met"] = pg >= 25_000
    if "pg_group_over_row" in out:
        out["ratio_target_met"] = out["pg_group_over_row"] >= 5.0
    return out


async def run_persistent_bench(cfg: PersistentBenchConfig, log: Log | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready report (meta, fleet, results, summary)."""
    from .. import _core

    log = log or (lambda msg: None)
    raise_nofile_limit()
    report: dict[str, Any] = {"meta": {
        "schema": SCHEMA,
        "kind": "persistent",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "core_compiled": bool(getattr(_core, "COMPILED", False)),
        "argv": sys.argv,
        "config": {k: v for k, v in asdict(cfg).items() if k != "params"},
    }}
    sqlite_dir = tempfile.mkdtemp(prefix="fleetrpc-pbench-")
    try:
        async with contextlib.AsyncExitStack() as stack:
            pg_url = None
            if any(t.startswith("pg") for t in cfg.targets):
                pg_url, pg_settings = await stack.enter_async_context(_pg_database(cfg.dsn, log))
                report["meta"]["postgresql"] = pg_settings
            mqtt_url, broker_desc, broker_pid = await stack.enter_async_context(throwaway_broker(cfg.url))
            log(f"broker: {broker_desc}")
            report["meta"]["broker"] = broker_desc
            lifetime = 600.0 + cfg.devices / 20 + 10 * (cfg.duration + 5) * cfg.rounds * len(cfg.targets)
            fleet = Fleet(mqtt_url, cfg.devices, processes=cfg.processes, qos=cfg.qos,
                          behaviour=Behaviour(ack=True), lifetime=lifetime)
            report["meta"]["sim_processes"] = fleet.processes
            t = time.perf_counter()
            await fleet.start()
            log(f"{cfg.devices} simulated devices (ack=True) online in {time.perf_counter() - t:.1f} s "
                f"({fleet.processes} worker processes)")
            groups: dict[str, Callable[[], list[int]]] = {
                "simulator": lambda: [w.proc.pid for w in fleet._workers],
            }
            if broker_pid is not None:
                groups["broker"] = lambda: [broker_pid]
            meter = _CpuMeter(groups)
            try:
                results = await _run_targets(cfg, mqtt_url, fleet, pg_url, sqlite_dir, meter, log)
            finally:
                report["fleet"] = await fleet.stop()
    finally:
        shutil.rmtree(sqlite_dir, ignore_errors=True)
    report["meta"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report["results"] = results
    report["summary"] = _summary(cfg, results)
    return report


# -- the table ------------------------------------------------------------------------------


def _f(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def format_report(report: dict[str, Any]) -> str:
    """The report as a plain-text table (Markdown-compatible)."""
    cfg = report["meta"]["config"]
    lines = [
        (f"persistent two-way lifecycles, end to end: {cfg['devices']} devices (ack=True), "
         f"{cfg['callers']} callers, QoS {cfg['qos']}, {cfg['rounds']} x {cfg['duration']:g} s per target"),
        "",
        ("| target | round | lifecycles/s | lifecycles | p50 / p99 ms | QUEUED p50 ms | rows/lifecycle "
         "| writes/tx | transactions | coalesced | bench CPU µs/lc | machine busy | errors |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in report["results"].items():
        if "error" in r:
            err = " ".join(str(r["error"]).split())
            lines.append(f"| {name} | - | failed: {err} |||||||||||")
            continue
        if name.startswith("pg-row-raw"):
            continue
        for p in r["phases"]:
            c = p["counters"]
            lines.append(
                f"| {name} | {p['round']} | {_f(p['lifecycles_per_s'])} | {_f(p['lifecycles'])} | "
                f"{_f(p['lifecycle_latency']['p50_ms'])} / {_f(p['lifecycle_latency']['p99_ms'])} | "
                f"{_f(p['queued_latency']['p50_ms'])} | {_f(p['rows_per_lifecycle'])} | "
                f"{_f(p['writes_per_transaction'])} | {_f(c['transactions'])} | {_f(c.get('coalesced'))} | "
                f"{_f(p['bench_cpu_us_per_lifecycle'])} | {_f(p['cpu'].get('machine_busy_pct'))} % | "
                f"{p['errors'] or p['not_successful'] or 0} |"
            )
    lines.append("")
    for name, r in report["results"].items():
        if "db_status_counts" in r:
            lines.append(f"{name}: database rows by status {r['db_status_counts']}; "
                         f"agrees with the count: {r['db_agrees']}")
    raw = report["results"].get("pg-row-raw (reference, DB only)")
    if raw:
        lines.append("")
        lines.append("per-row autocommit ceiling, database only (" + raw["phases"][0]["what"] + "): " + ", ".join(
            f"round {p['round']}: {_f(p['lifecycles_per_s'])} lifecycles/s ({_f(p['statements_per_s'])} statements/s, "
            f"machine busy {_f(p['cpu'].get('machine_busy_pct'))} %)" for p in raw["phases"]))
    s = report["summary"]
    lines.append("")
    if "pg_group_over_raw_row" in s:
        lines.append(f"PostgreSQL group commit (end to end) / per-row autocommit ceiling (database only): "
                     f"{s['pg_group_over_raw_row']}x (per round {s['pg_group_over_raw_row_per_round']})")
    if "pg_group_over_row" in s:
        lines.append(f"PostgreSQL group commit / per-row: {s['pg_group_over_row']}x "
                     f"(per round {s['pg_group_over_row_per_round']}); target 5x: "
                     f"{'met' if s['ratio_target_met'] else 'NOT met'}")
    if "sqlite_group_over_row" in s:
        lines.append(f"SQLite group commit / per-row: {s['sqlite_group_over_row']}x")
    if "pg_group_lifecycles_per_s" in s:
        lines.append(f"PostgreSQL group commit: {_f(s['pg_group_lifecycles_per_s'])} lifecycles/s; "
                     f"target 25,000/s: {'met' if s['rate_target_met'] else 'NOT met'}")
    # where the CPU went, first round of each target
    lines.append("")
    lines.append("CPU seconds per timed phase (round 1):")
    for name, r in report["results"].items():
        if r.get("phases"):
            cpu = r["phases"][0].get("cpu", {}).get("cpu_s", {})
            lines.append(f"  {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
    return "\n".join(lines)
