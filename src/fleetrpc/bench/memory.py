"""The ``memory`` workload: bytes per pending call, from the Python heap's
growth with many calls pending (:mod:`tracemalloc`)."""

from __future__ import annotations

import asyncio
import gc
import os
import time
import tracemalloc
from typing import Any

from ..sim.fleet import Fleet
from .phase import Phase

__all__ = ["memory", "heap_growth", "harness_bytes", "rss_bytes"]


def rss_bytes() -> int:
    """This process's resident set size (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def heap_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot,
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


async def harness_bytes(n: int) -> float:
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
    return heap_growth(before, after) / n


async def memory(target, devices, cfg, progress, fleet: Fleet) -> dict[str, Any]:
    n = cfg.mem_pending
    loop = asyncio.get_running_loop()
    call = target.call
    params = cfg.params
    # Twice: the first run also grows what never shrinks back (asyncio's
    # weak set of all tasks); the target's phase then starts warm as well.
    await harness_bytes(n)
    harness = await harness_bytes(n)
    await fleet.configure(drop_rate=1.0)  # nobody answers: every call stays pending
    tasks: list[asyncio.Task] = []
    timeout = max(60.0, cfg.timeout)

    async def caller(device):
        # The same shape as the harness's waiter, so that its frame is
        # subtracted exactly: a call() that is not a coroutine (fleetrpc's
        # returns its future) would otherwise be credited with the
        # harness's coroutine frame, and one that is would hide its own.
        try:
            return await call(device, "echo", params, timeout=timeout)
        except asyncio.CancelledError:
            pass

    try:
        with Phase(progress, target.name, "memory", float(n), f"{n} pending") as ph:
            base = (await fleet.stats())["requests"]
            gc.collect()
            tracemalloc.start(1)
            try:
                before = tracemalloc.take_snapshot()
                for i in range(n):
                    tasks.append(loop.create_task(caller(devices[i % len(devices)])))
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
    total = heap_growth(before, after)
    own = heap_growth(before, after, include=target.alloc_files,
                       exclude=getattr(target, "_exclude", ()))
    return {
        "pending": n,
        "delivered_to_devices": pending_seen,
        "method": "tracemalloc: Python heap growth with N calls pending, each awaited by a "
                  "task's coroutine (devices silent, every request delivered, heap settled); "
                  "per call = total minus the harness's own task and coroutine per call; "
                  "'own' counts only allocations made in the target's source files",
        "bytes_per_pending": round(total / n - harness, 1),
        "bytes_per_pending_total": round(total / n, 1),
        "bytes_per_pending_own": round(own / n, 1),
        "harness_bytes_per_call": round(harness, 1),
    }
