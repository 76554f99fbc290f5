"""The end-to-end benchmark behind ``fleetrpc bench``.

One run: a broker (a throwaway tuned Mosquitto unless a URL is given), one
simulated fleet in worker processes (:class:`fleetrpc.sim.Fleet`), and, in
this process, the *targets*, both connected, taking turns within each
workload against that same fleet:

``reference``
    :mod:`fleetrpc.bench.reference`: gmqtt + ``json`` + a Future and a
    ``loop.call_later`` per call + a dict of futures.  The baseline.
``limit``
    :mod:`fleetrpc.bench.limit`: frames MQTT and matches replies in a dict,
    nothing else (no validation, no timeouts, no strategies): what the
    broker and the machine allow.  Every ratio of a throughput also says
    fleetrpc's share of the limit (``of_limit``).
``fleetrpc``
    :class:`fleetrpc.dispatch.Dispatcher`.

Workloads (each bounded in time *and* count; each stops by itself), one
module each group (:mod:`.throughput`, :mod:`.fleetwide`, :mod:`.memory`);
the targets are in :mod:`.targets`, a phase's accounting in :mod:`.phase`:

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
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from ..runner import freeze_startup_heap
from ..sim.fleet import Fleet, raise_nofile_limit
from . import fleetwide, memory, throughput
from .config import TARGETS, WORKLOADS, BenchConfig, Progress
from .phase import RIG
from .rig import throwaway_broker
from .targets import Target, open_target

__all__ = ["TARGETS", "WORKLOADS", "BenchConfig", "ratios", "run_bench"]

SCHEMA = 1
#: The limit target measures the broker-bound throughputs only: its calls
#: have no timeout, so the memory workload (silent devices) and latency
#: percentiles mean nothing, and fan-out and sequential calls would measure
#: how it waits (a task per device) rather than what the broker allows.
LIMIT_WORKLOADS = frozenset({"peak", "oneway"})


async def _run_workloads(cfg: BenchConfig, url: str, fleet: Fleet, progress: Progress,
                         log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Every workload against every target, phase by phase: the targets take
    turns within each workload, so a change in the machine's load mid-run
    (it is shared) hurts both alike instead of one."""
    devices = fleet.device_ids
    results: dict[str, dict[str, Any]] = {name: {} for name in cfg.targets}
    live: dict[str, Target] = {}
    for name in cfg.targets:
        try:
            live[name] = await open_target(name, url, cfg, devices)
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
                if name == "limit" and wl not in LIMIT_WORKLOADS:
                    continue
                if wl == "peak":
                    await guarded(name, "peak", throughput.peak(target, devices, cfg, progress))
                elif wl == "latency":
                    if cfg.rate:
                        peak_rps = cfg.rate / cfg.rate_fraction
                    elif "peak" in results[name]:
                        peak_rps = results[name]["peak"]["rps"]
                    else:  # needs the target's own peak: a short one
                        short = BenchConfig(**{**asdict(cfg), "duration": min(cfg.duration, 1.0),
                                               "warmup": min(cfg.warmup, 0.3)})
                        peak_rps = (await throughput.peak(target, devices, short, progress))["rps"]
                        results[name]["peak_estimate_rps"] = peak_rps
                    await guarded(name, "latency", throughput.fixed_rate(target, devices, cfg, progress, peak_rps))
                elif wl == "oneway":
                    await guarded(name, "oneway", throughput.oneway(target, devices, cfg, progress, fleet))
                elif wl == "fanout":
                    await guarded(name, "fanout", fleetwide.fanout(target, devices, cfg, progress))
                elif wl == "sequential":
                    await guarded(name, "sequential", fleetwide.sequential(target, devices, cfg, progress))
                elif wl == "memory":
                    await guarded(name, "memory", memory.memory(target, devices, cfg, progress, fleet))
            timed = [n for n in live if n != "limit"]
            if wl == "latency" and len(timed) > 1 and not cfg.rate:
                # Latencies at different rates do not compare: once more, every
                # target at the same rate (a fraction of the slowest peak).
                peaks = [results[n].get("peak", {}).get("rps") or results[n].get("peak_estimate_rps")
                         for n in timed]
                if all(peaks):
                    common = min(peaks)
                    for name in timed:
                        target = live.get(name)
                        if target is None:
                            continue
                        await guarded(name, "latency_same", throughput.fixed_rate(
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


#: Throughputs that the limit target measures too.
LIMIT_METRICS = frozenset({"peak.rps", "oneway.delivered_per_s"})


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def ratios(results: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """fleetrpc against the others, for every metric fleetrpc and another have.

    Against the reference: ``ratio`` (fleetrpc / reference), ``better`` (which
    way is good) and ``gain`` (how many times better fleetrpc is, >1 =
    better).  Against the limit, for throughputs: ``of_limit``, fleetrpc's
    throughput as a fraction of the limit's (1.0 = all the broker and the
    machine allow)."""
    ours, ref, limit = (results.get(n, {}) for n in ("fleetrpc", "reference", "limit"))
    out: dict[str, dict[str, Any]] = {}
    for path, better in RATIO_METRICS:
        a = _get(ours, path)
        if not _number(a):
            continue
        entry: dict[str, Any] = {"fleetrpc": a, "better": better}
        b = _get(ref, path)
        if _number(b):
            ratio = a / b
            entry.update(reference=b, ratio=round(ratio, 3),
                         gain=round(ratio if better == "higher" else 1 / ratio, 3))
        c = _get(limit, path)
        if path in LIMIT_METRICS and _number(c):
            entry.update(limit=c, of_limit=round(a / c if better == "higher" else c / a, 3))
        if len(entry) > 2:
            out[path] = entry
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
    async with throwaway_broker(cfg.url) as (url, broker_desc, broker_pid):
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
        rig = RIG.set({"broker": (broker_pid,) if broker_pid else (), "fleet": fleet.pids})
        try:
            results = await _run_workloads(cfg, url, fleet, progress, log)
        finally:
            RIG.reset(rig)
            report["fleet"] = await fleet.stop()
    report["results"] = results
    report["ratios"] = ratios(results)
    return report
