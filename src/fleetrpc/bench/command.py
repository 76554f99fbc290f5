"""``fleetrpc bench``: simulated fleet, real broker, fleetrpc vs. the reference;
``fleetrpc bench --persistent``: persistent lifecycles, group commit vs per row;
``--rest``: through the REST API; ``--direct``: devices on fleetrpc's own endpoint vs a broker."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click

from .runner import TARGETS, WORKLOADS, BenchConfig, run_bench


def _split(value: str, known: tuple[str, ...], what: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if items == ("all",):
        return known
    unknown = [v for v in items if v not in known]
    if unknown or not items:
        raise click.BadParameter(f"unknown {what} {', '.join(unknown) or '(none)'}; choose from {', '.join(known)}")
    return items


@click.command()
@click.option("--devices", "-n", default=1000, show_default=True, type=click.IntRange(1),
              help="Simulated devices, each its own MQTT connection.")
@click.option("--qos", default=1, show_default=True, type=click.IntRange(0, 1),
              help="QoS of requests and replies.")
@click.option("--duration", "-d", default=3.0, show_default=True, type=click.FloatRange(0.1, 600),
              help="Seconds per timed phase (also bounds the others).")
@click.option("--workloads", "-w", default="all", show_default=True,
              help=f"Comma-separated: {','.join(WORKLOADS)}.")
@click.option("--targets", "-t", default="all", show_default=True,
              help=f"Comma-separated: {','.join(TARGETS)}.")
@click.option("--url", default=None, help="Broker URL; default: start a throwaway tuned Mosquitto.")
@click.option("--processes", "-p", default=None, type=click.IntRange(1),
              help="Simulator worker processes (default: one per CPU, at most 4).")
@click.option("--window", default=1000, show_default=True, type=click.IntRange(1),
              help="Concurrent callers in the closed loops.")
@click.option("--rate", default=None, type=click.FloatRange(1),
              help="Latency workload: this fixed rate (calls/s) instead of half of each target's peak.")
@click.option("--calls-per-device", default=5, show_default=True, type=click.IntRange(1),
              help="Sequential workload: calls per device.")
@click.option("--mem-pending", default=20000, show_default=True, type=click.IntRange(1),
              help="Memory workload: calls left pending.")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0.1),
              help="Call timeout in seconds.")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Write the full report as JSON here.")
@click.option("--quick", is_flag=True, help="Tiny run (short phases, small windows), for tests.")
@click.option("--persistent", is_flag=True,
              help="Persistent two-way lifecycles/s instead (devices ack): PersistentRpc on "
                   "PostgreSQL/SQLite with group commit vs one transaction per write.  "
                   "--window is the number of callers; --targets among "
                   "pg-group,pg-row,sqlite-group,sqlite-row.")
@click.option("--dsn", default=None,
              help="--persistent: PostgreSQL server to create the run's database on "
                   "(default $FLEETRPC_PG_DSN or postgresql://postgres@127.0.0.1:5432/test).")
@click.option("--rounds", default=1, show_default=True, type=click.IntRange(1),
              help="--persistent: timed phases per target, the targets taking turns; --direct: "
                   "the paths take turns this many times and the medians count.")
@click.option("--rest", is_flag=True,
              help="Two-way RPCs through the server's REST API (JWT on every request) against "
                   "the library path and a bare aiohttp floor in the same run; --window callers, "
                   "--rounds repeats (see bench/rest.py).")
@click.option("--generator", default="raw", show_default=True, type=click.Choice(["raw", "aiohttp", "wrk"]),
              help="--rest: the HTTP load generator (wrk: Debian's, when installed).")
@click.option("--clients", default=1, show_default=True, type=click.IntRange(1),
              help="--rest: load generator processes (wrk: threads).")
@click.option("--inflight-window", default=None, type=click.IntRange(1),
              help="--direct: the dispatcher's calls in flight at most, on both paths (default: the "
                   "library's, 20000); fan-out runs at up to sixteen per device within it.")
@click.option("--fanout-slice", default=0, show_default=True, type=click.IntRange(0),
              help="--direct: each fan-out broadcast to this many devices, the next slice each time, so "
                   "that no wave waits for every device (0: every device).")
@click.option("--direct", is_flag=True,
              help="Devices connected straight to fleetrpc's own MQTT endpoint against the same "
                   "devices through Mosquitto (--url, else a throwaway tuned one): peak round trips/s "
                   "of each (single calls at --window in flight and at two per device; a fleet job's "
                   "fan-out at two and sixteen per device), CPU per round trip of the dispatcher, the "
                   "broker and the simulator (see bench/endpoint.py).")
def bench(devices, qos, duration, workloads, targets, url, processes, window, rate, calls_per_device,
          mem_pending, timeout, json_path, quick, persistent, dsn, rounds, rest, generator, clients, inflight_window,
          fanout_slice, direct):
    """Benchmark fleetrpc's dispatcher against the plain reference dispatcher.

    Starts a broker (unless --url), simulates DEVICES devices in worker
    processes, and runs each workload against both targets in turn on the
    same fleet: peak round trips/s (closed loop), latency at half the peak
    (open loop), one-way, fan-out to every device, sequential delivery and
    bytes per pending call.  Prints a table and the fleetrpc/reference ratios.

    With --persistent: whole persistent lifecycles (QUEUED, SENT, DELIVERED,
    SUCCESSFUL, each committed) per second, the engine on a group-commit
    store against the same engine on a store that commits every write on
    its own, in a database created for the run (see
    benchmarks/bench_persistent.py for every option).

    With --direct: the devices on fleetrpc's own MQTT endpoint (no broker)
    against the same simulator through Mosquitto, in one run.
    """
    if direct:
        from .endpoint import command_main as direct_main

        direct_main(devices, qos, duration, url, processes, window, json_path, quick, rounds, inflight_window,
                    fanout_slice)
        return
    if rest:
        from .rest import command_main

        command_main(devices, qos, duration, url, processes, window, json_path, quick,
                     generator=generator, clients=clients, rounds=rounds)
        return
    if persistent:
        _persistent(devices, qos, duration, targets, url, processes, window, timeout, json_path, quick,
                    dsn, rounds)
        return
    cfg = BenchConfig(
        devices=devices, qos=qos, duration=duration,
        workloads=_split(workloads, WORKLOADS, "workload"),
        targets=_split(targets, TARGETS, "target"),
        url=url, processes=processes, window=window, rate=rate, calls_per_device=calls_per_device,
        mem_pending=mem_pending, timeout=timeout,
    )
    if quick:
        cfg.quick()
    report = _run(cfg)
    _print(report)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        click.echo(f"report written to {json_path}", err=True)
    failed = [name for name, r in report["results"].items() if "error" in r]
    if failed and len(failed) == len(report["results"]):
        raise click.ClickException("every target failed: " + "; ".join(
            f"{n}: {report['results'][n]['error']}" for n in failed))


def _persistent(devices, qos, duration, targets, url, processes, window, timeout, json_path, quick,
                dsn, rounds) -> None:
    from ..runner import run
    from .persistent import (
        PERSISTENT_TARGETS,
        PersistentBenchConfig,
        default_dsn,
        format_report,
        run_persistent_bench,
    )

    try:
        cfg = PersistentBenchConfig(
            dsn=dsn or default_dsn(), devices=devices, callers=window, duration=duration, rounds=rounds,
            targets=_split(targets, PERSISTENT_TARGETS, "target"), url=url, processes=processes,
            qos=qos, timeout=timeout,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if quick:
        cfg.quick()
    report = run(run_persistent_bench(cfg, lambda msg: click.echo(msg, err=True)))
    click.echo(format_report(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        click.echo(f"report written to {json_path}", err=True)
    results = report["results"]
    if all("error" in r for r in results.values()):
        raise click.ClickException("every target failed: " + "; ".join(
            f"{n}: {r['error']}" for n, r in results.items()))


def _run(cfg: BenchConfig) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    columns = (TextColumn("{task.description:<26}"), BarColumn(), TextColumn("{task.fields[text]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        tasks: dict[tuple[str, str], Any] = {}

        def progress(target: str, workload: str, done: float, total: float, text: str) -> None:
            key = (target, workload)
            task = tasks.get(key)
            if task is None:
                task = tasks[key] = bar.add_task(f"{target} · {workload}", total=total or 1, text=text)
            bar.update(task, completed=done, total=total or 1, text=text)

        def log(msg: str) -> None:
            bar.console.print(msg)

        coro = run_bench(cfg, progress, log)
        try:
            import uvloop
        except ImportError:  # pragma: no cover
            return asyncio.run(coro)
        return uvloop.run(coro)


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:,.0f}" if abs(value) >= 1000 else (f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}")
    elif isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, dict):
        text = ", ".join(f"{k} {v}" for k, v in value.items()) or "0"
    else:
        text = str(value)
    return text + unit


#: (label, metric path, unit)
ROWS = (
    ("peak round trips/s", "peak.rps", ""),
    ("peak latency p50", "peak.p50_ms", " ms"),
    ("peak latency p99", "peak.p99_ms", " ms"),
    ("peak CPU per round trip", "peak.cpu_us_per_rt", " µs"),
    ("peak broker CPU (1.0 = a core)", "peak.broker_cpu", ""),
    ("peak broker CPU per round trip", "peak.broker_cpu_us_per_rt", " µs"),
    ("peak simulator CPU (all workers)", "peak.fleet_cpu", ""),
    ("peak errors", "peak.errors", ""),
    ("fixed-rate target (½ own peak)", "latency.target_rps", "/s"),
    ("fixed-rate achieved", "latency.achieved_rps", "/s"),
    ("fixed-rate p50", "latency.p50_ms", " ms"),
    ("fixed-rate p99", "latency.p99_ms", " ms"),
    ("fixed-rate p99.9", "latency.p999_ms", " ms"),
    ("fixed-rate CPU per round trip", "latency.cpu_us_per_rt", " µs"),
    ("fixed-rate errors", "latency.errors", ""),
    ("fixed-rate broker CPU (1.0 = a core)", "latency.broker_cpu", ""),
    ("same-rate target", "latency_same.target_rps", "/s"),
    ("same-rate p50", "latency_same.p50_ms", " ms"),
    ("same-rate p99", "latency_same.p99_ms", " ms"),
    ("same-rate p99.9", "latency_same.p999_ms", " ms"),
    ("same-rate CPU per round trip", "latency_same.cpu_us_per_rt", " µs"),
    ("same-rate errors", "latency_same.errors", ""),
    ("one-way issued/s", "oneway.sent_per_s", ""),
    ("one-way delivered/s", "oneway.delivered_per_s", ""),
    ("one-way lost", "oneway.lost", ""),
    ("one-way CPU per call", "oneway.cpu_us_per_call", " µs"),
    ("fan-out to all devices", "fanout.time_s", " s"),
    ("fan-out failed", "fanout.failed", ""),
    ("sequential calls/s", "sequential.rps", ""),
    ("sequential failed", "sequential.failed", ""),
    ("bytes per pending call", "memory.bytes_per_pending", " B"),
    ("  of which in own code", "memory.bytes_per_pending_own", " B"),
)


def _print(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from .runner import _get

    results = report["results"]
    ratios = report.get("ratios", {})
    meta = report["meta"]
    names = [n for n in TARGETS if n in results]
    table = Table(title=f"fleetrpc bench: {meta['devices']} devices, QoS {meta['qos']}, "
                        f"{meta['duration_s']:g} s phases, window {meta['window']}")
    table.add_column("metric")
    for name in names:
        table.add_column(name, justify="right")
    gain = "fleetrpc" in names and "reference" in names
    of_limit = "fleetrpc" in names and "limit" in names
    if gain:
        table.add_column("fleetrpc gain", justify="right")
    if of_limit:
        table.add_column("fleetrpc of limit", justify="right")
    for label, path, unit in ROWS:
        values = [_get(results.get(n, {}), path) for n in names]
        if all(v is None for v in values):
            continue
        row = [label] + [_fmt(v, unit if v is not None and not isinstance(v, dict) else "") for v in values]
        r = ratios.get(path) or {}
        if gain:
            row.append(f"{r['gain']:.2f}x" if "gain" in r else "")
        if of_limit:
            row.append(f"{r['of_limit']:.0%}" if "of_limit" in r else "")
        table.add_row(*row)
    console = Console()
    console.print(table)
    for name in names:
        if "error" in results[name]:
            console.print(f"[red]{name} failed:[/red] {results[name]['error']}")
    for line in bottlenecks(results):
        console.print(line)


#: A single-threaded broker above this share of its core caps the phase.
BROKER_BOUND = 0.9


def bottlenecks(results: dict[str, Any]) -> list[str]:
    """Say which peaks the broker capped: a ratio between targets is then the
    broker's, not the dispatchers' (see docs/benchmarks.md)."""
    lines = []
    for name in TARGETS:
        peak = results.get(name, {}).get("peak") or {}
        share = peak.get("broker_cpu")
        if share is not None and share >= BROKER_BOUND:
            lines.append(
                f"{name} peak: the broker used {share:.2f} of its one core "
                f"({peak.get('broker_cpu_us_per_rt')} us per round trip): the broker, "
                f"not {name}, capped it; {name} itself used {peak.get('cpu_us_per_rt')} us."
            )
    return lines
