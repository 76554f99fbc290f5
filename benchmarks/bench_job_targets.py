"""Resolving a job's ``deviceIds`` targets in the server's registry.

    python benchmarks/bench_job_targets.py --ids 100000
    git show 7b1199b:src/fleetrpc/jobs/registry.py > /tmp/registry_before.py
    python benchmarks/bench_job_targets.py --ids 100000 --compare /tmp/registry_before.py

A SQLite ``device`` table (``synchronous=FULL``, in a temporary directory)
gets ``--devices`` devices of one tenant; a job names ``--ids`` of them by
id, shuffled.  Timed: the job's ``count()`` and its first page of 1000 (what
a job does before its first device starts), then every page, as the engine
reads them (not when the first page took over a second: the registry of
7b1199b binds the whole list into every query, and SQLite takes 16 s to
prepare such a statement the first time it sees it).  With ``--compare``,
the same calls on that file's ``RegistryTargets``, in turns.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import random
import tempfile
import time
import uuid

from fleetrpc.jobs import registry
from fleetrpc.jobs.model import Targets
from fleetrpc.store.db import open_database

TENANT = str(uuid.uuid4())


def load(path: str):
    spec = importlib.util.spec_from_file_location("fleetrpc.jobs._registry_compared", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def measure(module, db, ids: list[str], label: str, walk: bool) -> None:
    source = module.RegistryTargets(db, TENANT, Targets(device_ids=ids))
    t0 = time.perf_counter()
    total = await source.count()
    t1 = time.perf_counter()
    first = await source.page(None, 1000)
    t2 = time.perf_counter()
    line = f"{label:>8}: count {total} in {t1 - t0:.3f} s, first page of {len(first)} in {t2 - t1:.3f} s"
    if walk and t2 - t1 < 1.0:
        seen = len(first)
        after = first[-1] if first else None
        while after is not None:
            page = await source.page(after, 1000)
            seen += len(page)
            after = page[-1] if len(page) == 1000 else None
        line += f", all {seen} in {time.perf_counter() - t1:.3f} s"
    print(line, flush=True)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = await open_database(f"sqlite:///{tmp}/targets.db")
        devices = [str(uuid.uuid4()) for _ in range(args.devices)]
        await db.executemany(
            "INSERT INTO device (id, tenant_id, created_time, name, type) VALUES ($1, $2, 0, $3, 'x')",
            [(d, TENANT, f"d{i}") for i, d in enumerate(devices)],
        )
        ids = random.Random(1).sample(devices, args.ids)
        variants = [("after", registry)] + ([("before", load(args.compare))] if args.compare else [])
        for _ in range(args.rounds):
            for label, module in variants:
                await measure(module, db, ids, label, walk=True)
        await db.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--ids", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--compare", help="a registry.py to time against this one, in turns")
    asyncio.run(main(ap.parse_args()))
