"""CPU time of this machine's processes, from ``/proc`` (Linux), for the
benchmarks' per-process accounting: where a rig's CPU goes tells which
process caps a run.  Everything returns None (or nothing) elsewhere."""

from __future__ import annotations

import gc
import os
import time
from typing import Any, Self

__all__ = ["GcMeter", "machine_cpu", "process_cpu", "processes_named"]

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_cpu() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in parts[:8]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / _TICK, sum(ticks) / _TICK


def process_cpu(pid: int) -> float | None:
    """User + system CPU seconds a process has used; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def processes_named(name: str) -> list[int]:
    """Pids of every process whose command name is ``name``."""
    pids = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == name:
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


class GcMeter:
    """Time this process spends in the cyclic garbage collector while the
    ``with`` block runs: in all, by generation, and its longest pass (a
    pause every coroutine of the process waits out)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.longest = 0.0
        self.collections = [0, 0, 0]
        self.by_generation = [0.0, 0.0, 0.0]
        self._t = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            dt = time.perf_counter() - self._t
            self.seconds += dt
            self.longest = max(self.longest, dt)
            self.collections[info["generation"]] += 1
            self.by_generation[info["generation"]] += dt

    def __enter__(self) -> Self:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)
