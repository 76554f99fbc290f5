"""Devices connected directly to fleetrpc's endpoint vs through Mosquitto.

The benchmark itself is ``fleetrpc.bench.endpoint`` (``fleetrpc bench
--direct`` runs it with the usual flags); this script adds every knob:
idle connections for the memory figure, write batching, the relayed path
(a call from a node the device is not connected to), one path only for
profiling.

Short runs only (the machine is shared)::

    python benchmarks/bench_endpoint.py
    python benchmarks/bench_endpoint.py --devices 1000 --seconds 5 --qos 1 --idle 5000
    python benchmarks/bench_endpoint.py --devices 10000 --idle 0 --processes 2 --concurrency 1000,20000
    python benchmarks/bench_endpoint.py --devices 1000 --idle 0 --processes 2 --concurrency 1000,3000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import sys

import uvloop

from fleetrpc.bench.endpoint import ALL_PATHS, PATHS, EndpointBenchConfig, format_report, run_endpoint_bench
from fleetrpc.runner import SERVER_GC_THRESHOLD


def _windows(text: str) -> tuple[int, ...]:
    try:
        windows = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 1000,20000") from None
    if min(windows) < 1:
        raise argparse.ArgumentTypeError("calls in flight must be >= 1")
    return windows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--qos", type=int, default=1, choices=(0, 1))
    p.add_argument("--concurrency", type=_windows, default=(1000,),
                   help="calls in flight (closed loop); several, comma-separated (1000,20000): "
                        "each path runs at each in turn and its peak counts")
    p.add_argument("--processes", type=int, default=1, help="simulator worker processes")
    p.add_argument("--url", help="the broker path's broker (default: a throwaway tuned Mosquitto)")
    p.add_argument("--idle", type=int, default=5000, help="idle direct connections for the memory figure (0: skip)")
    p.add_argument("--keepalive", type=int, default=60)
    p.add_argument("--idle-seconds", type=float, default=5.0)
    p.add_argument("--write-batch-above", type=int, default=0,
                   help="also run the direct path with this write_batch_above")
    p.add_argument("--write-batch-delay", type=float, default=0.001)
    p.add_argument("--gc-threshold", type=int, default=SERVER_GC_THRESHOLD,
                   help="the garbage collector's first threshold while the paths run "
                        "(default: what `fleetrpc serve` sets; 700: Python's default)")
    p.add_argument("--rounds", type=int, default=1,
                   help="the paths take turns this many times (broker, direct, broker, ...); "
                        "each path's median round and the median per-round ratio count")
    p.add_argument("--fanout", type=_windows, default=(),
                   help="also a fleet job's load: broadcasts to every device, at these calls in flight "
                        "(comma-separated; concurrency / devices broadcasts at once); the peak is over both")
    p.add_argument("--fanout-slice", type=int, default=0,
                   help="fan-out: each broadcast to this many devices (the next slice each time) instead of "
                        "every device, so that no wave waits for its slowest device (0: every device)")
    p.add_argument("--inflight-window", type=int, default=None,
                   help="the dispatcher's calls in flight at most, on every path (default: the library's, 20000)")
    p.add_argument("--only", choices=ALL_PATHS, help="run one path only (profiling)")
    p.add_argument("--relayed", action="store_true",
                   help="also run the relayed path (devices on another node's endpoint)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    if args.fanout_slice < 0:
        p.error("--fanout-slice must be >= 0")
    if args.inflight_window is not None and args.inflight_window < 1:
        p.error("--inflight-window must be >= 1")
    paths = (args.only,) if args.only else PATHS + (("relayed",) if args.relayed else ())
    cfg = EndpointBenchConfig(
        devices=args.devices, qos=args.qos, seconds=args.seconds, concurrency=args.concurrency,
        processes=args.processes, url=args.url, paths=paths,
        idle=args.idle, keepalive=args.keepalive, idle_seconds=args.idle_seconds,
        write_batch_above=args.write_batch_above, write_batch_delay=args.write_batch_delay,
        gc_threshold=args.gc_threshold, rounds=args.rounds, fanout=args.fanout,
        inflight_window=args.inflight_window, fanout_slice=args.fanout_slice,
    )
    report = uvloop.run(run_endpoint_bench(cfg))
    if args.json:
        json.dump(report["results"], sys.stdout, indent=2)
        print()
        return
    print(format_report(report))


if __name__ == "__main__":
    main()
