"""Persistent two-way RPC lifecycles per second, end to end: group commit vs
one transaction per write, on PostgreSQL and SQLite.

    python benchmarks/bench_persistent.py --dsn postgresql://postgres@127.0.0.1:5432/test --devices 1000 --duration 5
    python benchmarks/bench_persistent.py --targets pg-group,pg-row --rounds 3 --json out.json
    python benchmarks/bench_persistent.py --url mqtt://127.0.0.1:1883 --callers 2000

Starts a throwaway tuned Mosquitto (unless ``--url``), ``--devices``
simulated devices in worker processes that ack every delivery, and one
Dispatcher + PersistentRpc engine per target:

- pg-group:     PostgreSQL behind GroupCommitStore (one transaction per batch);
- pg-row:       the same engine on the plain PostgresStore: every insert and
                status change is its own transaction (the per-row baseline);
- sqlite-group, sqlite-row: the same on SQLite (synchronous=FULL).

``--callers`` callers each loop ``rpc_id = await engine.call(...)`` (QUEUED
committed) then ``await engine.wait(rpc_id, durable=True)`` (SUCCESSFUL
committed); a lifecycle counts only then.  The targets take turns, round
after round, in the same run.  PostgreSQL runs in a database created for the
run (CREATE DATABASE fleetrpc_bench_<random> on the DSN's server), dropped
afterwards.  ``fleetrpc bench --persistent`` runs the same code.

Everything is bounded: each phase by time and by a count per caller, each
call by its timeout; the broker, the simulator workers and the database are
removed at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fleetrpc.bench.persistent import (
    PERSISTENT_TARGETS,
    PersistentBenchConfig,
    default_dsn,
    format_report,
    run_persistent_bench,
)
from fleetrpc.runner import run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", default=default_dsn(),
                    help="PostgreSQL server (a database is created on it for the run); "
                         "default $FLEETRPC_PG_DSN or %(default)s")
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--callers", type=int, default=1000, help="concurrent callers")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per timed phase")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per target")
    ap.add_argument("--rounds", type=int, default=1, help="timed phases per target (taking turns)")
    ap.add_argument("--targets", default=",".join(PERSISTENT_TARGETS),
                    help=f"comma-separated: {','.join(PERSISTENT_TARGETS)}")
    ap.add_argument("--url", default=None, help="broker URL; default: a throwaway tuned Mosquitto")
    ap.add_argument("--processes", type=int, default=None, help="simulator worker processes")
    ap.add_argument("--qos", type=int, default=1, choices=(0, 1))
    ap.add_argument("--timeout", type=float, default=10.0, help="call timeout (s)")
    ap.add_argument("--pool", type=int, default=16, help="PostgreSQL connections per target")
    ap.add_argument("--max-batch", type=int, default=1000)
    ap.add_argument("--no-coalesce", action="store_true",
                    help="do not merge a call's consecutive queued status changes")
    ap.add_argument("--sqlite-sync", default="FULL", choices=("OFF", "NORMAL", "FULL", "EXTRA"))
    ap.add_argument("--events", action="store_true", help="build every event body (a counting sink)")
    ap.add_argument("--profile", default=None, help="cProfile each pg-group phase to PREFIX.*.prof")
    ap.add_argument("--gc-threshold", type=int, default=None,
                    help="gc.freeze() after start-up and set the first GC threshold to this "
                         "(default: Python's defaults)")
    ap.add_argument("--json", default=None, help="write the full report here")
    ap.add_argument("--quick", action="store_true", help="a tiny run")
    a = ap.parse_args(argv)
    targets = tuple(t.strip() for t in a.targets.split(",") if t.strip())
    cfg = PersistentBenchConfig(
        dsn=a.dsn, devices=a.devices, callers=a.callers, duration=a.duration, warmup=a.warmup,
        rounds=a.rounds, targets=targets, url=a.url, processes=a.processes, qos=a.qos,
        timeout=a.timeout, pool=a.pool, max_batch=a.max_batch, coalesce=not a.no_coalesce,
        sqlite_sync=a.sqlite_sync, events=a.events, profile=a.profile, gc_threshold=a.gc_threshold,
    )
    if a.quick:
        cfg.quick()
    report = run(run_persistent_bench(cfg, lambda m: print(m, file=sys.stderr, flush=True)))
    print(format_report(report))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"report written to {a.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
