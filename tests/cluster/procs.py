"""Several lease-only nodes in separate processes (tests/cluster/node_proc.py),
their events gathered into one ownership history."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

from .history import History

REPO = Path(__file__).resolve().parents[2]


class NodeProcs:
    def __init__(self, dsn: str, partitions: int, ttl: float) -> None:
        self.dsn, self.partitions, self.ttl = dsn, partitions, ttl
        self.history = History()
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.owned: dict[str, set[int]] = {}
        self.changed = asyncio.Condition()
        self._readers: list[asyncio.Task] = []

    async def start(self, name: str) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.cluster.node_proc", self.dsn, name, str(self.partitions), str(self.ttl),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=REPO, env=env,
        )
        self.procs[name] = proc
        self.owned[name] = set()
        started = asyncio.get_running_loop().create_future()
        self._readers.append(asyncio.get_running_loop().create_task(self._read(name, proc, started)))
        await asyncio.wait_for(started, 60)

    async def _read(self, name: str, proc, started) -> None:
        async for line in proc.stdout:
            ev = json.loads(line)
            if ev["ev"] == "started":
                started.set_result(None)
            elif ev["ev"] == "acquired":
                self.history.acquired(name, ev["parts"], ev["t"])
                self.owned[name] |= set(ev["parts"])
            elif ev["ev"] == "lost":
                self.history.lost(name, ev["parts"], ev["t"])
                self.owned[name] -= set(ev["parts"])
            async with self.changed:
                self.changed.notify_all()
        if not started.done():
            started.set_exception(RuntimeError(f"node {name} exited with {await proc.wait()} before starting"))

    async def until(self, predicate, timeout: float = 60.0) -> None:
        async def wait() -> None:
            async with self.changed:
                await self.changed.wait_for(predicate)
        await asyncio.wait_for(wait(), timeout)

    def covered_by(self, names) -> bool:
        seen = [p for n in names for p in self.owned[n]]
        return len(seen) == self.partitions and len(set(seen)) == self.partitions

    def balanced(self, names) -> bool:
        counts = [len(self.owned[n]) for n in names]
        return self.covered_by(names) and max(counts) - min(counts) <= 1

    def kill(self, name: str) -> float:
        """kill -9; returns when (time.monotonic()) it was sent."""
        t = time.monotonic()
        self.procs[name].send_signal(signal.SIGKILL)
        self.owned[name] = set()
        self.history.close_node(name, t)
        return t

    async def stop_all(self) -> None:
        for name, proc in self.procs.items():
            if proc.returncode is None:
                proc.stdin.close()
        for proc in self.procs.values():
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        for task in self._readers:
            await task


async def takeover_run(dsn: str, partitions: int, ttl: float, nodes: int = 3) -> dict:
    """Start ``nodes`` processes, wait for balance, kill -9 the first, and
    measure how long until the others own every partition."""
    procs = NodeProcs(dsn, partitions, ttl)
    names = [f"n{i}" for i in range(nodes)]
    try:
        for name in names:
            await procs.start(name)
        await procs.until(lambda: procs.balanced(names))
        victim, survivors = names[0], names[1:]
        killed_at = procs.kill(victim)
        await procs.until(lambda: procs.covered_by(survivors), timeout=ttl * 10)
        took = time.monotonic() - killed_at
        # a freshly started node joins while the others hold everything
        rejoin = "r0"
        await procs.start(rejoin)
        await procs.until(lambda: procs.balanced([*survivors, rejoin]))
    finally:
        await procs.stop_all()
    intervals = procs.history.check_no_overlap()
    return {"takeover_s": took, "intervals": intervals}


async def pause_run(dsn: str, partitions: int, ttl: float) -> dict:
    """SIGSTOP one of three processes until the others took its partitions,
    then SIGCONT: the paused node must count itself as having stopped at
    its deadline (before the takeover), then rejoin with a new session."""
    procs = NodeProcs(dsn, partitions, ttl)
    names = ["n0", "n1", "n2"]
    try:
        for name in names:
            await procs.start(name)
        await procs.until(lambda: procs.balanced(names))
        victim = procs.procs["n0"]
        theirs = set(procs.owned["n0"])
        victim.send_signal(signal.SIGSTOP)
        paused_at = time.monotonic()
        await procs.until(lambda: all(any(p in procs.owned[n] for n in ("n1", "n2")) for p in theirs),
                          timeout=ttl * 10)
        took = time.monotonic() - paused_at
        victim.send_signal(signal.SIGCONT)
        await procs.until(lambda: procs.balanced(names))
    finally:
        await procs.stop_all()
    return {"takeover_s": took, "intervals": procs.history.check_no_overlap()}
