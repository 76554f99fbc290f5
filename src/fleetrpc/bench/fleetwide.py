"""Fleet-wide workloads: ``fanout`` (one call to every device at once) and
``sequential`` (k calls per device, one at a time per device)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .phase import Phase

__all__ = ["fanout", "sequential"]


async def fanout(target, devices, cfg, progress) -> dict[str, Any]:
    times: list[float] = []
    ok = failed = 0
    n = len(devices)
    with Phase(progress, target.name, "fanout", float(n * cfg.fanout_rounds), f"{n} devices") as ph:
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


async def sequential(target, devices, cfg, progress) -> dict[str, Any]:
    k = cfg.calls_per_device
    with Phase(progress, target.name, "sequential", float(len(devices) * k), f"{k} per device") as ph:
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
