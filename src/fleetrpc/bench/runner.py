"""The end-to-end benchmark behind ``fleetrpc bench``.

One run: a broker (a throwaway tuned Mosquitto unless a URL is given), one
simulated fleet in worker processes (:class:`fleetrpc.sim.Fleet`), and, in
this process, the *targets*, both connected, taking turns within each
workload against that same fleet:

``reference``
    ``benchmarks/reference_dispatcher.py``: gmqtt + ``json`` + a Future and a
    ``loop.call_later`` per call + a dict of futures.  The baseline.
``fleetrpc``
    :class:`fleetrpc.dispatch.Dispatcher`.

Workloads (each bounded in time *and* count; each stops by itself):

``peak``
    Closed loop: ``window`` callers, each calling the next device as soon as
    its previous call returned.  Round trips/s, latency percentiles.
``latency``
    Open loop at a fixed rate, ``rate_fraction`` (1/2) of the target's own
    measured peak (or ``rate``); latency is measured from each call's
    *scheduled* start (no coordinated omission).  p50/p99/p99.9.  With two
    targets, once more at one common rate (``latency_same``: the fraction of
    the slower peak), since latencies at different rates do not compare;
    the ratios use that one.
``oneway``
    One-way calls (method ``notify``, which simulated devices never answer)
    from ``window`` callers; issued/s and delivered/s as counted by the fleet.
``fanout``
    One call to every device at once (``broadcast``); time until every
    device has answered, repeated ``fanout_rounds`` times.
``sequential``
    ``calls_per_device`` calls to every device under SEQUENTIAL_ON_RESPONSE
    (the reference: one awaiting loop per device).
``memory``
    Devices stop answering; ``mem_pending`` calls are left pending, and the
    Python heap growth is measured with :mod:`tracemalloc` (everything, and
    only what was allocated in the target's own source files); the cost of
    the harness's own task per call is measured the same way and subtracted.

CPU is ``time.process_time()`` of this process (the target plus the thin
harness; the fleet and the broker run elsewhere) over a phase, divided by
the round trips of that phase.  The peak and fixed-rate phases also report
what the other processes of the rig used over the phase, read from
``/proc`` (Linux): the broker started for the run and the simulator's
workers, as a share of one core (``broker_cpu``, ``fleet_cpu``; 1.0 is a
whole core) and, for the broker, per round trip.  A broker near 1.0 caps
the run whatever the dispatcher does: Mosquitto has one thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import os
import platform
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..sim.fleet import Fleet, raise_nofile_limit
from ..runner import freeze_startup_heap
from .cpu import process_cpu
from .pacer import Pacer

__all__ = ["TARGETS", "WORKLOADS", "BenchConfig", "ratios", "run_bench"]

WORKLOADS = ("peak", "latency", "oneway", "fanout", "sequential", "memory")
TARGETS = ("reference", "fleetrpc")
SCHEMA = 1
#: Period of the open-loop generator's wake-ups (s): the most a call can
#: leave after its intended time on an idle loop.
PACER_PERIOD = 0.0005

#: progress(target, workload, done, total, text)
Progress = Callable[[str, str, float, float, str], None]


@dataclass
class BenchConfig:
    """Everything one benchmark run needs; ``quick()`` shrinks it for tests."""

    devices: int = 1000
    qos: int = 1
    #: Seconds of each timed phase (peak, latency, oneway; the bound of the others).
    duration: float = 3.0
    workloads: tuple[str, ...] = WORKLOADS
    targets: tuple[str, ...] = TARGETS
    #: Broker URL; None starts a throwaway tuned Mosquitto.
    url: str | None = None
    #: Simulator worker processes (None: one per CPU, at most 4).
    processes: int | None = None
    #: Concurrent callers in the closed loops (peak, oneway).
    window: int = 1000
    #: Fixed-rate phase: this fraction of the measured peak ...
    rate_fraction: float = 0.5
    #: ... or exactly this many calls/s (same for every target).
    rate: float | None = None
    calls_per_device: int = 5
    fanout_rounds: int = 3
    mem_pending: int = 20_000
    #: Call timeout (s).
    timeout: float = 10.0
    warmup: float = 1.0
    #: Params of every call: echoed back by the devices.
    params: dict = field(default_factory=lambda: {"v": 1, "s": "fleetrpc"})

    def __post_init__(self) -> None:
        unknown = set(self.workloads) - set(WORKLOADS)
        if unknown:
            raise ValueError(f"unknown workloads: {', '.join(sorted(unknown))} (known: {', '.join(WORKLOADS)})")
        unknown = set(self.targets) - set(TARGETS)
        if unknown:
            raise ValueError(f"unknown targets: {', '.join(sorted(unknown))} (known: {', '.join(TARGETS)})")
        if self.qos not in (0, 1):
            raise ValueError("qos must be 0 or 1")
        if self.devices < 1 or self.window < 1 or self.duration <= 0:
            raise ValueError("devices, window and duration must be positive")

    def quick(self) -> BenchConfig:
        """A tiny run for tests: short phases, small windows."""
        self.duration = min(self.duration, 0.5)
        self.warmup = 0.2
        self.window = min(self.window, 32)
        self.calls_per_device = 2
        self.fanout_rounds = 1
        self.mem_pending = min(self.mem_pending, 200)
        self.timeout = min(self.timeout, 5.0)
        if self.processes is None:
            self.processes = 1
        return self


# -- targets -------------------------------------------------------------------


class _Target:
    """What the harness needs from a dispatcher; one subclass per kind."""

    name = ""
    #: Source files whose allocations count as the target's own (memory phase).
    alloc_files: tuple[str, ...] = ()

    async def start(self) -> None: ...
    async def close(self) -> None: ...

    async def ready(self, devices: list[str], timeout: float) -> None:
        """Return once every device can be called."""

    call: Callable[..., Any]

    async def fanout(self, devices: list[str], params: Any, timeout: float,
                     tick: Callable[[int], None]) -> tuple[int, int]:
        """One call to every device at once; returns (succeeded, failed)."""
        raise NotImplementedError

    async def sequential(self, devices: list[str], k: int, params: Any, timeout: float,
                         tick: Callable[[int], None]) -> tuple[int, int]:
        """``k`` calls per device, one at a time per device; (succeeded, failed)."""
        raise NotImplementedError

    def stats(self) -> dict[str, int]:
        return {}


def _reference_path() -> Path | None:
    env = os.environ.get("FLEETRPC_REFERENCE_DISPATCHER")
    if env:
        return Path(env)
    # A source checkout: <repo>/src/fleetrpc/bench/runner.py -> <repo>/benchmarks/
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "benchmarks" / "reference_dispatcher.py"
        if candidate.is_file():
            return candidate
    return None


class _ReferenceTarget(_Target):
    name = "reference"

    def __init__(self, url: str, cfg: BenchConfig) -> None:
        path = _reference_path()
        if path is None:
            raise RuntimeError("benchmarks/reference_dispatcher.py not found (run from a source "
                               "checkout or set FLEETRPC_REFERENCE_DISPATCHER)")
        spec = importlib.util.spec_from_file_location("fleetrpc_bench_reference", path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        self.alloc_files = (str(path),)
        self.d = module.ReferenceDispatcher(
            url, node_id=f"bench-ref-{os.getpid()}", qos=cfg.qos,
            window=max(cfg.window, cfg.mem_pending) + 16, default_timeout=cfg.timeout,
        )
        self.call = self.d.call

    async def start(self) -> None:
        await self.d.start()

    async def close(self) -> None:
        await self.d.close()

    async def fanout(self, devices, params, timeout, tick):
        # The plain way: one awaiting call per device, all at once.
        return await self.sequential(devices, 1, params, timeout, tick)

    async def sequential(self, devices, k, params, timeout, tick):
        call = self.call
        ok = failed = 0

        async def per_device(dev):
            nonlocal ok, failed
            for i in range(k):
                try:
                    await call(dev, "echo", params, timeout=timeout)
                    ok += 1
                except Exception:  # noqa: BLE001 - counted, never fatal
                    failed += 1
                tick(1)

        await asyncio.gather(*(per_device(dev) for dev in devices))
        return ok, failed

    def stats(self):
        return dict(self.d.stats)


class _FleetrpcTarget(_Target):
    name = "fleetrpc"

    def __init__(self, url: str, cfg: BenchConfig) -> None:
        from .. import config as config_module
        from ..config import Settings
        from ..dispatch import Dispatcher

        pkg = Path(config_module.__file__).resolve().parent
        # The package's own files, not the harness and the simulator.
        self.alloc_files = (str(pkg),)
        self._exclude = (str(pkg / "bench"), str(pkg / "sim"))
        self.d = Dispatcher(Settings(
            mqtt_url=url, node_id=f"bench-{os.getpid()}", qos=cfg.qos, min_timeout_ms=0,
            inflight_window=max(cfg.window, cfg.mem_pending) + 16,
            queue_cap=max(100, cfg.calls_per_device + 1),
        ))
        self.call = self.d.call

    async def start(self) -> None:
        await self.d.start()

    async def close(self) -> None:
        await self.d.close()

    async def ready(self, devices, timeout):
        # Calls to devices not (yet) known online fail at once: wait for the
        # retained presence of every device.
        deadline = time.monotonic() + timeout
        want = set(devices)
        while True:
            missing = len(want - self.d.online_devices)
            if not missing:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{missing} devices not seen online by the dispatcher after {timeout:.0f} s")
            await asyncio.sleep(0.05)

    async def fanout(self, devices, params, timeout, tick):
        bc = self.d.broadcast(devices, "echo", params, timeout=timeout)
        async for _outcome in bc:
            tick(1)
        summary = await bc.wait()
        return summary.succeeded, summary.failed

    async def sequential(self, devices, k, params, timeout, tick):
        from .._core.constants import DeliveryStrategy

        d = self.d
        for dev in devices:
            d.configure_device(dev, strategy=DeliveryStrategy.SEQUENTIAL_ON_RESPONSE)
        try:
            # All k rounds are submitted at once; each device's queue releases
            # its next call only when the previous one has its reply.
            rounds = [d.broadcast(devices, "echo", params, timeout=timeout * k) for _ in range(k)]

            async def drain(bc):
                async for _outcome in bc:
                    tick(1)
                return await bc.wait()

            summaries = await asyncio.gather(*(drain(bc) for bc in rounds))
        finally:
            for dev in devices:
                d.configure_device(dev, strategy=DeliveryStrategy.BURST)
        return sum(s.succeeded for s in summaries), sum(s.failed for s in summaries)

    def stats(self):
        s = self.d.stats
        return s.as_dict() if hasattr(s, "as_dict") else dict(s)


def _make_target(name: str, url: str, cfg: BenchConfig) -> _Target:
    return (_ReferenceTarget if name == "reference" else _FleetrpcTarget)(url, cfg)


# -- measuring -------------------------------------------------------------------


def _percentiles(samples: list[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None}
    samples.sort()
    n = len(samples)

    def at(q: float) -> float:
        return round(samples[min(n - 1, int(q * n))] * 1000.0, 3)

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "p999_ms": at(0.999), "max_ms": round(samples[-1] * 1000.0, 3)}


#: The rig's other processes whose CPU each phase reports: name -> pids.
_RIG: ContextVar[dict[str, tuple[int, ...]]] = ContextVar("fleetrpc_bench_rig", default={})


def _cpu_seconds(pids: tuple[int, ...]) -> float | None:
    """CPU seconds these processes have used; None if any cannot be read."""
    total = 0.0
    for pid in pids:
        cpu = process_cpu(pid)
        if cpu is None:
            return None
        total += cpu
    return total


class _Phase:
    """CPU and wall clock of one phase, and a progress ticker."""

    def __init__(self, progress: Progress, target: str, workload: str, total: float, text: str = "") -> None:
        self.progress = progress
        self.target = target
        self.workload = workload
        self.total = total
        self.done = 0.0
        self._next = 0.0
        self.text = text

    def __enter__(self) -> _Phase:
        gc.collect()
        self._rig0 = {name: _cpu_seconds(pids) for name, pids in _RIG.get().items() if pids}
        self.cpu0 = time.process_time()
        self.t0 = time.perf_counter()
        self.progress(self.target, self.workload, 0, self.total, self.text)
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.cpu0
        #: CPU seconds of the rig's other processes over the phase.
        self.rig_cpu: dict[str, float | None] = {}
        for name, before in self._rig0.items():
            after = _cpu_seconds(_RIG.get()[name])
            self.rig_cpu[name] = None if before is None or after is None else after - before
        self.progress(self.target, self.workload, self.total, self.total, self.text)

    def tick(self, n: float = 1) -> None:
        # Called per outcome in some phases: redraw at most every 1 %.
        self.done += n
        if self.done >= self._next or n == 0:
            self._next = self.done + self.total / 100
            self.progress(self.target, self.workload, self.done, self.total, self.text)

    def cpu_us_per(self, n: int) -> float | None:
        return round(self.cpu / n * 1e6, 2) if n else None

    def rig_report(self, n: int) -> dict[str, float | None]:
        """The rig's CPU over the phase: share of one core per process group,
        and the broker's CPU per round trip (of ``n``)."""
        out: dict[str, float | None] = {}
        for name, cpu in self.rig_cpu.items():
            out[f"{name}_cpu"] = None if cpu is None else round(cpu / self.elapsed, 3)
        broker = self.rig_cpu.get("broker")
        if broker is not None and n:
            out["broker_cpu_us_per_rt"] = round(broker / n * 1e6, 2)
        return out


async def _ticker(phase: _Phase, period: float = 0.2) -> None:
    """Advance a time-based progress bar while a phase runs."""
    while True:
        await asyncio.sleep(period)
        phase.progress(phase.target, phase.workload, min(phase.total, time.perf_counter() - phase.t0),
                       phase.total, phase.text)


@contextlib.asynccontextmanager
async def _ticking(phase: _Phase) -> AsyncIterator[None]:
    task = asyncio.get_running_loop().create_task(_ticker(phase))
    try:
        yield
    finally:
        task.cancel()


async def _closed_loop(target: _Target, devices: list[str], cfg: BenchConfig, seconds: float,
                       *, method: str = "echo", oneway: bool = False, record: bool = True) -> dict[str, Any]:
    """``window`` callers, each calling again as soon as its call returned."""
    call = target.call
    params = cfg.params
    timeout = cfg.timeout
    n = len(devices)
    window = cfg.window
    end = time.perf_counter() + seconds
    # A count bound as well as the time bound: a target failing every call
    # instantly must not spin for ever either.
    limit = int(seconds * 2_000_000 / window) + 1
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    ok = 0
    clock = time.perf_counter

    async def caller(k: int) -> None:
        nonlocal ok
        i = k
        lat = latencies.append
        for step in range(limit):
            t = clock()
            if t >= end:
                return
            try:
                await call(devices[i % n], method, params, timeout=timeout, oneway=oneway)
            except Exception as exc:  # noqa: BLE001 - counted, never fatal
                errors[type(exc).__name__] += 1
                await asyncio.sleep(0)
            else:
                ok += 1
                if record:
                    lat(clock() - t)
            if oneway and not step & 63:
                # A one-way call may complete without ever yielding to the loop.
                await asyncio.sleep(0)
            i += window

    await asyncio.gather(*(caller(k) for k in range(window)))
    return {"ok": ok, "errors": dict(errors), "latencies": latencies}


async def _peak(target, devices, cfg, progress) -> dict[str, Any]:
    with _Phase(progress, target.name, "peak", cfg.warmup, "warm-up") as w:
        async with _ticking(w):
            await _closed_loop(target, devices, cfg, cfg.warmup, record=False)
    with _Phase(progress, target.name, "peak", cfg.duration) as ph:
        async with _ticking(ph):
            r = await _closed_loop(target, devices, cfg, cfg.duration)
    ok = r["ok"]
    return {
        "window": cfg.window,
        "round_trips": ok,
        "errors": r["errors"],
        "elapsed_s": round(ph.elapsed, 3),
        "rps": round(ok / ph.elapsed, 1),
        **_percentiles(r["latencies"]),
        "cpu_s": round(ph.cpu, 3),
        "cpu_us_per_rt": ph.cpu_us_per(ok),
        **ph.rig_report(ok),
    }


async def _fixed_rate(target, devices, cfg, progress, peak_rps: float,
                      label: str = "latency") -> dict[str, Any]:
    rate = max(1.0, peak_rps * cfg.rate_fraction)
    total = max(1, int(rate * cfg.duration))
    call = target.call
    params = cfg.params
    timeout = cfg.timeout
    n = len(devices)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    outstanding = 0
    cap = max(10 * cfg.window, 10_000)  # beyond this the target is overloaded: shed
    shed = 0
    all_done = loop.create_future()
    launched = 0
    clock = time.perf_counter

    async def one(dev: str, scheduled: float) -> None:
        nonlocal outstanding
        try:
            await call(dev, "echo", params, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - counted, never fatal
            errors[type(exc).__name__] += 1
        else:
            latencies.append(clock() - scheduled)
        outstanding -= 1
        if outstanding == 0 and launched >= total and not all_done.done():
            all_done.set_result(None)

    def release_due() -> None:
        # Every call whose intended time has come leaves now and is timed
        # from its intended time, so a late wake-up is charged to the calls
        # it delayed (no coordinated omission).
        nonlocal launched, shed, outstanding
        elapsed = clock() - t0
        due = min(total, int(elapsed * rate) + 1)
        while launched < due:
            if outstanding >= cap:
                shed += 1
            else:
                outstanding += 1
                loop.create_task(one(devices[launched % n], t0 + launched / rate))
            launched += 1
        if elapsed > cfg.duration * 2 + 1:  # the loop itself fell behind: stop
            shed += total - launched
            launched = total
        if launched >= total and not generated.done():
            generated.set_result(None)

    generated = loop.create_future()
    with _Phase(progress, target.name, label, cfg.duration, f"{rate:,.0f}/s") as ph:
        async with _ticking(ph):
            t0 = clock()
            # A timerfd pacer: uvloop's own timers are whole milliseconds
            # late, a finer sleep spins (see fleetrpc.bench.pacer).
            with Pacer(PACER_PERIOD, release_due):
                release_due()
                await generated
            if outstanding:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(all_done), timeout + 2.0)
    done = len(latencies)
    return {
        "target_rps": round(rate, 1),
        "achieved_rps": round(done / ph.elapsed, 1),
        "calls": done,
        "errors": dict(errors),
        "shed": shed,
        **_percentiles(latencies),
        "cpu_s": round(ph.cpu, 3),
        "cpu_us_per_rt": ph.cpu_us_per(done),
        **ph.rig_report(done),
    }


async def _oneway(target, devices, cfg, progress, fleet: Fleet) -> dict[str, Any]:
    before = (await fleet.stats())["notified"]
    with _Phase(progress, target.name, "oneway", cfg.duration) as ph:
        async with _ticking(ph):
            r = await _closed_loop(target, devices, cfg, cfg.duration, method="notify", oneway=True, record=False)
        issued_s = time.perf_counter() - ph.t0
        sent = r["ok"]
        # Then wait for the devices to have them all (bounded).
        delivered, last_t, last_change = 0, time.perf_counter(), time.perf_counter()
        while delivered < sent:
            await asyncio.sleep(0.05)
            now = time.perf_counter()
            got = (await fleet.stats())["notified"] - before
            if got != delivered:
                delivered, last_t, last_change = got, now, now
            elif now - last_change > 2.0 or now - ph.t0 > cfg.duration + cfg.timeout:
                break
    span = max(last_t - ph.t0, issued_s)
    return {
        "window": cfg.window,
        "sent": sent,
        "errors": r["errors"],
        "sent_per_s": round(sent / issued_s, 1),
        "delivered": delivered,
        "delivered_per_s": round(delivered / span, 1),
        "lost": max(0, sent - delivered),
        "cpu_s": round(ph.cpu, 3),
        "cpu_us_per_call": ph.cpu_us_per(sent),
    }


async def _fanout(target, devices, cfg, progress) -> dict[str, Any]:
    times: list[float] = []
    ok = failed = 0
    n = len(devices)
    with _Phase(progress, target.name, "fanout", float(n * cfg.fanout_rounds), f"{n} devices") as ph:
        for _ in range(cfg.fanout_rounds):
            t = time.perf_counter()
            good, bad = await target.fanout(devices, cfg.params, cfg.timeout, ph.tick)
            times.append(time.perf_counter() - t)
            ok += good
            failed += bad
            if time.perf_counter() - ph.t0 > cfg.duration:
                break
    times_sorted = sorted(times)
    return {
        "devices": n,
        "rounds": len(times),
        "succeeded": ok,
        "failed": failed,
        "time_s": round(times_sorted[len(times) // 2], 4),
        "best_s": round(times_sorted[0], 4),
        "times_s": [round(t, 4) for t in times],
        "cpu_s": round(ph.cpu, 3),
        "cpu_us_per_rt": ph.cpu_us_per(ok + failed),
    }


async def _sequential(target, devices, cfg, progress) -> dict[str, Any]:
    k = cfg.calls_per_device
    with _Phase(progress, target.name, "sequential", float(len(devices) * k), f"{k} per device") as ph:
        ok, failed = await asyncio.wait_for(
            target.sequential(devices, k, cfg.params, cfg.timeout, ph.tick),
            cfg.timeout * k + 10.0,
        )
    return {
        "devices": len(devices),
        "calls_per_device": k,
        "succeeded": ok,
        "failed": failed,
        "elapsed_s": round(ph.elapsed, 3),
        "rps": round(ok / ph.elapsed, 1),
        "cpu_s": round(ph.cpu, 3),
        "cpu_us_per_rt": ph.cpu_us_per(ok + failed),
    }


def _heap_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot,
                 include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> int:
    total = 0
    for stat in after.compare_to(before, "filename"):
        name = stat.traceback[0].filename
        if include and not name.startswith(include):
            continue
        if exclude and name.startswith(exclude):
            continue
        total += stat.size_diff
    return total


async def _harness_bytes(n: int) -> float:
    """Bytes per pending call that belong to the harness (a task awaiting a future)."""
    loop = asyncio.get_running_loop()
    futs = [loop.create_future() for _ in range(n)]  # stands in for the target's own
    gc.collect()
    tracemalloc.start(1)
    try:
        before = tracemalloc.take_snapshot()

        async def waiter(fut):
            # Nothing but the await: whatever this frame allocates would be
            # charged to the harness and taken off the target's figure.
            try:
                await fut
            except asyncio.CancelledError:
                pass

        tasks = [loop.create_task(waiter(f)) for f in futs]
        await asyncio.sleep(0)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks)
    return _heap_growth(before, after) / n


async def _memory(target, devices, cfg, progress, fleet: Fleet) -> dict[str, Any]:
    n = cfg.mem_pending
    loop = asyncio.get_running_loop()
    call = target.call
    params = cfg.params
    # Twice: the first run also grows what never shrinks back (asyncio's
    # weak set of all tasks); the target's phase then starts warm as well.
    await _harness_bytes(n)
    harness = await _harness_bytes(n)
    await fleet.configure(drop_rate=1.0)  # nobody answers: every call stays pending
    tasks: list[asyncio.Task] = []
    try:
        with _Phase(progress, target.name, "memory", float(n), f"{n} pending") as ph:
            base = (await fleet.stats())["requests"]
            gc.collect()
            tracemalloc.start(1)
            try:
                before = tracemalloc.take_snapshot()
                for i in range(n):
                    tasks.append(loop.create_task(call(devices[i % len(devices)], "echo", params,
                                                       timeout=max(60.0, cfg.timeout))))
                    if not i & 255:
                        await asyncio.sleep(0)
                # Until the devices have them all: sent, not merely queued.
                deadline = time.perf_counter() + cfg.timeout
                while time.perf_counter() < deadline:
                    got = (await fleet.stats())["requests"] - base
                    ph.done = got
                    ph.tick(0)
                    if got >= n:
                        break
                    await asyncio.sleep(0.05)
                # Then until the heap stops shrinking: QoS 1 requests stay
                # buffered until their PUBACK, which is transient, not the
                # cost of a pending call.
                low, still = tracemalloc.get_traced_memory()[0], 0
                while time.perf_counter() < deadline and still < 4:
                    await asyncio.sleep(0.1)
                    now_mem = tracemalloc.get_traced_memory()[0]
                    if now_mem < low - 1024:
                        low, still = now_mem, 0
                    else:
                        still += 1
                gc.collect()
                after = tracemalloc.take_snapshot()
            finally:
                tracemalloc.stop()
            pending_seen = (await fleet.stats())["requests"] - base
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await fleet.configure(drop_rate=0.0)
    total = _heap_growth(before, after)
    own = _heap_growth(before, after, include=target.alloc_files,
                       exclude=getattr(target, "_exclude", ()))
    return {
        "pending": n,
        "delivered_to_devices": pending_seen,
        "method": "tracemalloc: Python heap growth with N calls pending (devices silent, "
                  "every request delivered, heap settled); per call = total minus the "
                  "harness's own task per call; 'own' counts only allocations made in "
                  "the target's source files",
        "bytes_per_pending": round(total / n - harness, 1),
        "bytes_per_pending_total": round(total / n, 1),
        "bytes_per_pending_own": round(own / n, 1),
        "harness_bytes_per_call": round(harness, 1),
    }


# -- the run ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _broker(url: str | None) -> AsyncIterator[tuple[str, str, int | None]]:
    """(url, description, pid of the broker when this run started it)."""
    if url:
        yield url, "given", None
        return
    from ..broker import start_broker

    async with start_broker(prefer="mosquitto", tuned=True) as broker:
        yield broker.url, f"throwaway tuned mosquitto ({broker.url})", broker.pid


async def _open_target(name: str, url: str, cfg: BenchConfig, devices: list[str]) -> _Target:
    target = _make_target(name, url, cfg)
    try:
        await asyncio.wait_for(target.start(), 30.0)
        await target.ready(devices, 30.0 + len(devices) / 500)
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(target.close(), 15.0)
        raise
    return target


async def _run_workloads(cfg: BenchConfig, url: str, fleet: Fleet, progress: Progress,
                         log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Every workload against every target, phase by phase: the targets take
    turns within each workload, so a change in the machine's load mid-run
    (it is shared) hurts both alike instead of one."""
    devices = fleet.device_ids
    results: dict[str, dict[str, Any]] = {name: {} for name in cfg.targets}
    live: dict[str, _Target] = {}
    for name in cfg.targets:
        try:
            live[name] = await _open_target(name, url, cfg, devices)
        except Exception as exc:  # noqa: BLE001 - e.g. the dispatcher cannot be imported
            results[name]["error"] = f"{type(exc).__name__}: {exc}"
            log(f"{name}: {results[name]['error']}")
    # As a server does once it is up; both targets' start-up heaps alike.
    freeze_startup_heap()

    async def guarded(name: str, key: str, coro) -> None:
        try:
            results[name][key] = await coro
        except Exception as exc:  # noqa: BLE001 - the report says what failed
            results[name]["error"] = f"{key}: {type(exc).__name__}: {exc}"
            log(f"{name} failed in {key}: {type(exc).__name__}: {exc}")
            target = live.pop(name)
            results[name]["stats"] = target.stats()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(target.close(), 15.0)
        # let stragglers (late replies, timers) settle between phases
        await asyncio.sleep(0.2)

    try:
        for wl in cfg.workloads:
            for name, target in list(live.items()):
                if wl == "peak":
                    await guarded(name, "peak", _peak(target, devices, cfg, progress))
                elif wl == "latency":
                    if cfg.rate:
                        peak_rps = cfg.rate / cfg.rate_fraction
                    elif "peak" in results[name]:
                        peak_rps = results[name]["peak"]["rps"]
                    else:  # needs the target's own peak: a short one
                        short = BenchConfig(**{**asdict(cfg), "duration": min(cfg.duration, 1.0),
                                               "warmup": min(cfg.warmup, 0.3)})
                        peak_rps = (await _peak(target, devices, short, progress))["rps"]
                        results[name]["peak_estimate_rps"] = peak_rps
                    await guarded(name, "latency", _fixed_rate(target, devices, cfg, progress, peak_rps))
                elif wl == "oneway":
                    await guarded(name, "oneway", _oneway(target, devices, cfg, progress, fleet))
                elif wl == "fanout":
                    await guarded(name, "fanout", _fanout(target, devices, cfg, progress))
                elif wl == "sequential":
                    await guarded(name, "sequential", _sequential(target, devices, cfg, progress))
                elif wl == "memory":
                    await guarded(name, "memory", _memory(target, devices, cfg, progress, fleet))
            if wl == "latency" and len(live) > 1 and not cfg.rate:
                # Latencies at different rates do not compare: once more, every
                # target at the same rate (a fraction of the slowest peak).
                peaks = [results[n].get("peak", {}).get("rps") or results[n].get("peak_estimate_rps")
                         for n in live]
                if all(peaks):
                    common = min(peaks)
                    for name, target in list(live.items()):
                        await guarded(name, "latency_same", _fixed_rate(
                            target, devices, cfg, progress, common, label="latency (same rate)"))
    finally:
        for name, target in live.items():
            results[name]["stats"] = target.stats()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(target.close(), 15.0)
    return results


#: (metric path, better: "higher" | "lower")
RATIO_METRICS = (
    ("peak.rps", "higher"),
    ("peak.cpu_us_per_rt", "lower"),
    ("peak.p50_ms", "lower"),
    ("peak.p99_ms", "lower"),
    ("latency_same.p50_ms", "lower"),
    ("latency_same.p99_ms", "lower"),
    ("latency_same.p999_ms", "lower"),
    ("latency_same.cpu_us_per_rt", "lower"),
    ("oneway.delivered_per_s", "higher"),
    ("oneway.cpu_us_per_call", "lower"),
    ("fanout.time_s", "lower"),
    ("sequential.rps", "higher"),
    ("memory.bytes_per_pending", "lower"),
)


def _get(results: dict, path: str) -> Any:
    node: Any = results
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def ratios(results: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """fleetrpc / reference for every metric both have; ``better`` says which
    way is good, ``gain`` is how many times better fleetrpc is (>1 = better)."""
    ours, ref = results.get("fleetrpc", {}), results.get("reference", {})
    out: dict[str, dict[str, Any]] = {}
    for path, better in RATIO_METRICS:
        a, b = _get(ours, path), _get(ref, path)
        if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not a or not b:
            continue
        ratio = a / b
        out[path] = {"fleetrpc": a, "reference": b, "ratio": round(ratio, 3), "better": better,
                     "gain": round(ratio if better == "higher" else 1 / ratio, 3)}
    return out


def _meta(cfg: BenchConfig, broker: str) -> dict[str, Any]:
    from .. import _core

    return {
        "schema": SCHEMA,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "devices": cfg.devices,
        "qos": cfg.qos,
        "duration_s": cfg.duration,
        "window": cfg.window,
        "workloads": list(cfg.workloads),
        "targets": list(cfg.targets),
        "sim_processes": cfg.processes,
        "broker": broker,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "core_compiled": bool(getattr(_core, "COMPILED", False)),
        "argv": sys.argv,
        "config": {k: v for k, v in asdict(cfg).items() if k != "params"},
    }


async def run_bench(cfg: BenchConfig, progress: Progress | None = None,
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready report (meta, fleet, results, ratios)."""
    progress = progress or (lambda *a: None)
    log = log or (lambda msg: None)
    raise_nofile_limit()
    report: dict[str, Any] = {}
    async with _broker(cfg.url) as (url, broker_desc, broker_pid):
        log(f"broker: {broker_desc}")
        report["meta"] = _meta(cfg, broker_desc)
        # Every worker stops by itself at the latest after this.
        lifetime = 600.0 + cfg.devices / 20 + 20 * cfg.duration * len(cfg.workloads)
        fleet = Fleet(url, cfg.devices, processes=cfg.processes, qos=cfg.qos, lifetime=lifetime)
        report["meta"]["sim_processes"] = fleet.processes
        t = time.perf_counter()
        progress("fleet", "connect", 0, 1, f"{cfg.devices} devices")
        await fleet.start()
        progress("fleet", "connect", 1, 1, f"{cfg.devices} devices")
        log(f"{cfg.devices} simulated devices online in {time.perf_counter() - t:.1f} s "
            f"({fleet.processes} worker processes)")
        results: dict[str, Any] = {}
        rig = _RIG.set({"broker": (broker_pid,) if broker_pid else (), "fleet": fleet.pids})
        try:
            results = await _run_workloads(cfg, url, fleet, progress, log)
        finally:
            _RIG.reset(rig)
            report["fleet"] = await fleet.stop()
    report["results"] = results
    report["ratios"] = ratios(results)
    return report
