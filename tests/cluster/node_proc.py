"""One lease-only fleetrpc node in a process of its own, for the
multi-process tests and benchmarks/cluster_takeover.py.

    python -m tests.cluster.node_proc DSN NAME PARTITIONS LEASE_TTL_S

Prints one JSON object per line on stdout, times on ``time.monotonic()``
(CLOCK_MONOTONIC: one clock for every process of the machine):
``{"ev": "acquired"|"lost", "node", "parts", "t"}`` and
``{"ev": "started", "node", "pid"}``.  A lost line's ``t`` is when the node
stopped acting: its lease deadline when it fenced itself (even if the
process was paused past it), else the moment of the hand-over.
Runs until killed or until stdin closes (then leaves cleanly).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from fleetrpc.cluster import ClusterSettings, LeaseManager
from fleetrpc.store.db import open_database


def settings_for(partitions: int, ttl: float) -> ClusterSettings:
    return ClusterSettings(partitions=partitions, lease_ttl_s=ttl, margin_s=ttl / 5,
                           renew_interval_s=ttl / 4, claim_interval_s=ttl / 20)


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main(dsn: str, name: str, partitions: int, ttl: float) -> None:
    db = await open_database(dsn, min_size=1, max_size=2)
    m = LeaseManager(db, name, settings_for(partitions, ttl))

    def acquired(parts: list[int]) -> None:
        emit({"ev": "acquired", "node": name, "parts": parts, "t": time.monotonic()})

    def lost(parts: list[int]) -> None:
        t = time.monotonic()
        if m.lapsed_at is not None and not m.owned():
            t = min(t, m.lapsed_at)
        emit({"ev": "lost", "node": name, "parts": parts, "t": t})

    m.on_acquired(acquired)
    m.on_lost(lost)
    await m.start()
    emit({"ev": "started", "node": name, "pid": os.getpid()})
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), lambda: done.set() if not os.read(sys.stdin.fileno(), 4096) else None)
    await done.wait()
    await m.stop()
    await db.close()


if __name__ == "__main__":
    dsn, name, partitions, ttl = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    asyncio.run(main(dsn, name, partitions, ttl))
