"""Ownership history for the cluster tests: who acted on which partition
when, and a check that no two nodes ever did at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fleetrpc.cluster import LeaseManager


@dataclass
class Interval:
    node: str
    partition: int
    start: float
    end: float | None = None  # None: still owned


@dataclass
class History:
    """Intervals of ownership on one real clock (``time.monotonic``, which
    is system-wide on Linux, so processes can report into one history)."""

    intervals: list[Interval] = field(default_factory=list)
    _open: dict[tuple[str, int], Interval] = field(default_factory=dict)

    def acquired(self, node: str, partitions, at: float) -> None:
        for p in partitions:
            key = (node, p)
            assert key not in self._open, f"{node} acquired partition {p} twice without losing it"
            iv = Interval(node, p, at)
            self._open[key] = iv
            self.intervals.append(iv)

    def lost(self, node: str, partitions, at: float) -> None:
        for p in partitions:
            iv = self._open.pop((node, p), None)
            assert iv is not None, f"{node} lost partition {p} it had not acquired"
            iv.end = at

    def close_node(self, node: str, at: float) -> None:
        """A node died (kill -9) at ``at``: it acts on nothing afterwards."""
        for (n, p) in [k for k in self._open if k[0] == node]:
            self._open.pop((n, p)).end = at

    def owners(self) -> dict[int, str]:
        return {p: n for (n, p) in self._open}

    def check_no_overlap(self) -> int:
        """Assert that no partition was ever owned by two nodes at once;
        return the number of intervals checked."""
        by_partition: dict[int, list[Interval]] = {}
        for iv in self.intervals:
            by_partition.setdefault(iv.partition, []).append(iv)
        for p, ivs in by_partition.items():
            ivs.sort(key=lambda iv: iv.start)
            for a, b in zip(ivs, ivs[1:]):
                end = float("inf") if a.end is None else a.end
                assert end <= b.start, (
                    f"partition {p}: {a.node} owned it until {end:.4f}, "
                    f"{b.node} from {b.start:.4f} (overlap {end - b.start:.4f} s)"
                )
        return len(self.intervals)


def skewed_clock(offset: float, rate: float) -> tuple[Callable[[], float], Callable[[float], float]]:
    """A node clock ``offset + rate * t`` and its inverse to real time."""
    def clock() -> float:
        return offset + rate * time.monotonic()

    def to_real(t: float) -> float:
        return (t - offset) / rate

    return clock, to_real


class Cluster:
    """In-process managers wired into one history, with a condition that
    tests await instead of sleeping."""

    def __init__(self) -> None:
        self.history = History()
        self.changed = asyncio.Condition()
        self.managers: dict[str, LeaseManager] = {}

    def add(self, name: str, manager: LeaseManager, to_real: Callable[[float], float] = lambda t: t) -> LeaseManager:
        self.managers[name] = manager

        def acquired(parts: list[int]) -> None:
            self.history.acquired(name, parts, time.monotonic())
            self._notify()

        def lost(parts: list[int]) -> None:
            now = time.monotonic()
            # A node that fenced itself stopped acting at its deadline, even
            # if the timer that says so ran late.
            if manager.lapsed_at is not None and not manager.owned():
                now = min(now, to_real(manager.lapsed_at))
            self.history.lost(name, parts, now)
            self._notify()

        manager.on_acquired(acquired)
        manager.on_lost(lost)
        return manager

    def _notify(self) -> None:
        async def notify() -> None:
            async with self.changed:
                self.changed.notify_all()
        asyncio.get_running_loop().create_task(notify())

    async def until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        async def wait() -> None:
            async with self.changed:
                await self.changed.wait_for(predicate)
        await asyncio.wait_for(wait(), timeout)

    def counts(self, *names: str) -> list[int]:
        return [len(self.managers[n].owned()) for n in names]

    def all_owned_once(self, partitions: int, names) -> bool:
        seen: list[int] = []
        for n in names:
            seen.extend(self.managers[n].owned())
        return len(seen) == partitions and len(set(seen)) == partitions

    def balanced(self, partitions: int, names) -> bool:
        counts = self.counts(*names)
        return self.all_owned_once(partitions, names) and max(counts) - min(counts) <= 1
