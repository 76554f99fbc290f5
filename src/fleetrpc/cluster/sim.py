"""The lease and takeover logic of many nodes in one process, no network.

Real :class:`~fleetrpc.cluster.leases.LeaseManager` objects run on a
:class:`~fleetrpc.cluster.table.MemoryLeaseTable` (the SQL's semantics, as
``tests/cluster/test_table_model.py`` checks) in virtual time: a
discrete-event loop runs each node's rounds when due; each node has its own
clock offset and rate.  A scenario of cold start, kill -9, a replacement
joining, a clean leave, and a node cut off from the database (alive, with a
slow clock) measures what docs/scaling.md claims: balance, takeover time,
rebalance cost and hand-over gaps, statements per node; and checks at
every acquisition that no node takes a partition another node may still
act on.

``benchmarks/sim_cluster.py`` runs it with 10 nodes and 1,000,000
partitions; ``tests/cluster/test_sim.py`` a small version.
"""

from __future__ import annotations

import heapq
import random
import time
from typing import Any

from .leases import LeaseManager
from .settings import ClusterSettings
from .table import MemoryLeaseTable

__all__ = ["DoubleOwnership", "Simulation", "run_scenario"]


class DoubleOwnership(AssertionError):
    """A node acquired a partition that another node could still act on."""


def _drive(coro: Any) -> Any:
    # The in-memory table never suspends: run the coroutine to its end.
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("a lease round suspended in the simulation")


class SimNode:
    def __init__(self, sim: Simulation, name: str, offset: float, rate: float) -> None:
        self.sim, self.name, self.offset, self.rate = sim, name, offset, rate
        self.manager = LeaseManager(sim.table, name, sim.settings, clock=self.clock)
        self.manager.on_acquired(self._acquired)
        self.manager.on_lost(self._lost)
        self.dead = False
        self.cut_off = False
        self.next_round = 0.0
        self.rounds = 0

    def clock(self) -> float:
        return self.offset + self.rate * self.sim.now

    def set_rate(self, rate: float) -> None:
        """Change the clock's rate from now on (a monotonic clock never jumps)."""
        self.offset += (self.rate - rate) * self.sim.now
        self.rate = rate

    def valid(self) -> bool:
        return not self.dead and bool(self.manager._owned) and self.clock() < self.manager.deadline

    def _acquired(self, parts: list[int]) -> None:
        sim = self.sim
        won = set(parts)
        for other in sim.nodes:
            if other is not self and other.valid():
                clash = won & other.manager._owned.keys()
                if clash:
                    # raised by run_until: the manager logs a callback's exceptions
                    sim.violations.append(
                        f"t={sim.now:.3f}: {self.name} acquired {len(clash)} partitions "
                        f"{other.name} still holds (e.g. {min(clash)})")
        sim.acquisitions += len(parts)
        now = sim.now
        handed = sim.handed_over
        for p in parts:
            t = handed.pop(p, None)
            if t is not None:
                gap = now - t
                sim.gaps.append(gap)
        for watch in sim.watches:
            watch.difference_update(parts)

    def _lost(self, parts: list[int]) -> None:
        if self.manager._valid():  # a hand-over, not a lapse
            now = self.sim.now
            for p in parts:
                self.sim.handed_over[p] = now


class Simulation:
    """Nodes on one in-memory lease table, in virtual time (seconds)."""

    def __init__(self, partitions: int, settings: ClusterSettings | None = None, seed: int = 1,
                 max_rate_skew: float = 0.1) -> None:
        self.settings = settings or ClusterSettings(partitions=partitions)
        if self.settings.partitions != partitions:
            raise ValueError("settings.partitions must be the simulation's partition count")
        self.partitions = partitions
        self.now = 0.0
        self.table = MemoryLeaseTable(lambda: round(self.now * 1000))
        _drive(self.table.setup(partitions))
        self.rng = random.Random(seed)
        self.max_rate_skew = max_rate_skew
        self.nodes: list[SimNode] = []
        self._queue: list[tuple[float, int, SimNode]] = []
        self._seq = 0
        self.acquisitions = 0
        self.handed_over: dict[int, float] = {}
        self.gaps: list[float] = []
        self.watches: list[set[int]] = []
        self.violations: list[str] = []

    # -- nodes --

    def add_node(self, name: str, rate: float | None = None) -> SimNode:
        skew = self.max_rate_skew
        node = SimNode(self, name, offset=self.rng.uniform(-3600, 3600),
                       rate=rate if rate is not None else self.rng.uniform(1 - skew, 1 + skew))
        self.nodes.append(node)
        _drive(node.manager.start(background=False))
        self._schedule(node, self.settings.claim_interval)
        return node

    def kill(self, node: SimNode) -> None:
        node.dead = True

    def cut_off(self, node: SimNode) -> None:
        node.cut_off = True

    def heal(self, node: SimNode) -> None:
        node.cut_off = False
        self._schedule(node, 0.0)

    def leave(self, node: SimNode) -> None:
        _drive(node.manager.stop())
        node.dead = True

    def live_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes if not n.dead]

    # -- time --

    def _schedule(self, node: SimNode, delay_on_node_clock: float) -> None:
        node.next_round = self.now + delay_on_node_clock / node.rate
        self._seq += 1
        heapq.heappush(self._queue, (node.next_round, self._seq, node))

    def run_until(self, t: float, stop_when=None) -> float | None:
        """Run every due round up to ``t``; with ``stop_when``, return the
        first time after a round at which it holds (None if it never does)."""
        while self._queue and self._queue[0][0] <= t:
            at, _, node = heapq.heappop(self._queue)
            if node.dead or node.cut_off or at != node.next_round:
                continue
            self.now = at
            for other in self.nodes:
                if not other.dead:
                    other.manager.check_deadline()
            delay = _drive(node.manager.run_round())
            if self.violations:
                raise DoubleOwnership("; ".join(self.violations[:3]))
            node.rounds += 1
            self._schedule(node, delay)
            if stop_when is not None and stop_when():
                return self.now
        self.now = t
        for other in self.nodes:
            if not other.dead:
                other.manager.check_deadline()
        return None

    # -- facts --

    def counts(self) -> list[int]:
        """Partitions held by each live node that is not cut off."""
        return [len(n.manager._owned) if n.valid() else 0 for n in self.live_nodes() if not n.cut_off]

    def balanced(self) -> bool:
        live = [n for n in self.live_nodes() if not n.cut_off]
        if not live:
            return False
        counts = [len(n.manager._owned) if n.valid() else 0 for n in live]
        return sum(counts) == self.partitions and max(counts) - min(counts) <= 1

    def check_final(self) -> None:
        """Every partition owned by exactly one valid node, as the table says."""
        seen: set[int] = set()
        total = 0
        for n in self.live_nodes():
            if not n.valid():
                continue
            owned = n.manager._owned.keys()
            if not set(owned) <= self.table.partitions_of(n.manager.session):
                raise DoubleOwnership(f"{n.name} holds partitions the table does not give it")
            seen |= owned
            total += len(owned)
        if total != self.partitions or len(seen) != self.partitions:
            raise AssertionError(f"{total} ownerships, {len(seen)} distinct, of {self.partitions} partitions")


def run_scenario(nodes: int = 10, partitions: int = 1_000_000, settings: ClusterSettings | None = None,
                 seed: int = 1) -> dict[str, Any]:
    """Cold start, kill -9, a replacement joins, a clean leave, a node cut
    off (slow clock) then healed.  Returns the figures; raises
    :class:`DoubleOwnership` if any acquisition would double-own."""
    s = settings or ClusterSettings(partitions=partitions)
    sim = Simulation(partitions, s, seed=seed)
    wall = time.perf_counter()
    out: dict[str, Any] = {"nodes": nodes, "partitions": partitions, "lease_ttl_s": s.lease_ttl_s,
                           "renew_interval_s": s.renew_interval, "claim_interval_s": s.claim_interval,
                           "margin_s": s.margin}
    horizon = 30 * s.lease_ttl_s

    def mark() -> tuple[float, int, int, int]:
        return sim.now, sim.table.rows_written, len(sim.gaps), sum(sim.table.calls.values())

    def settle(name: str, since: tuple[float, int, int, int], watch: set[int] | None = None) -> dict[str, Any]:
        """Run until ``watch`` (partitions) is owned again, then until
        balanced; the figures since ``since``."""
        t0, rows0, gaps0, calls0 = since
        out: dict[str, Any] = {}
        if watch is not None:
            out["partitions"] = len(watch)
            sim.watches = [watch]
            took = sim.run_until(sim.now + horizon, stop_when=lambda: not watch)
            if took is None:
                raise AssertionError(f"{name}: {len(watch)} partitions never taken over")
            out["taken_over_after_s"] = round(took - t0, 3)
        if not sim.balanced():
            took = sim.run_until(sim.now + horizon, stop_when=sim.balanced)
            if took is None:
                raise AssertionError(f"{name}: not balanced within {horizon} s")
        gaps = sim.gaps[gaps0:]
        out.update({"balanced_after_s": round(sim.now - t0, 3),
                    "moved": len(gaps),
                    "partition_rows_written": sim.table.rows_written - rows0,
                    "handover_gap_max_s": round(max(gaps), 3) if gaps else None,
                    "statements": sum(sim.table.calls.values()) - calls0})
        counts = sim.counts()
        out["shares"] = [min(counts), max(counts)]
        return out

    def pick(exclude: set[str]) -> SimNode:
        live = [n for n in sim.live_nodes() if n.name not in exclude and not n.cut_off]
        return live[len(live) // 2]

    # 1. cold start: every node within 100 ms
    since = mark()
    for i in range(nodes):
        sim.run_until(sim.now + sim.rng.uniform(0, 0.1 / max(1, nodes)))
        sim.add_node(f"n{i}")
    out["cold_start"] = settle("cold start", since)

    # steady state: statements per node and second
    since = mark()
    sim.run_until(sim.now + 10 * s.lease_ttl_s)
    out["steady_statements_per_node_s"] = round(
        (sum(sim.table.calls.values()) - since[3]) / (sim.now - since[0]) / len(sim.live_nodes()), 2)
    sim.check_final()

    # 2. kill -9, at a random phase of its renewals
    sim.run_until(sim.now + sim.rng.uniform(0, s.renew_interval))
    victim = pick(set())
    last_renewal = sim.now - (victim.clock() - victim.manager._last_renewal) / victim.rate
    since = mark()
    sim.kill(victim)
    out["kill"] = settle("kill -9", since, set(victim.manager._owned))
    out["kill"]["taken_over_after_last_renewal_s"] = round(
        since[0] + out["kill"]["taken_over_after_s"] - last_renewal, 3)

    # 3. a replacement joins
    since = mark()
    sim.add_node(f"n{nodes}")
    out["join"] = settle("join", since)
    out["join"]["moved_ideal"] = partitions // len(sim.live_nodes())

    # 4. a clean leave
    leaver = pick({victim.name})
    since = mark()
    watch = set(leaver.manager._owned)
    sim.leave(leaver)
    out["leave"] = settle("leave", since, watch)

    # 5. cut off from the database, alive, its clock slow by three quarters
    #    of the margin: it must stop before the others take over (checked
    #    at every acquisition)
    slow = pick({victim.name, leaver.name})
    slow.set_rate(1 - 0.75 * s.margin / s.lease_ttl_s)
    sim.run_until(sim.now + s.renew_interval)
    since = mark()
    sim.cut_off(slow)
    out["cut_off"] = settle("cut off", since, set(slow.manager._owned))
    out["cut_off"]["clock_rate"] = round(slow.rate, 3)
    since = mark()
    sim.heal(slow)
    out["heal"] = settle("heal", since)

    sim.check_final()
    counts = sim.counts()
    out["final_counts"] = [min(counts), max(counts)]
    out["acquisitions"] = sim.acquisitions
    out["virtual_s"] = round(sim.now, 1)
    out["wall_s"] = round(time.perf_counter() - wall, 2)
    return out
