"""What every benchmark of the rig shares: latency percentiles, the
throwaway broker, and CPU seconds of groups of processes.

One helper each, used by the end-to-end workloads (:mod:`.runner`) and the
persistent-RPC benchmark (:mod:`.persistent`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable

from .cpu import process_cpu

__all__ = ["percentiles", "throwaway_broker", "cpu_seconds"]


def percentiles(samples: list[float]) -> dict[str, float | None]:
    """p50, p99, p99.9 and the maximum of latencies in seconds, as
    milliseconds (``p50_ms``, ...); None each when there are none.  Sorts
    ``samples`` in place."""
    if not samples:
        return {"p50_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None}
    samples.sort()
    n = len(samples)

    def at(q: float) -> float:
        return round(samples[min(n - 1, int(q * n))] * 1000.0, 3)

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "p999_ms": at(0.999), "max_ms": round(samples[-1] * 1000.0, 3)}


@contextlib.asynccontextmanager
async def throwaway_broker(url: str | None) -> AsyncIterator[tuple[str, str, int | None]]:
    """(url, description, pid of the broker when this run started it): the
    given broker, or a throwaway tuned Mosquitto for the run."""
    if url:
        yield url, "given", None
        return
    from ..broker import start_broker

    async with start_broker(prefer="mosquitto", tuned=True) as broker:
        yield broker.url, f"throwaway tuned mosquitto ({broker.url})", broker.pid


def cpu_seconds(pids: Iterable[int], *, gone_as_zero: bool = False) -> float | None:
    """CPU seconds these processes have used; None if one cannot be read
    (unless ``gone_as_zero``: a process that is gone then counts as 0)."""
    total = 0.0
    for pid in pids:
        cpu = process_cpu(pid)
        if cpu is None:
            if not gone_as_zero:
                return None
            cpu = 0.0
        total += cpu
    return total
