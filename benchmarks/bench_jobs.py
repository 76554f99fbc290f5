"""Fleet jobs against their floors, in one run (issue 11's Performance targets).

    python benchmarks/bench_jobs.py                       # every phase, SQLite and PostgreSQL
    python benchmarks/bench_jobs.py --phases light,persistent --db sqlite --rounds 3
    python benchmarks/bench_jobs.py --phases rate --rate 200 --rate-seconds 60
    python benchmarks/bench_jobs.py --phases memory --memory-devices 100000
    python benchmarks/bench_jobs.py --phases light --profile /tmp/jobs   # cProfile of each job phase
    python benchmarks/bench_jobs.py --phases light --db memory,pg --transport direct

Starts a throwaway tuned Mosquitto (unless ``--url``) and ``--devices``
simulated devices (the lean ones of :mod:`fleetrpc.sim`, in worker
processes, answering ``echo`` at once).  With ``--transport direct`` the
devices connect to the dispatcher's own MQTT endpoint instead (issue 13's
:class:`DeviceEndpoint`, in this process; one fleet per database, started
after its dispatcher): the same jobs without the broker's cost.  Per database (``--db``: a SQLite
file with ``synchronous=FULL``, a PostgreSQL database created for the
run on ``--dsn`` and dropped at the end, or ``memory`` -- a repository
that writes nothing, to tell the engine's cost from its database's), one Dispatcher, one
PersistentRpc engine on a group-commit store and one JobEngine, on the same
Database, as ``fleetrpc serve`` wires them.  Phases, each bounded:

``light``
    Round after round, in turns: the *floor* -- the same round trips with
    one ``Dispatcher.broadcast`` to every device, no database --; a
    lightweight job over every device (``deviceIds``) with no rate limit and
    the default ``maxInFlight`` (1000); and the same job with ``maxInFlight``
    = every device.  A job's time is from ``submit`` to ``wait`` returning
    (every outcome and the COMPLETED status committed).
``persistent``
    The persistent engine's own rate -- ``--devices`` calls, 1000 callers
    each ``call`` then ``wait(durable=True)`` -- against a persistent job
    over every device (``maxInFlight`` 1000), in turns.
``rate``
    One rate-limited job (``--rate`` devices/s over ``--rate-seconds``, on
    the first database): the achieved rate from the stored start times, over
    the whole job and per 10 s window.  Past the fleet's devices the job
    names ids no device has (OFFLINE at once, started at the same pace), so
    that 200/s lasts a whole minute with 10,000 devices.
``memory``
    In a fresh child process (clean RSS): a lightweight job over
    ``--memory-devices`` devices of the registry (a SQLite ``device`` table,
    targets resolved 1000 at a time by ``deviceType``), none of them
    connected -- every device is OFFLINE at once, so what is measured is the
    job engine itself (targets, rows, counts), not calls in flight.  Peak
    RSS growth and the tracemalloc peak, for a tenth of the devices too.

Times are wall-clock on a shared machine: compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

TENANT = "11111111-1111-1111-1111-111111111111"
PARAMS = {"v": 1, "s": "fleetrpc"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- one database's stack ------------------------------------------------------------


class Stack:
    """Dispatcher + persistent engine + job engine on one Database."""

    def __init__(self, name: str, db_url: str, mqtt_url: str | None, devices: int) -> None:
        self.name = name
        self.db_url = db_url
        #: the broker's URL; None: the devices connect to this stack's own endpoint
        self.mqtt_url = mqtt_url
        self.devices = devices
        self.endpoint = None

    def open_endpoint(self) -> None:
        """Give the dispatcher its own device endpoint (``--transport
        direct``), before :meth:`start`."""
        from fleetrpc.transport.endpoint import DeviceEndpoint, EndpointSettings

        # the simulator's devices log in as "bench" with their device id as client id
        self.endpoint = DeviceEndpoint(
            EndpointSettings(host="127.0.0.1", port=0, max_inflight=1000, max_connections=self.devices + 100),
            authenticate=lambda username, password, client_id: client_id if username == "bench" else None)

    @property
    def device_url(self) -> str:
        """Where the simulated devices connect: the endpoint once started, or the broker."""
        if self.endpoint is None:
            return self.mqtt_url
        return f"mqtt://bench@127.0.0.1:{self.endpoint.ports['tcp']}"

    async def start(self) -> None:
        from fleetrpc import Dispatcher, PersistentRpc, Settings
        from fleetrpc.jobs import JobEngine
        from fleetrpc.store import rpc_store
        from fleetrpc.store.db import open_database
        from fleetrpc.store.jobs import JobRepository

        if self.db_url == "memory":
            self.db = self.store = None
        else:
            self.db = await open_database(self.db_url)
            self.store = rpc_store(self.db, group_commit=True)
            await self.store.open()
        self.dispatcher = Dispatcher(Settings(
            **({"mqtt_url": self.mqtt_url} if self.endpoint is None else {}), node_id=f"jbench-{self.name}-{uuid.uuid4().hex[:6]}",
            min_timeout_ms=0, ttl_enabled=False, inflight_window=max(20_000, 2 * self.devices),
        ), transport=self.endpoint)
        await self.dispatcher.start()
        self.persistent = None
        if self.store is not None:
            self.persistent = PersistentRpc(self.dispatcher, self.store)
            await self.persistent.start()
        repo = MemoryJobs() if self.db is None else JobRepository(self.db)
        self.writes = _count_writes(repo)
        self.jobs = JobEngine(self.dispatcher, repo, persistent=self.persistent)
        await self.jobs.start()

    async def wait_online(self, device_ids: list[str]) -> None:
        deadline = time.monotonic() + 30 + len(device_ids) / 500
        want = set(device_ids)
        while not want <= self.dispatcher.online_devices:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: {len(want - self.dispatcher.online_devices)} devices never online")
            await asyncio.sleep(0.05)

    async def db_cpu(self) -> dict[int, float]:
        """CPU seconds so far of each PostgreSQL backend serving this run's
        database (all of them are this run's: the database is its own);
        empty for SQLite, whose work is on a thread of this process."""
        from fleetrpc.bench.cpu import process_cpu

        if self.db is None or self.db.dialect != "postgresql":
            return {}
        rows = await self.db.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        return {r[0]: cpu for r in rows if (cpu := process_cpu(r[0])) is not None}

    async def close(self) -> None:
        for part in (self.jobs, self.persistent, self.dispatcher, self.store, self.db):
            if part is None:
                continue
            with contextlib.suppress(Exception):
                await asyncio.wait_for(part.close(), 30)


def _count_writes(repo: Any) -> dict[str, int]:
    """Count the repository's batch writes (transactions) in ``counts``."""
    counts = {"record": 0}
    for name in counts:
        inner = getattr(repo, name)

        async def counted(*args, _inner=inner, _name=name, **kwargs):
            counts[_name] += 1
            return await _inner(*args, **kwargs)

        setattr(repo, name, counted)
    return counts


class MemoryJobs:
    """A job repository that writes nothing (``--db memory``): the job
    engine's own cost without its database, for the comparison only."""

    def __init__(self) -> None:
        self.jobs: dict[str, Any] = {}

    async def insert(self, job) -> None:
        self.jobs[job.id] = job

    async def save(self, job, fence=None) -> None:
        pass

    async def record(self, job, rows=(), fence=None) -> None:
        pass

    async def cancel_requested(self, job_ids) -> list:
        return []

    async def get(self, tenant_id, job_id):
        return self.jobs.get(job_id)

    async def load_unfinished(self) -> list:
        return []


class Timed:
    """Wall and this process's CPU seconds of a block, optionally profiled."""

    def __init__(self, profile: str | None = None) -> None:
        self.profile = profile

    def __enter__(self) -> "Timed":
        self._prof = None
        if self.profile:
            import cProfile

            self._prof = cProfile.Profile()
            self._prof.enable()
        self.t0 = time.perf_counter()
        self.c0 = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0
        if self._prof is not None:
            self._prof.disable()
            self._prof.dump_stats(self.profile)
            log(f"profile written to {self.profile}")


def _spec(ids: list[str], **over: Any):
    from fleetrpc.jobs import parse_spec

    body = {"targets": {"deviceIds": ids}, "method": "echo", "params": PARAMS, "timeout": 30_000}
    body.update(over)
    return parse_spec(body)


# -- phases ----------------------------------------------------------------------------------


async def floor(stack: Stack, ids: list[str]) -> dict:
    db0 = await stack.db_cpu()
    with Timed() as t:
        bc = stack.dispatcher.broadcast(ids, "echo", PARAMS, timeout=30)
        async for _ in bc:
            pass
        s = await bc.wait()
    return {"wall_s": t.wall, "cpu_s": t.cpu, "db_cpu_s": _spent(db0, await stack.db_cpu()),
            "succeeded": s.succeeded, "failed": s.failed}


def _spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the database's backends used between two readings (a
    backend that appeared meanwhile counts from zero)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def _rpc_transactions(stack: Stack) -> int:
    """Transactions of the persistent engine's store so far (0: none)."""
    return stack.store.stats.transactions if stack.store is not None else 0


async def run_job(stack: Stack, spec, profile: str | None = None) -> dict:
    before = dict(stack.writes)
    tx0 = _rpc_transactions(stack)
    db0 = await stack.db_cpu()
    with Timed(profile) as t:
        job = await stack.jobs.submit(TENANT, spec)
        job = await stack.jobs.wait(TENANT, job.id, timeout=600)
    c = job.counts
    return {"wall_s": t.wall, "cpu_s": t.cpu, "db_cpu_s": _spent(db0, await stack.db_cpu()), "status": job.status.value, "succeeded": c.succeeded,
            "not_succeeded": c.total - c.succeeded, "id": job.id,
            "writes": stack.writes["record"] - before["record"],
            "rpc_transactions": _rpc_transactions(stack) - tx0}


async def persistent_floor(stack: Stack, ids: list[str], callers: int) -> dict:
    from fleetrpc.rpc.status import RpcStatus

    engine = stack.persistent
    ok = bad = 0
    it = iter(ids)

    async def caller() -> None:
        nonlocal ok, bad
        for dev in it:
            rpc_id = await engine.call(dev, "echo", PARAMS, timeout_ms=30_000, tenant_id=TENANT)
            rec = await engine.wait(rpc_id, 60, durable=True, tenant_id=TENANT)
            if rec.status is RpcStatus.SUCCESSFUL:
                ok += 1
            else:
                bad += 1

    tx0 = _rpc_transactions(stack)
    db0 = await stack.db_cpu()
    with Timed() as t:
        await asyncio.gather(*(caller() for _ in range(callers)))
    return {"wall_s": t.wall, "cpu_s": t.cpu, "db_cpu_s": _spent(db0, await stack.db_cpu()),
            "succeeded": ok, "not_succeeded": bad, "rpc_transactions": _rpc_transactions(stack) - tx0}


async def _settle() -> None:
    """Between two phases: let the last one's trailing writes go out (a
    call ends with the device's reply; the PUBACK of that reply is written
    after it -- 10,000 loopback sends, ~0.1 s, which the next phase paid
    when it started at once) and collect its garbage."""
    await asyncio.sleep(0.5)
    gc.collect()


def _fmt(r: dict, n: int) -> str:
    batches = f", {r['writes']} writes" if "writes" in r else ""
    if r.get("rpc_transactions"):
        batches += f", {r['rpc_transactions']} RPC store transactions"
    db = f", PostgreSQL CPU {r['db_cpu_s'] / n * 1e6:.0f} us/device" if r.get("db_cpu_s") else ""
    return (f"{r['wall_s']:.3f} s ({n / r['wall_s']:,.0f}/s), CPU {r['cpu_s']:.2f} s "
            f"({r['cpu_s'] / n * 1e6:.0f} us/device{db}), {r['succeeded']} ok{batches}")


async def phase_light(stack: Stack, ids: list[str], rounds: int, profile: str | None) -> dict:
    out: dict[str, list] = {"floor": [], "job": [], "job_all_in_flight": []}
    n = len(ids)
    for rnd in range(rounds):
        order = ["floor", "job", "job_all_in_flight"]
        if rnd % 2:
            order.reverse()
        for what in order:
            await _settle()
            prof = f"{profile}.{stack.name}.{what}.{rnd}.prof" if profile and what != "floor" else None
            if what == "floor":
                r = await floor(stack, ids)
            elif what == "job":
                r = await run_job(stack, _spec(ids), prof)
            else:
                r = await run_job(stack, _spec(ids, rollout={"maxInFlight": n}), prof)
            out[what].append(r)
            log(f"{stack.name} light round {rnd}: {what:18s} {_fmt(r, n)}")
    return _summary(out, "floor", n)


async def phase_persistent(stack: Stack, ids: list[str], rounds: int, callers: int, profile: str | None) -> dict:
    out: dict[str, list] = {"engine": [], "job": []}
    n = len(ids)
    for rnd in range(rounds):
        order = ["engine", "job"] if rnd % 2 == 0 else ["job", "engine"]
        for what in order:
            await _settle()
            if what == "engine":
                r = await persistent_floor(stack, ids, callers)
            else:
                prof = f"{profile}.{stack.name}.persistent.{rnd}.prof" if profile else None
                r = await run_job(stack, _spec(ids, persistent=True, rollout={"maxInFlight": callers}), prof)
            out[what].append(r)
            log(f"{stack.name} persistent round {rnd}: {what:7s} {_fmt(r, n)}")
    return _summary(out, "engine", n)


def _summary(out: dict[str, list], base: str, n: int) -> dict:
    res: dict[str, Any] = {"devices": n, "runs": out}
    med = {k: statistics.median(r["wall_s"] for r in v) for k, v in out.items()}
    res["median_s"] = {k: round(v, 3) for k, v in med.items()}
    res["median_per_s"] = {k: round(n / v) for k, v in med.items()}
    res["cpu_us_per_device"] = {k: round(statistics.median(r["cpu_s"] for r in v) / n * 1e6, 1)
                                for k, v in out.items()}
    if any(r.get("db_cpu_s") for v in out.values() for r in v):
        res["postgresql_cpu_us_per_device"] = {
            k: round(statistics.median(r["db_cpu_s"] for r in v) / n * 1e6, 1) for k, v in out.items()}
    # ratio of each to the floor of the same round, then the median of those
    res["ratio_to_" + base] = {
        k: round(statistics.median(r["wall_s"] / b["wall_s"] for r, b in zip(v, out[base])), 2)
        for k, v in out.items() if k != base
    }
    return res


async def phase_rate(stack: Stack, ids: list[str], rate: float, seconds: float) -> dict:
    # rate x seconds + 1 starts last `seconds`; past the fleet, ids of no
    # connected device (OFFLINE at once, started at the same pace).
    n = int(rate * seconds) + 1
    targets = list(ids[:n]) + [f"zz-offline-{i:06d}" for i in range(max(0, n - len(ids)))]
    spec = _spec(targets, rollout={"maxPerMinute": rate * 60})
    r = await run_job(stack, spec)
    starts: list[int] = []
    page = 0
    while True:
        rows, total = await stack.jobs.devices(TENANT, r["id"], 10_000, page)
        starts.extend(row.start_ts for row in rows)
        page += 1
        if page * 10_000 >= total:
            break
    starts.sort()
    span = (starts[-1] - starts[0]) / 1000.0
    # n starts over the span: the first is free (the bucket starts with one token)
    achieved = (len(starts) - 1) / span
    windows = []
    t0 = starts[0]
    for w in range(int(span // 10)):
        lo, hi = t0 + w * 10_000, t0 + (w + 1) * 10_000
        windows.append(sum(1 for s in starts if lo <= s < hi) / 10.0)
    res = {
        "target_per_s": rate, "devices": n, "not_connected": max(0, n - len(ids)), "span_s": round(span, 2), "achieved_per_s": round(achieved, 2),
        "deviation_pct": round((achieved / rate - 1) * 100, 2),
        "windows_10s_per_s": windows,
        "worst_window_deviation_pct": round(max((abs(w / rate - 1) * 100 for w in windows), default=0.0), 2),
        "job_wall_s": round(r["wall_s"], 2), "cpu_s": round(r["cpu_s"], 2), "succeeded": r["succeeded"],
    }
    log(f"{stack.name} rate: target {rate}/s, achieved {achieved:.2f}/s over {span:.1f} s "
        f"({res['deviation_pct']:+.2f} %), 10 s windows {windows}")
    return res


# -- memory (child process) ---------------------------------------------------------------------


async def memory_child(devices: int, mqtt_url: str, use_tracemalloc: bool) -> dict:
    from fleetrpc import Dispatcher, Settings
    from fleetrpc.jobs import JobEngine, parse_spec
    from fleetrpc.jobs.registry import JobTargets
    from fleetrpc.store.db import open_database
    from fleetrpc.store.jobs import JobRepository

    tmp = tempfile.mkdtemp(prefix="jbench-mem-")
    db = await open_database(f"sqlite:///{tmp}/mem.db")
    now = int(time.time() * 1000)
    rows = [(f"{uuid.UUID(int=i + 1)}", TENANT, now, f"mem-{i:06d}", "bench") for i in range(devices)]
    await db.executemany("INSERT INTO device (id, tenant_id, created_time, name, type) VALUES ($1, $2, $3, $4, $5)",
                         rows)
    del rows
    d = Dispatcher(Settings(mqtt_url=mqtt_url, node_id=f"jbench-mem-{os.getpid()}", min_timeout_ms=0,
                            ttl_enabled=False))
    await d.start()
    engine = JobEngine(d, JobRepository(db), targets=JobTargets(db))
    spec = parse_spec({"targets": {"deviceType": "bench"}, "method": "echo", "params": PARAMS})
    # A warm-up job over the same devices: imports, statement caches, the
    # allocator's arenas are the process's, not this job's.  Its own RSS
    # growth (an upper bound of a first job's) is reported too.
    gc.collect()
    rss_first = _rss_kib()
    first_peak = [rss_first]
    first_done = asyncio.Event()

    async def sample_first() -> None:
        while not first_done.is_set():
            first_peak[0] = max(first_peak[0], _rss_kib())
            await asyncio.sleep(0.002)

    sampler = asyncio.ensure_future(sample_first())
    job = await engine.submit(TENANT, spec)
    await engine.wait(TENANT, job.id, timeout=600)
    first_done.set()
    await sampler
    gc.collect()
    if use_tracemalloc:
        import tracemalloc

        tracemalloc.start()
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
    rss0 = _rss_kib()
    max0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = [rss0]
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_kib())
            await asyncio.sleep(0.002)

    sampler = asyncio.ensure_future(sample())
    t0 = time.perf_counter()
    job = await engine.submit(TENANT, spec)
    job = await engine.wait(TENANT, job.id, timeout=600)
    wall = time.perf_counter() - t0
    stop.set()
    await sampler
    out = {"devices": devices, "status": job.status.value, "offline": job.counts.offline,
           "wall_s": round(wall, 2), "first_job_rss_growth_kib": first_peak[0] - rss_first,
           "rss_growth_kib": peak[0] - rss0,
           "maxrss_growth_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - max0}
    if use_tracemalloc:
        import tracemalloc

        _, pk = tracemalloc.get_traced_memory()
        gc.collect()  # what a job leaves behind, not its garbage waiting for the collector
        cur, _ = tracemalloc.get_traced_memory()
        out["tracemalloc_peak_kib"] = (pk - base) // 1024
        out["tracemalloc_retained_kib"] = (cur - base) // 1024
        tracemalloc.stop()
    stored = await db.fetchval("SELECT count(*) FROM job_device WHERE job_id = $1", job.id)
    out["rows_stored"] = stored
    await engine.close()
    await d.close()
    await db.close()
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return out


def _rss_kib() -> int:
    from fleetrpc.bench.memory import rss_bytes

    return rss_bytes() // 1024


def phase_memory(mqtt_url: str, devices: int) -> dict:
    out = {}
    for n in (devices // 10, devices):
        for tm in (False, True):
            cmd = [sys.executable, __file__, "--memory-child", str(n), "--url", mqtt_url]
            if tm:
                cmd.append("--tracemalloc")
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            if res.returncode:
                raise RuntimeError(f"memory child failed:\n{res.stderr[-3000:]}")
            r = json.loads(res.stdout.strip().splitlines()[-1])
            key = f"{n}{'_tracemalloc' if tm else ''}"
            out[key] = r
            log(f"memory {key}: {r}")
    return out


# -- the run ----------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> dict:
    from fleetrpc.bench.persistent import _pg_database
    from fleetrpc.bench.rig import throwaway_broker
    from fleetrpc.runner import freeze_startup_heap
    from fleetrpc.sim.fleet import Fleet

    phases = set(args.phases.split(","))
    report: dict[str, Any] = {"args": vars(args), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    async with throwaway_broker(args.url) as (mqtt_url, desc, _pid):
        log(f"broker: {desc}")
        if "memory" in phases:
            report["job_memory"] = await asyncio.to_thread(phase_memory, mqtt_url, args.memory_devices)
        if not phases & {"light", "persistent", "rate"}:
            return report
        direct = args.transport == "direct"

        async def connect_fleet(url: str) -> Fleet:
            fleet = Fleet(url, args.devices, lifetime=args.lifetime)
            t = time.perf_counter()
            await fleet.start()
            log(f"{args.devices} simulated devices connected to {url} in {time.perf_counter() - t:.1f} s")
            return fleet

        async with contextlib.AsyncExitStack() as es:
            if not direct:  # one fleet on the broker serves every stack
                fleet = await connect_fleet(mqtt_url)
                es.push_async_callback(fleet.stop)
            stacks: list[Stack] = []
            tmp = es.enter_context(tempfile.TemporaryDirectory(prefix="jbench-"))
            for name in args.db.split(","):
                if name == "sqlite":
                    url = f"sqlite:///{tmp}/jobs.db"
                elif name == "memory":
                    url = "memory"
                elif name == "pg":
                    url, _settings = await es.enter_async_context(_pg_database(args.dsn, log))
                else:
                    raise SystemExit(f"unknown --db {name!r} (sqlite, pg)")
                st = Stack(name, url, None if direct else mqtt_url, args.devices)
                stacks.append(st)
            gc.collect()
            freeze_startup_heap()
            for st in stacks:
                if direct:
                    st.open_endpoint()
                await st.start()
                if direct:  # this stack's own devices, gone with it
                    fleet = await connect_fleet(st.device_url)
                    es.push_async_callback(fleet.stop)
                ids = fleet.device_ids
                es.push_async_callback(st.close)
                await st.wait_online(ids)
                res: dict[str, Any] = {}
                report[st.name] = res
                if "light" in phases:
                    res["light"] = await phase_light(st, ids, args.rounds, args.profile)
                if "persistent" in phases and st.persistent is not None:
                    res["persistent"] = await phase_persistent(st, ids, args.rounds, args.callers, args.profile)
                # on the first database (its start times are read back from the rows)
                if "rate" in phases and st is next((s for s in stacks if s.db_url != "memory"), None):
                    report["rate"] = await phase_rate(st, ids, args.rate, args.rate_seconds)
                if direct and st is not stacks[-1]:  # one fleet at a time: the next stack's connects now
                    await fleet.stop()
                    await st.close()
    return report


def print_report(r: dict) -> None:
    print(f"\nbench_jobs {r['started']}  devices={r['args']['devices']} rounds={r['args']['rounds']}")
    for name in ("memory", "sqlite", "pg"):
        if name not in r:
            continue
        for phase, res in r[name].items():
            print(f"  {name} {phase}: median s {res['median_s']}  per s {res['median_per_s']}")
            print(f"      CPU us/device {res['cpu_us_per_device']}  ratios {[(k, v) for k, v in res.items() if k.startswith('ratio')]}")
            if "postgresql_cpu_us_per_device" in res:
                print(f"      PostgreSQL CPU us/device {res['postgresql_cpu_us_per_device']}")
    if "rate" in r:
        x = r["rate"]
        print(f"  rate: target {x['target_per_s']}/s achieved {x['achieved_per_s']}/s ({x['deviation_pct']:+.2f} %) "
              f"over {x['span_s']} s; worst 10 s window {x['worst_window_deviation_pct']} %")
    if "job_memory" in r:
        for k, v in r["job_memory"].items():
            print(f"  memory {k}: {v}")


def main() -> None:
    from fleetrpc.bench.persistent import default_dsn

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phases", default="light,persistent,rate,memory")
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--db", default="sqlite,pg",
                    help="sqlite, pg, memory (a repository writing nothing: the engine without its database), "
                         "comma-separated")
    ap.add_argument("--dsn", default=default_dsn(), help="PostgreSQL server to create the run's database on")
    ap.add_argument("--url", help="broker URL (default: a throwaway tuned Mosquitto)")
    ap.add_argument("--transport", choices=("broker", "direct"), default="broker",
                    help="direct: the devices connect to the dispatcher's own endpoint (no broker in the path)")
    ap.add_argument("--callers", type=int, default=1000, help="persistent: concurrent callers = the job's maxInFlight")
    ap.add_argument("--rate", type=float, default=200.0, help="rate phase: devices per second")
    ap.add_argument("--rate-seconds", type=float, default=60.0)
    ap.add_argument("--memory-devices", type=int, default=100_000)
    ap.add_argument("--lifetime", type=float, default=1200.0, help="simulator workers stop after this at the latest")
    ap.add_argument("--profile", help="cProfile every job phase to PREFIX.<db>.<phase>.<round>.prof")
    ap.add_argument("--json", help="write the whole report here")
    ap.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--tracemalloc", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-uvloop", action="store_true")
    args = ap.parse_args()
    import uvloop

    run = asyncio.run if args.no_uvloop else uvloop.run
    if args.memory_child:
        print(json.dumps(run(memory_child(args.memory_child, args.url, args.tracemalloc))))
        return
    report = run(main_async(args))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    print_report(report)


if __name__ == "__main__":
    main()
