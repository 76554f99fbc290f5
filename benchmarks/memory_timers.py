"""Memory per pending lightweight call: PendingTable vs. Future + call_later + dict.

Usage::

    PYTHONPATH=src python benchmarks/memory_timers.py            # 1,000,000 calls
    PYTHONPATH=src python benchmarks/memory_timers.py -n 524289 -k " c "  # just past a doubling

Every case runs in a fresh subprocess, twice: once under ``tracemalloc``
(every byte the Python allocators hand out: objects, and the PyMem arrays of
the compiled core) and once without it, for the growth of the resident set
(RSS, from /proc/self/statm).  A case keeps ``n`` calls pending, each with its
own deadline, and reports bytes per call; setup (event loop, imports, the
shared device string and callback) is measured before and subtracted.

- ``Future + call_later + dict``: ``fut = loop.create_future()``,
  ``h = loop.call_later(timeout, on_timeout, rid)``,
  ``pending[rid] = (device, fut, h)``: the plain asyncio way, Future included.
- ``PendingTable ... + Future``: ``table.add(device, loop.create_future(), deadline)``.
- ``PendingTable ... + shared callback``: one completion object for every
  call, as fan-out uses: what the table and the wheel cost by themselves.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tracemalloc

CASES = {
    "asyncio Future + call_later + dict": ("asyncio", "future_dict"),
    "uvloop Future + call_later + dict": ("uvloop", "future_dict"),
    "PendingTable c + Future": ("c", "table_future"),
    "PendingTable c + CallFuture": ("c", "table_callfuture"),
    "PendingTable c + shared callback": ("c", "table_shared"),
    "TimingWheel c alone (schedule only)": ("c", "wheel"),
    "PendingTable py + Future": ("py", "table_future"),
    "PendingTable py + shared callback": ("py", "table_shared"),
}


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def on_timeout(*args):
    pass


def build(variant: str, kind: str, n: int, measure):
    """Set up, then measure around the n pending calls; return bytes used."""
    import asyncio

    if variant == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    device = "dev-00001"
    keep = []
    if variant in ("c", "py"):
        from fleetrpc import _core

        classes = _core.VARIANTS[variant]
        wheel = classes["TimingWheel"](0.005, 0.0)
        table = classes["PendingTable"](wheel)
        keep += [wheel, table]
    start = loop.time()
    deadlines = None  # computed on the fly: no list of a million floats
    gc.collect()
    before = measure()
    if kind == "future_dict":
        pending = {}
        call_later, create_future = loop.call_later, loop.create_future
        for rid in range(1, n + 1):
            pending[rid] = (device, create_future(), call_later(10.0 + rid * 1e-6, on_timeout, rid))
        keep.append(pending)
    elif kind == "table_future":
        add, create_future = table.add, loop.create_future
        for rid in range(1, n + 1):
            add(device, create_future(), start + 10.0 + rid * 1e-6)
    elif kind == "table_callfuture":  # what Dispatcher.call() does
        add, new = table.add, classes["CallSite"](loop, on_timeout).future
        for rid in range(1, n + 1):
            add(device, new(), start + 10.0 + rid * 1e-6)
    elif kind == "table_shared":
        add = table.add
        for rid in range(1, n + 1):
            add(device, on_timeout, start + 10.0 + rid * 1e-6)
    elif kind == "wheel":
        schedule = wheel.schedule
        for rid in range(1, n + 1):
            schedule(start + 10.0 + rid * 1e-6, rid)
    gc.collect()
    used = measure() - before
    del deadlines, keep
    return used


def child(name: str, n: int, mode: str) -> None:
    variant, kind = CASES[name]
    if mode == "tracemalloc":
        tracemalloc.start()
        used = build(variant, kind, n, lambda: tracemalloc.get_traced_memory()[0])
    else:
        used = build(variant, kind, n, rss)
    print(json.dumps({"bytes": used}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=1_000_000, help="pending calls (default 1,000,000)")
    ap.add_argument("-k", default="", help="only the cases whose name contains this")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", nargs=2, metavar=("CASE", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.n, args.child[1])
        return
    results = {}
    print(f"pending calls: {args.n:,}\n")
    print("| case | tracemalloc B/call | RSS B/call |")
    print("|---|---:|---:|")
    for name in CASES:
        if args.k not in name:
            continue
        row = {}
        for mode in ("tracemalloc", "rss"):
            out = subprocess.run(
                [sys.executable, __file__, "-n", str(args.n), "--child", name, mode],
                capture_output=True, text=True, check=True,
            ).stdout
            row[mode] = json.loads(out)["bytes"] / args.n
        results[name] = row
        print(f"| {name} | {row['tracemalloc']:.1f} | {row['rss']:.1f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
