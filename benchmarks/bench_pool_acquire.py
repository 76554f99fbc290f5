"""CPU per ``PostgresDatabase.connection()`` (acquire + release of a pooled
connection, no statement): what bounding the wait for a connection costs.

    python benchmarks/bench_pool_acquire.py postgresql://postgres@127.0.0.1:5432/postgres [N]
"""

from __future__ import annotations

import sys
import time

import uvloop

from fleetrpc.store.db import PostgresDatabase


async def measure(dsn: str, n: int) -> float:
    db = PostgresDatabase(dsn, migrate=False, min_size=4, max_size=4)
    await db.open()
    try:
        for _ in range(n // 10):  # warm-up
            async with db.connection():
                pass
        t = time.process_time()
        for _ in range(n):
            async with db.connection():
                pass
        return (time.process_time() - t) / n * 1e6
    finally:
        await db.close()


async def main() -> None:
    dsn = sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/postgres"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    for _ in range(3):
        print(f"{await measure(dsn, n):.2f} us of CPU per connection()")


if __name__ == "__main__":
    uvloop.run(main())
