"""Bytes per pending ``Dispatcher.call()``, end to end (tracemalloc).

N calls are made and left pending against a silent transport (it accepts
every publish and never answers), with the same accounting as ``fleetrpc
bench``'s memory phase: the Python heap's growth with N calls pending, minus
the harness's own cost per call (a task and its coroutine awaiting a future,
``fleetrpc.bench.memory.harness_bytes``).  Two ways of making the call:

- ``task``: ``loop.create_task(d.call(...))``, what ``fleetrpc bench`` does;
- ``await``: ``loop.create_task(user(...))`` where ``user`` is a coroutine
  that does ``await d.call(...)``, what an application does.  The harness's
  coroutine is the same shape, so its frame is subtracted exactly.

    PYTHONPATH=src python benchmarks/memory_call.py [-n 20000] [--loop uvloop] [--warm]

Each mode runs in a fresh process.  Prints bytes per pending call, the
harness's own bytes, and the top allocation sites (``--top``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tracemalloc


class SilentTransport:
    """Takes every publish, never answers (devices that do not reply)."""

    connected = True

    def __init__(self) -> None:
        self.on_message = self.on_published = self.on_connection = None
        self.awaiting = None
        self.published = 0

    async def start(self, filters=()) -> None:
        self.on_connection(True)

    async def close(self) -> None:
        pass

    def publish(self, topic, payload, qos=1, retain=False, token=-1, properties=None) -> None:
        self.published += 1


async def run(n: int, mode: str, top: int, warm: bool) -> dict:
    from fleetrpc import Dispatcher, Settings
    from fleetrpc.bench.memory import harness_bytes, heap_growth

    loop = asyncio.get_running_loop()
    settings = Settings(presence=False, inflight_window=2 * n, device_window=2 * n)
    d = Dispatcher(settings, transport=SilentTransport())
    await d.start()
    devices = [f"dev-{i}" for i in range(1000)]
    params = {"x": 1}
    call = d.call

    async def user(device):
        try:
            return await call(device, "echo", params, timeout=60.0)
        except asyncio.CancelledError:
            pass

    if warm:
        # A round of the target itself first: what never shrinks back (the
        # timing wheel's pool) is then already grown, as on a busy server.
        first = [loop.create_task(user(devices[i % 1000])) for i in range(n)]
        await asyncio.sleep(0)
        for t in first:
            t.cancel()
        await asyncio.gather(*first, return_exceptions=True)
        del first
    await harness_bytes(n)
    harness = await harness_bytes(n)
    tasks = []
    gc.collect()
    tracemalloc.start(1)
    try:
        before = tracemalloc.take_snapshot()
        for i in range(n):
            if mode == "task":
                tasks.append(loop.create_task(call(devices[i % 1000], "echo", params, timeout=60.0)))
            else:
                tasks.append(loop.create_task(user(devices[i % 1000])))
            if not i & 255:
                await asyncio.sleep(0)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert len(d._pending) == n, (len(d._pending), n)
    assert d._transport.published == (2 * n if warm else n), d._transport.published
    total = heap_growth(before, after)
    sites = [
        (str(s.traceback[0]), round(s.size_diff / n, 1))
        for s in after.compare_to(before, "lineno")[:top]
        if s.size_diff
    ]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert len(d._pending) == 0
    await d.close()
    return {
        "mode": mode,
        "pending": n,
        "warm": warm,
        "bytes_per_pending": round(total / n - harness, 1),
        "bytes_per_pending_total": round(total / n, 1),
        "harness_bytes_per_call": round(harness, 1),
        "sites": sites,
    }


def child(n: int, mode: str, loop_name: str, top: int, warm: bool) -> None:
    if loop_name == "uvloop":
        import uvloop

        result = uvloop.run(run(n, mode, top, warm))
    else:
        result = asyncio.run(run(n, mode, top, warm))
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=20_000, help="pending calls (default 20,000)")
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    ap.add_argument("--mode", choices=("task", "await", "both"), default="both")
    ap.add_argument("--top", type=int, default=0, help="show the top allocation sites")
    ap.add_argument("--warm", action="store_true",
                    help="make and cancel N calls first (the wheel's pool is then grown)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.n, a.mode, a.loop, a.top, a.warm)
        return
    modes = ("task", "await") if a.mode == "both" else (a.mode,)
    for mode in modes:
        out = subprocess.run(
            [sys.executable, __file__, "--child", "-n", str(a.n), "--mode", mode, "--loop", a.loop,
             "--top", str(a.top)] + (["--warm"] if a.warm else []),
            check=True, capture_output=True, text=True,
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{a.loop:8} {mode:6} n={r['pending']}{' warm' if a.warm else ''}: {r['bytes_per_pending']:7.1f} B/call "
              f"(total {r['bytes_per_pending_total']}, harness {r['harness_bytes_per_call']})")
        for site, b in r["sites"]:
            print(f"    {b:8.1f}  {site}")


if __name__ == "__main__":
    main()
