"""``fleetrpc bench --direct``: devices connected straight to fleetrpc's own
MQTT endpoint against the same devices through Mosquitto, in one run.

The same lean simulator (``fleetrpc.sim``, worker processes) answers a
closed loop of two-way calls from one Dispatcher in this process: single
calls to random devices, and (``fanout``) a fleet job's load, broadcasts
to every device.  Each path runs each load at each concurrency given, on
the same connections, and its best run is its peak:

``broker``  dispatcher -> Mosquitto (a throwaway tuned one, or ``url``) -> devices;
``direct``  dispatcher with a :class:`DeviceEndpoint` transport <- devices;
``relayed`` dispatcher -> Mosquitto -> another node (a child process, its
            endpoint sharing its devices: CompositeTransport with ``node``)
            <- devices: what a call costs when it starts on a node the
            device is not connected to (not in ``fleetrpc bench --direct``;
            ``benchmarks/bench_endpoint.py --only relayed``).

For each: round trips/s and CPU per round trip of the dispatcher process
(which holds the endpoint in the direct case; user and system time apart:
a loopback ``send`` also runs the receiving side's TCP input), of the
broker and of the simulator.  Optionally (``idle``), the memory each idle
direct connection costs the process (RSS and tracemalloc deltas after
connecting N idle devices; kernel socket buffers are not in RSS) and the
CPU of their keepalives.

With ``rounds`` above 1 the paths take turns that many times (broker,
direct, broker, direct, ...), each on fresh connections as in one round:
a shared machine's other load shifts within seconds, so one path measured
after the other can misstate their ratio either way.  The report then has
each path's median round, every round's round trips/s, and the median of
the per-round ratios (each from two runs seconds apart).

``benchmarks/bench_endpoint.py`` runs the same with every knob
(``--write-batch-above``, ``--only`` for profiling); docs/endpoint.md has
the figures.
"""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing
import os
import random
import statistics
import time
import tracemalloc
from dataclasses import dataclass
from typing import Any

from ..config import Settings
from ..dispatch import Broadcast, Dispatcher
from ..runner import SERVER_GC_THRESHOLD, raise_gc_threshold
from ..sim.fleet import Behaviour, Fleet, raise_nofile_limit
from ..transport.endpoint import CompositeTransport, DeviceEndpoint, EndpointSettings
from .cpu import GcMeter, process_cpu
from .memory import rss_bytes
from .rig import throwaway_broker

__all__ = ["EndpointBenchConfig", "run_endpoint_bench", "format_report", "command_main"]

PATHS = ("broker", "direct")
#: every path run_endpoint_bench knows (PATHS: those ``fleetrpc bench --direct`` runs)
ALL_PATHS = PATHS + ("relayed",)


@dataclass
class EndpointBenchConfig:
    devices: int = 1000
    qos: int = 1
    seconds: float = 5.0
    #: calls in flight (the closed loop's callers); several: each path runs at
    #: each in turn, on the same connections, and its peak is what counts
    concurrency: int | tuple[int, ...] = 1000
    processes: int = 1
    url: str | None = None  # the broker path's broker; None: a throwaway tuned Mosquitto
    paths: tuple[str, ...] = PATHS
    idle: int = 0  # idle direct connections for the memory figure (0: skip)
    keepalive: int = 60
    idle_seconds: float = 5.0
    write_batch_above: int = 0  # also run the direct path with this write_batch_above
    write_batch_delay: float = 0.001
    #: the collector's first threshold in this process while the paths run,
    #: as ``fleetrpc serve`` sets it (700: Python's default)
    gc_threshold: int = SERVER_GC_THRESHOLD
    #: the paths take turns this many times; medians count (module docstring)
    rounds: int = 1
    #: also a fleet job's load at these calls in flight: broadcasts to every
    #: device, ``concurrency / devices`` of them at once (see ``_load``); the
    #: peak is over both loads.  Empty: single calls only
    fanout: tuple[int, ...] = ()
    #: the dispatcher's calls in flight at most (``Settings.inflight_window``),
    #: on every path; None: the library's default (20,000)
    inflight_window: int | None = None
    #: fan-out: each broadcast to this many devices (consecutive slices in
    #: turn) instead of every device, as a job's batches go out while
    #: others are answered; 0: every device (see ``_load``)
    fanout_slice: int = 0

    def __post_init__(self) -> None:
        self.fanout = _distinct(self.fanout)

    def quick(self) -> None:
        self.devices, self.seconds = min(self.devices, 20), 0.5
        self.concurrency = tuple(min(c, 20) for c in self.windows())
        self.fanout = _distinct(min(c, 20) for c in self.fanout)

    def windows(self) -> tuple[int, ...]:
        return _distinct((self.concurrency,) if isinstance(self.concurrency, int) else self.concurrency)


def _distinct(windows: Any) -> tuple[int, ...]:
    """Each concurrency once, in the order given (a run per concurrency)."""
    return tuple(dict.fromkeys(windows))


def _by_client_id(username: str, password: str | None, client_id: str) -> str | None:
    # the simulator's devices all log in as "bench"; their client id is the device id
    return client_id if username == "bench" else None


async def _load(d: Dispatcher, devices: list[str], seconds: float, concurrency: int,
                others: dict[str, int], load: str = "calls", fanout_slice: int = 0) -> dict[str, Any]:
    """Closed loop: ``concurrency`` callers, each calling a random device
    again as soon as its previous call returned.  ``load="fanout"``: as a
    fleet job calls, ``concurrency / len(devices)`` broadcasts (at least
    one) to every device, each started again once all its devices
    answered (one request encoded per broadcast, no future per call).
    Each such wave waits for its slowest device, and the dispatcher idles
    meanwhile (12-16 % of its core, measured); with ``fanout_slice`` N,
    ``concurrency / N`` broadcasts to N devices each (the next slice each
    time), which keep it busy, as a job's batches do."""
    done = 0
    errors = 0
    stop = False
    active: set[Broadcast] = set()  # broadcasts under way: their answers so far count too
    call = d.call

    async def caller(seed: int) -> None:
        nonlocal done, errors
        rng = random.Random(seed)
        pick = devices.__getitem__
        n = len(devices)
        while not stop:
            try:
                await call(pick(int(rng.random() * n)), "echo", {"i": 1}, timeout=10)
                done += 1
            except Exception:
                errors += 1

    size = fanout_slice or len(devices)
    slices = [devices[i:i + size] for i in range(0, len(devices), size)]

    async def broadcaster(turn: int) -> None:
        nonlocal done, errors
        while not stop:
            bc = d.broadcast(slices[turn % len(slices)], "echo", {"i": 1}, timeout=10)
            turn += 1
            active.add(bc)
            summary = await bc.wait()
            active.discard(bc)
            done += summary.succeeded
            errors += summary.failed

    def answered() -> int:
        return done + sum(bc.succeeded for bc in active)

    # warm-up, then the measured window
    if load == "fanout":
        tasks = [asyncio.ensure_future(broadcaster(k)) for k in range(max(1, round(concurrency / size)))]
    else:
        tasks = [asyncio.ensure_future(caller(k)) for k in range(concurrency)]
    await asyncio.sleep(min(1.0, seconds / 4))
    done0 = answered()
    t_0 = os.times()
    others0 = {name: process_cpu(pid) or 0.0 for name, pid in others.items()}
    t0 = time.perf_counter()
    with GcMeter() as collector:
        await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - t0
    n = answered() - done0
    t_1 = os.times()
    user, system = t_1.user - t_0.user, t_1.system - t_0.system
    others_cpu = {name: (process_cpu(pid) or 0.0) - others0[name] for name, pid in others.items()}
    stop = True
    await asyncio.gather(*tasks)
    per = (lambda c: c / n * 1e6) if n else (lambda c: float("nan"))
    out = {"round_trips_per_s": n / elapsed, "dispatcher_us_per_rt": per(user + system),
           "dispatcher_user_us_per_rt": per(user), "dispatcher_sys_us_per_rt": per(system),
           "errors": errors,
           # the collector's passes in the window (wall time: the process is on its core)
           "gc_us_per_rt": per(collector.seconds), "gc_longest_ms": collector.longest * 1e3}
    for name, c in others_cpu.items():
        out[f"{name}_us_per_rt"] = per(c)
    return out


async def _peak(d: Dispatcher, devices: list[str], cfg: EndpointBenchConfig,
                others: dict[str, int]) -> dict[str, Any]:
    """``_load`` at each of ``cfg``'s concurrencies, single calls and then
    fan-out: the run with the most round trips/s (of those in which no
    call failed, if any), with ``load`` and
    ``concurrency`` (where it peaked), ``sweep`` (single calls' round
    trips/s at each concurrency) and ``fanout_sweep`` (fan-out's).  A
    path's peak may lie at another concurrency than the other path's: at
    10,000 devices, two calls in flight per device let a reply's PUBACK
    leave with the next request to that device (one ``send``), a call to
    every tenth device does not; several broadcasts in flight put several
    requests to a device in one ``send``."""
    best: dict[str, Any] = {}
    sweeps: dict[str, dict[int, float]] = {"calls": {}, "fanout": {}}
    for load, windows in (("calls", cfg.windows()), ("fanout", cfg.fanout)):
        for window in windows:
            r: dict[str, Any] = await _load(d, devices, cfg.seconds, window, others, load, cfg.fanout_slice)
            sweeps[load][window] = r["round_trips_per_s"]
            # a run whose calls failed (timed out: more in flight than the
            # path answers in the timeout) is no sustainable peak while a
            # run without failures exists
            key = (r["errors"] == 0, r["round_trips_per_s"])
            if not best or key > (best["errors"] == 0, best["round_trips_per_s"]):
                best = {**r, "load": load, "concurrency": window}
    best["sweep"] = sweeps["calls"]
    if sweeps["fanout"]:
        best["fanout_sweep"] = sweeps["fanout"]
    return best


def _settings(cfg: EndpointBenchConfig, **more: Any) -> Settings:
    """The calling dispatcher's settings, the same on every path."""
    if cfg.inflight_window is not None:
        more["inflight_window"] = cfg.inflight_window
    return Settings(node_id="bench", qos=cfg.qos, min_timeout_ms=0, **more)


async def _wait_online(d: Dispatcher, devices: list[str], timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not all(d.is_online(x) for x in devices):
        if time.monotonic() > end:
            missing = sum(1 for x in devices if not d.is_online(x))
            raise RuntimeError(f"{missing} devices not online after {timeout:g} s")
        await asyncio.sleep(0.05)


async def run_broker(cfg: EndpointBenchConfig) -> dict[str, Any]:
    async with throwaway_broker(cfg.url) as (url, _, broker_pid):
        fleet = Fleet(url, cfg.devices, processes=cfg.processes, qos=cfg.qos, behaviour=Behaviour(presence=True))
        async with fleet:
            d = Dispatcher(_settings(cfg, mqtt_url=url))
            await d.start()
            try:
                others = {"broker": broker_pid} if broker_pid is not None else {}
                others.update({f"sim{k}": pid for k, pid in enumerate(fleet.pids)})
                await _wait_online(d, fleet.device_ids)
                return await _peak(d, fleet.device_ids, cfg, others)
            finally:
                await d.close()


async def run_direct(cfg: EndpointBenchConfig, write_batch_above: int = 0) -> dict[str, Any]:
    ep = DeviceEndpoint(EndpointSettings(host="127.0.0.1", port=0, max_inflight=1000,
                                         write_batch_above=write_batch_above,
                                         write_batch_delay=cfg.write_batch_delay),
                        authenticate=_by_client_id)
    d = Dispatcher(_settings(cfg), transport=ep)
    await d.start()
    try:
        url = f"mqtt://bench@127.0.0.1:{ep.ports['tcp']}"
        fleet = Fleet(url, cfg.devices, processes=cfg.processes, qos=cfg.qos, behaviour=Behaviour(presence=True))
        async with fleet:
            others = {f"sim{k}": pid for k, pid in enumerate(fleet.pids)}
            await _wait_online(d, fleet.device_ids)
            return await _peak(d, fleet.device_ids, cfg, others)
    finally:
        await d.close()


async def run_relayed(cfg: EndpointBenchConfig) -> dict[str, Any]:
    async with throwaway_broker(cfg.url) as (url, _, broker_pid):
        mp = multiprocessing.get_context("spawn")
        conn, child_conn = mp.Pipe()
        node = mp.Process(target=_relay_node_main, args=(child_conn, url, cfg.qos, cfg.gc_threshold), daemon=True)
        node.start()
        try:
            if not await asyncio.to_thread(conn.poll, 30):
                raise RuntimeError("the relaying node did not start")
            port = conn.recv()
            fleet = Fleet(f"mqtt://bench@127.0.0.1:{port}", cfg.devices, processes=cfg.processes, qos=cfg.qos,
                          behaviour=Behaviour(presence=True))
            async with fleet:
                d = Dispatcher(_settings(cfg, mqtt_url=url))
                await d.start()
                try:
                    others = {"node": node.pid}
                    if broker_pid is not None:
                        others["broker"] = broker_pid
                    others.update({f"sim{k}": pid for k, pid in enumerate(fleet.pids)})
                    await _wait_online(d, fleet.device_ids)
                    return await _peak(d, fleet.device_ids, cfg, others)
                finally:
                    await d.close()
        finally:
            conn.send("stop")
            await asyncio.to_thread(node.join, 10)
            if node.is_alive():
                node.kill()


def _relay_node_main(conn: Any, url: str, qos: int, gc_threshold: int) -> None:
    """The node the devices are connected to in the ``relayed`` path."""
    import uvloop

    async def main() -> None:
        ep = DeviceEndpoint(EndpointSettings(host="127.0.0.1", port=0, max_inflight=1000),
                            authenticate=_by_client_id)
        # what `fleetrpc serve` does with [endpoint] enabled (server/parts.py)
        d = Dispatcher(Settings(mqtt_url=url, node_id="relay", qos=qos, min_timeout_ms=0),
                       transport=lambda d: CompositeTransport(ep, d.mqtt_transport(), node=d.node))
        await d.start()
        try:
            conn.send(ep.ports["tcp"])
            await asyncio.to_thread(conn.recv)
        finally:
            await d.close()

    raise_nofile_limit()
    raise_gc_threshold(gc_threshold)  # a node, as `fleetrpc serve` runs one
    uvloop.run(main())


async def run_idle(cfg: EndpointBenchConfig) -> dict[str, Any]:
    """Memory per idle direct connection, and the CPU of their keepalives."""
    ep = DeviceEndpoint(EndpointSettings(host="127.0.0.1", port=0, max_connections=cfg.idle + 10),
                        authenticate=_by_client_id)
    d = Dispatcher(Settings(node_id="bench", min_timeout_ms=0), transport=ep)
    await d.start()
    try:
        gc.collect()
        rss0 = rss_bytes()
        tracemalloc.start()
        traced0 = tracemalloc.get_traced_memory()[0]
        url = f"mqtt://bench@127.0.0.1:{ep.ports['tcp']}"
        fleet = Fleet(url, cfg.idle, processes=cfg.processes, keepalive=cfg.keepalive,
                      behaviour=Behaviour(presence=False))
        async with fleet:
            await _wait_online(d, fleet.device_ids, timeout=120)
            gc.collect()
            traced = tracemalloc.get_traced_memory()[0] - traced0
            tracemalloc.stop()
            rss1 = rss_bytes()
            cpu0 = time.process_time()
            await asyncio.sleep(cfg.idle_seconds)
            cpu = time.process_time() - cpu0
            return {
                "connections": ep.connection_count,
                "rss_bytes_per_connection": (rss1 - rss0) / cfg.idle,
                # Python objects only (session, reader, transport, tables); libuv's
                # C handle (~0.3 KiB) is in RSS but not here
                "python_bytes_per_connection": traced / cfg.idle,
                "keepalive": cfg.keepalive,
                "cpu_ms_per_s_idle": cpu / cfg.idle_seconds * 1e3,
            }
    finally:
        await d.close()


async def run_endpoint_bench(cfg: EndpointBenchConfig) -> dict[str, Any]:
    """Every path of ``cfg`` in turn, ``cfg.rounds`` times, in this
    process; the report's ``results`` has one entry per path (and
    ``idle``, ``batched``): the median round's, with ``rounds_rt_s``
    (every round's round trips/s) when there were several."""
    raise_nofile_limit()  # a socket per device, twice (the simulator's end is a child's)
    gc_before = raise_gc_threshold(cfg.gc_threshold)
    try:
        idle = await run_idle(cfg) if cfg.idle else None  # first, while the process heap is fresh
        rounds = [await _run_paths(cfg) for _ in range(cfg.rounds)]
    finally:
        gc.set_threshold(*gc_before)
    results = _median_rounds(rounds)
    if idle is not None:
        results["idle"] = idle
    report: dict[str, Any] = {"config": dict(vars(cfg)), "results": results}
    # each ratio from one round's two runs, seconds apart; then the median
    for key, ratios_of in (("ratios", throughput_ratios), ("server_cpu_ratios", server_cpu_ratios)):
        per_round = [ratios_of(r) for r in rounds]
        if per_round[0]:
            report[key] = {name: statistics.median(p[name] for p in per_round) for name in per_round[0]}
            if len(rounds) > 1:
                report[key + "_rounds"] = {name: [p[name] for p in per_round] for name in per_round[0]}
    return report


async def _run_paths(cfg: EndpointBenchConfig) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if "broker" in cfg.paths:
        results["broker"] = await run_broker(cfg)
    if "direct" in cfg.paths:
        results["direct"] = await run_direct(cfg)
        if cfg.write_batch_above:
            results["batched"] = await run_direct(cfg, cfg.write_batch_above)
    if "relayed" in cfg.paths:
        results["relayed"] = await run_relayed(cfg)
    return results


def _median_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each path's median round by round trips/s (the lower middle one of
    an even count: a round that was measured, not an average of two)."""
    results: dict[str, Any] = {}
    for name in rounds[0]:
        runs = sorted((r[name] for r in rounds), key=lambda run: run["round_trips_per_s"])
        results[name] = dict(runs[(len(runs) - 1) // 2])
        if len(rounds) > 1:
            results[name]["rounds_rt_s"] = [r[name]["round_trips_per_s"] for r in rounds]
    return results


def throughput_ratios(results: dict[str, Any]) -> dict[str, float]:
    """Each other path's round trips/s against the broker path's."""
    broker = results.get("broker")
    if not broker or not broker["round_trips_per_s"]:
        return {}
    return {name: results[name]["round_trips_per_s"] / broker["round_trips_per_s"]
            for name in ("direct", "batched", "relayed") if name in results}


def server_cpu_ratios(results: dict[str, Any]) -> dict[str, float]:
    """What the server side spends per round trip on each direct path
    against the broker path's dispatcher and broker together: the fair
    measure where the simulator shares the machine's cores (throughput
    then depends on what the simulator costs).  Empty when the broker was
    not this run's to measure (``--url``)."""
    broker = results.get("broker") or {}
    broker_cpu = broker.get("broker_us_per_rt")
    if not broker_cpu:
        return {}
    served = broker["dispatcher_us_per_rt"] + broker_cpu
    return {name: results[name]["dispatcher_us_per_rt"] / served
            for name in ("direct", "batched") if name in results}


def format_report(report: dict[str, Any]) -> str:
    cfg, results = report["config"], report["results"]
    windows = cfg["concurrency"]
    windows = ",".join(map(str, windows)) if isinstance(windows, (list, tuple)) else windows
    lines = [f"devices={cfg['devices']} qos={cfg['qos']} concurrency={windows} seconds={cfg['seconds']}"
             + (f" fanout={','.join(map(str, cfg['fanout']))}" if cfg.get("fanout") else "")
             + (f" fanout_slice={cfg['fanout_slice']}" if cfg.get("fanout_slice") else "")]
    for name in ("broker", "direct", "batched", "relayed"):
        r = results.get(name)
        if r is None:
            continue
        extra = "  ".join(f"{k}={v:.1f}" for k, v in r.items()
                          if k.endswith("_us_per_rt") and not k.startswith(("dispatcher", "gc_")))
        lines.append(f"{name:>7}: {r['round_trips_per_s']:9.0f} rt/s  "
                     f"dispatcher {r['dispatcher_us_per_rt']:5.1f} us/rt "
                     f"(user {r['dispatcher_user_us_per_rt']:.1f}, sys {r['dispatcher_sys_us_per_rt']:.1f})  "
                     f"{extra}  errors={r['errors']}")
        if "gc_us_per_rt" in r:
            lines.append(f"{'':>9}garbage collector: {r['gc_us_per_rt']:.1f} us/rt, "
                         f"longest pause {r['gc_longest_ms']:.1f} ms")
        if len(r.get("rounds_rt_s", ())) > 1:
            lines.append(f"{'':>9}median of {len(r['rounds_rt_s'])} rounds; rt/s by round: "
                         + ", ".join(f"{rps:.0f}" for rps in r["rounds_rt_s"]))
        sweep, fanout = r.get("sweep", {}), r.get("fanout_sweep", {})
        if len(sweep) + len(fanout) > 1:
            lines.append(f"{'':>9}peak at {r['concurrency']} in flight"
                         + (" (fan-out)" if r.get("load") == "fanout" else "") + "; rt/s by calls in flight: "
                         + ", ".join(f"{c}: {rps:.0f}" for c, rps in sweep.items())
                         + ("; fan-out: " + ", ".join(f"{c}: {rps:.0f}" for c, rps in fanout.items())
                            if fanout else ""))
    for name, ratio in report.get("ratios", {}).items():
        lines.append(f"{name} / broker: {ratio:.2f}x" + _by_round(report, "ratios", name))
    for name, ratio in report.get("server_cpu_ratios", {}).items():
        lines.append(f"server-side CPU per round trip, {name} / (dispatcher + broker): {ratio:.2f}x"
                     + _by_round(report, "server_cpu_ratios", name))
    r = results.get("idle")
    if r is not None:
        lines.append(f"   idle: {r['connections']} connections, {r['rss_bytes_per_connection']:.0f} B RSS each "
                     f"({r['python_bytes_per_connection']:.0f} B of Python objects), "
                     f"keepalive {r['keepalive']} s: {r['cpu_ms_per_s_idle']:.2f} ms CPU per s")
    return "\n".join(lines)


def _by_round(report: dict[str, Any], key: str, name: str) -> str:
    per_round = report.get(key + "_rounds", {}).get(name)
    if not per_round:
        return ""
    return f" (median of {len(per_round)} rounds: " + ", ".join(f"{x:.2f}" for x in per_round) + ")"


def command_main(devices: int, qos: int, duration: float, url: str | None, processes: int | None,
                 window: int, json_path: Any, quick: bool, rounds: int = 1,
                 inflight_window: int | None = None, fanout_slice: int = 0) -> None:
    """``fleetrpc bench --direct``'s body (bench/command.py stays a table of flags)."""
    import click
    import uvloop

    # The peak: single calls at `window` in flight and at two per device,
    # where a reply's PUBACK most often leaves with the device's next
    # request; fan-out (a fleet job's load) at two and sixteen requests per
    # device, where several leave in one send, within the dispatcher's
    # window (`inflight_window`, on both paths; None: the library's).
    most = inflight_window or Settings().inflight_window
    cfg = EndpointBenchConfig(devices=devices, qos=qos, seconds=duration, concurrency=(window, 2 * devices),
                              fanout=(min(2 * devices, most), min(16 * devices, most)),
                              url=url, processes=1 if processes is None else processes, rounds=rounds,
                              inflight_window=inflight_window, fanout_slice=fanout_slice)
    if quick:
        cfg.quick()
    report = uvloop.run(run_endpoint_bench(cfg))
    click.echo(format_report(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        click.echo(f"report written to {json_path}", err=True)
    failed = [name for name in PATHS if report["results"].get(name, {}).get("errors")]
    if failed:
        raise click.ClickException(f"calls failed on the {' and '.join(failed)} path")
