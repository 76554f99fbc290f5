"""Store write throughput: group commit vs one transaction per row.

    python benchmarks/bench_store.py --dsn postgresql://postgres@127.0.0.1:5432/test
    python benchmarks/bench_store.py --no-pg               # SQLite only
    python benchmarks/bench_store.py --dsn ... --writers 64,1024 --calls 20000 --json out.json

For each backend and each number of concurrent writers (asyncio tasks), three
phases run on a fresh table, each ``--calls`` calls long:

- insert:     every call is stored (QUEUED);
- update:     every stored call goes QUEUED -> SENT -> DELIVERED -> SUCCESSFUL
              (three optimistic status changes, the last with a response);
- lifecycle:  each writer runs whole calls in turn: insert + the three changes.

and three ways of writing:

- autocommit: one plain statement per row, autocommit (raw asyncpg on a
              pool of ``--pool`` connections; for SQLite, on the store's one
              connection).  The baseline.
- store/row:  the Store API without batching (``store.insert`` /
              ``store.change``): one transaction per row.
- group:      :class:`GroupCommitStore`: the same calls, group-committed.

It prints rows/s (lifecycles/s for the lifecycle phase) and the ratio of
group commit to autocommit.  PostgreSQL runs in a schema of its own
(``fleetrpc_bench``), dropped afterwards; SQLite in a temporary file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import asyncpg  # noqa: E402

from fleetrpc.rpc.status import RpcStatus  # noqa: E402
from fleetrpc.store import GroupCommitStore, PostgresStore, RpcRecord, SqliteStore, StatusChange  # noqa: E402
from fleetrpc.store.base import COLUMNS, JSON_COLUMNS, record_row  # noqa: E402

Q, S, D, OK = RpcStatus.QUEUED, RpcStatus.SENT, RpcStatus.DELIVERED, RpcStatus.SUCCESSFUL
STEPS = ((Q, S), (S, D), (D, OK))
SCHEMA = "fleetrpc_bench"


def make_records(n: int) -> list[RpcRecord]:
    now = int(time.time() * 1000)
    return [
        RpcRecord(
            id=str(uuid.uuid4()),
            device_id=f"dev-{i % 1000}",
            created_time=now + i,
            expiration_time=now + i + 60_000,
            method="setGPIO",
            params={"pin": i % 16, "value": 1},
            retries=3,
        )
        for i in range(n)
    ]


def change(r: RpcRecord, old: RpcStatus, new: RpcStatus, t: int) -> StatusChange:
    if new is OK:
        return StatusChange(
            id=r.id, expected_status=old, status=new, updated_time=t, response={"pin": 4, "ok": True}
        )
    return StatusChange(
        id=r.id, expected_status=old, status=new, updated_time=t, attempts=1 if new is S else None
    )


# -- writers ------------------------------------------------------------------------


class AutocommitPg:
    """One plain statement per row on an asyncpg pool (autocommit)."""

    INSERT = "INSERT INTO rpc ({}) VALUES ({})".format(
        ", ".join(COLUMNS),
        ", ".join(f"${i}" + ("::jsonb" if c in JSON_COLUMNS else "") for i, c in enumerate(COLUMNS, 1)),
    )
    UPDATE = (
        "UPDATE rpc SET status = $3, updated_time = $4, attempts = COALESCE($5, attempts), "
        "response = COALESCE($6::jsonb, response) WHERE id = $1 AND status = $2"
    )

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def insert(self, r: RpcRecord) -> None:
        await self.pool.execute(self.INSERT, *record_row(r))

    async def change(self, c: StatusChange) -> bool:
        resp = None if c.status is not OK else '{"pin": 4, "ok": true}'
        tag = await self.pool.execute(
            self.UPDATE, c.id, c.expected_status.value, c.status.value, c.updated_time, c.attempts, resp
        )
        return tag.endswith(" 1")


class AutocommitSqlite:
    """One plain statement per row on the store's own connection: SQLite's
    autocommit, each statement its own transaction."""

    INSERT = f"INSERT INTO rpc ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    UPDATE = (
        "UPDATE rpc SET status = ?, updated_time = ?, attempts = COALESCE(?, attempts), "
        "response = COALESCE(?, response) WHERE id = ? AND status = ?"
    )

    def __init__(self, store: SqliteStore) -> None:
        # The benchmark borrows the database's one aiosqlite connection and lock.
        self.db = store.db._conn.raw
        self.lock = store.db._lock

    async def insert(self, r: RpcRecord) -> None:
        async with self.lock:
            await self.db.execute(self.INSERT, record_row(r))

    async def change(self, c: StatusChange) -> bool:
        resp = None if c.status is not OK else '{"pin": 4, "ok": true}'
        async with self.lock:
            cur = await self.db.execute(
                self.UPDATE, (c.status.value, c.updated_time, c.attempts, resp, c.id, c.expected_status.value)
            )
        return cur.rowcount == 1


class PerRow:
    """The unbatched Store API: one transaction per call."""

    def __init__(self, store) -> None:
        self.store = store

    async def insert(self, r: RpcRecord) -> None:
        await self.store.write((r,), ())

    async def change(self, c: StatusChange) -> bool:
        return (await self.store.write((), (c,))).applied[0]


# -- phases -------------------------------------------------------------------------


async def run_phase(kind: str, writer, records: list[RpcRecord], writers: int) -> float:
    """Run one phase with ``writers`` concurrent tasks; return seconds."""
    n = len(records)
    ins, chg = writer.insert, writer.change  # bound once, outside the timed loop
    t = int(time.time() * 1000)

    async def worker(k: int) -> None:
        for i in range(k, n, writers):
            r = records[i]
            if kind == "insert":
                await ins(r)
            elif kind == "update":
                for old, new in STEPS:
                    if not await chg(change(r, old, new, t)):
                        raise AssertionError(f"change {old}->{new} of {r.id} not applied")
            else:
                await ins(r)
                for old, new in STEPS:
                    if not await chg(change(r, old, new, t)):
                        raise AssertionError(f"change {old}->{new} of {r.id} not applied")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(min(writers, n))))
    return time.perf_counter() - t0


async def bench_backend(backend: str, args, writers_list: list[int]) -> list[dict]:
    results = []
    for writers in writers_list:
        for mode in args.modes:
            store, cleanup = await open_backend(backend, args)
            try:
                if mode == "autocommit":
                    if backend == "postgresql":
                        pool = await asyncpg.create_pool(
                            args.dsn, min_size=args.pool, max_size=args.pool, server_settings={"search_path": SCHEMA}
                        )
                        writer = AutocommitPg(pool)
                    else:
                        pool = None
                        writer = AutocommitSqlite(store)
                elif mode == "store/row":
                    pool = None
                    writer = PerRow(store)
                else:
                    pool = None
                    writer = GroupCommitStore(store, max_batch=args.max_batch)
                    await writer.open()
                n = args.calls if mode == "group" else min(args.calls, args.row_calls)
                n = max(n, writers)  # every writer gets work
                row = {"backend": backend, "mode": mode, "writers": writers}
                tx0 = store.stats.transactions
                for phase in ("insert", "update"):
                    records = make_records(n)
                    if phase == "update":
                        await store.insert_many(records)  # untimed set-up
                    secs = await run_phase(phase, writer, records, writers)
                    row[f"{phase}_per_s"] = (n if phase == "insert" else 3 * n) / secs
                nl = max(1, n // 2)
                secs = await run_phase("lifecycle", writer, make_records(nl), writers)
                row["lifecycle_per_s"] = nl / secs
                if isinstance(writer, GroupCommitStore):
                    row["avg_batch"] = writer.batch_stats.items / max(1, writer.batch_stats.batches)
                    await writer.drain()
                row["transactions"] = store.stats.transactions - tx0
                if pool is not None:
                    await pool.close()
                results.append(row)
                print(
                    f"  {backend:10} {mode:10} writers={writers:<5} insert {row['insert_per_s']:>9,.0f}/s  "
                    f"update {row['update_per_s']:>9,.0f}/s  lifecycle {row['lifecycle_per_s']:>8,.0f}/s"
                    + (f"  avg batch {row['avg_batch']:.0f}" if "avg_batch" in row else ""),
                    file=sys.stderr,
                    flush=True,
                )
            finally:
                await store.close()
                await cleanup()
    return results


async def open_backend(backend: str, args):
    if backend == "postgresql":
        conn = await asyncpg.connect(args.dsn)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
        await conn.close()
        store = PostgresStore(args.dsn, schema=SCHEMA, min_size=1, max_size=4)

        async def cleanup():
            c = await asyncpg.connect(args.dsn)
            await c.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
            await c.close()

    else:
        tmp = tempfile.mkdtemp(prefix="fleetrpc-bench-")
        path = os.path.join(tmp, "bench.db")
        store = SqliteStore(path, synchronous=args.sqlite_sync)

        async def cleanup():
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.unlink(path + suffix)
                except FileNotFoundError:
                    pass
            os.rmdir(tmp)

    await store.open()
    return store, cleanup


def table(results: list[dict]) -> str:
    lines = [
        "| backend | mode | writers | inserts/s | updates/s | lifecycles/s | avg batch "
        "| lifecycles vs autocommit |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    base = {(r["backend"], r["writers"]): r for r in results if r["mode"] == "autocommit"}
    for r in results:
        b = base.get((r["backend"], r["writers"]))
        ratio = f"{r['lifecycle_per_s'] / b['lifecycle_per_s']:.1f}x" if b else "-"
        lines.append(
            f"| {r['backend']} | {r['mode']} | {r['writers']} | {r['insert_per_s']:,.0f} | "
            f"{r['update_per_s']:,.0f} | {r['lifecycle_per_s']:,.0f} | "
            f"{r.get('avg_batch', 1):.0f} | {ratio} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--dsn", default=os.environ.get("FLEETRPC_PG_DSN"), help="PostgreSQL DSN (default $FLEETRPC_PG_DSN)"
    )
    ap.add_argument("--no-pg", action="store_true", help="skip PostgreSQL")
    ap.add_argument("--no-sqlite", action="store_true", help="skip SQLite")
    ap.add_argument("--writers", default="16,256,1024", help="comma-separated numbers of concurrent writers")
    ap.add_argument("--calls", type=int, default=20_000, help="calls per phase (group commit)")
    ap.add_argument("--row-calls", type=int, default=1_000, help="calls per phase for the per-row modes")
    ap.add_argument("--modes", default="autocommit,store/row,group")
    ap.add_argument("--pool", type=int, default=16, help="connections of the autocommit pool")
    ap.add_argument("--max-batch", type=int, default=1000)
    ap.add_argument("--sqlite-sync", default="FULL", help="SQLite PRAGMA synchronous (FULL, NORMAL)")
    ap.add_argument("--no-uvloop", action="store_true")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()
    args.modes = args.modes.split(",")
    writers_list = [int(w) for w in args.writers.split(",")]
    backends = []
    if not args.no_sqlite:
        backends.append("sqlite")
    if not args.no_pg:
        if not args.dsn:
            ap.error("give --dsn (or set FLEETRPC_PG_DSN), or --no-pg")
        backends.append("postgresql")

    if not args.no_uvloop:
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass

    async def run():
        out = []
        for b in backends:
            out += await bench_backend(b, args, writers_list)
        return out

    results = asyncio.run(run())
    print(table(results))
    for b in backends:
        for w in writers_list:
            rows = {r["mode"]: r for r in results if r["backend"] == b and r["writers"] == w}
            if "group" in rows and "autocommit" in rows:
                g, a = rows["group"], rows["autocommit"]
                print(
                    f"\n{b}, {w} writers: group commit / autocommit = "
                    f"inserts {g['insert_per_s'] / a['insert_per_s']:.1f}x, "
                    f"updates {g['update_per_s'] / a['update_per_s']:.1f}x, "
                    f"lifecycles {g['lifecycle_per_s'] / a['lifecycle_per_s']:.1f}x",
                    end="",
                )
    print()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
