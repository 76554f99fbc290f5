"""A job's per-device rows: the cost of one batch write, by form, in one run.

    python benchmarks/bench_job_rows.py                      # SQLite and PostgreSQL
    python benchmarks/bench_job_rows.py --db sqlite --rows 1000 --rounds 20

Writes batches of ``--rows`` outcome rows of a fresh job, each in its own
transaction, with :meth:`JobRepository.record`'s statement (one JSON array,
an upsert) and, in alternating turns, with the forms it replaced: an
``executemany`` of the same upsert (SQLite's former write), and eight
arrays through ``unnest()`` (PostgreSQL's).  Prints the median CPU of this
process (which is the event loop's in a server) and wall time per row.  On
PostgreSQL the server's CPU is not in it: compare it with
``bench_jobs.py``'s "PostgreSQL CPU us/device".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def _executemany(conn, rows) -> None:
    from fleetrpc.store import jobs as J

    await conn.executemany(
        f"INSERT INTO job_device ({J._DEVICE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) {J._UPSERT}",
        [(r.job_id, r.device_id, r.outcome.value, J._text(r.result), r.error, r.rpc_id, r.start_ts, r.finish_ts)
         for r in rows],
    )


async def _unnest(conn, rows) -> None:
    from fleetrpc.store import jobs as J

    await conn.execute(
        f"INSERT INTO job_device ({J._DEVICE_COLUMNS}) "
        "SELECT u.j, u.d, u.o, u.res, u.e, u.r, u.s, u.f FROM unnest($1::text[], $2::text[], "
        "$3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[]) "
        f"AS u(j, d, o, res, e, r, s, f) {J._UPSERT}",
        [r.job_id for r in rows], [r.device_id for r in rows], [r.outcome.value for r in rows],
        [J._text(r.result) for r in rows], [r.error for r in rows], [r.rpc_id for r in rows],
        [r.start_ts for r in rows], [r.finish_ts for r in rows],
    )


async def run_db(name: str, url: str, rows_per_batch: int, rounds: int) -> dict:
    from fleetrpc.jobs.model import DeviceOutcome, JobDevice
    from fleetrpc.store.db import open_database
    from fleetrpc.store.jobs import JobRepository

    db = await open_database(url)
    try:
        repo = JobRepository(db)
        forms = {"json_upsert": repo._upsert_rows,
                 "executemany" if name == "sqlite" else "unnest": _executemany if name == "sqlite" else _unnest}
        out: dict[str, list[tuple[float, float]]] = {k: [] for k in forms}
        for rnd in range(rounds):
            order = list(forms) if rnd % 2 == 0 else list(reversed(forms))
            for form in order:
                job = str(uuid.uuid4())
                rows = [JobDevice(job_id=job, device_id=f"dev-{i:06d}", outcome=DeviceOutcome.SUCCEEDED,
                                  result={"fw": "1.2", "ok": True}, start_ts=1, finish_ts=2)
                        for i in range(rows_per_batch)]
                c0, w0 = time.process_time(), time.perf_counter()
                async with db.transaction() as conn:
                    await forms[form](conn, rows)
                out[form].append(((time.process_time() - c0) / rows_per_batch * 1e6,
                                  (time.perf_counter() - w0) / rows_per_batch * 1e6))
        return {form: {"cpu_us_per_row": round(statistics.median(x[0] for x in v), 2),
                       "wall_us_per_row": round(statistics.median(x[1] for x in v), 2)} for form, v in out.items()}
    finally:
        await db.close()


async def main_async(args: argparse.Namespace) -> dict:
    from fleetrpc.bench.persistent import _pg_database

    report = {}
    async with contextlib.AsyncExitStack() as es:
        for name in args.db.split(","):
            if name == "sqlite":
                tmp = es.enter_context(tempfile.TemporaryDirectory(prefix="jrows-"))
                url = f"sqlite:///{tmp}/rows.db"
            elif name == "pg":
                url, _settings = await es.enter_async_context(_pg_database(args.dsn, log))
            else:
                raise SystemExit(f"unknown --db {name!r} (sqlite, pg)")
            report[name] = await run_db(name, url, args.rows, args.rounds)
            log(f"{name}: {report[name]}")
    return report


def main() -> None:
    from fleetrpc.bench.persistent import default_dsn

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", default="sqlite,pg", help="sqlite, pg, comma-separated")
    ap.add_argument("--dsn", default=default_dsn(), help="PostgreSQL server to create the run's database on")
    ap.add_argument("--rows", type=int, default=1000, help="rows per batch")
    ap.add_argument("--rounds", type=int, default=20, help="batches per form, alternating")
    args = ap.parse_args()
    report = asyncio.run(main_async(args))
    for name, forms in report.items():
        for form, r in forms.items():
            print(f"{name:6s} {form:12s} CPU {r['cpu_us_per_row']:6.2f} us/row  wall {r['wall_us_per_row']:6.2f} us/row")


if __name__ == "__main__":
    main()
