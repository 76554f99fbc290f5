"""WAL bytes PostgreSQL writes per persistent-RPC lifecycle (INSERT QUEUED,
UPDATE SENT, UPDATE SUCCESSFUL with a response), in 500-row batches as the
group-commit store writes them, on the rpc table's own schema: the figure
docs/scaling.md uses for PostgreSQL's write rate.

    .venv/bin/python benchmarks/wal_per_lifecycle.py postgresql://postgres@127.0.0.1:5432/scratch
(the database is migrated if needed; rows are added to its rpc table)
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid

from fleetrpc.store.db import open_database

TENANT = "13814000-1dd2-11b2-8080-808080808080"
INSERT = (
    "INSERT INTO rpc (id, tenant_id, device_id, created_time, expiration_time, method, params, oneway, "
    "retries, timeout_ms, status, updated_time) VALUES ($1, $5, $2, $3::bigint, $3::bigint + 60000, "
    "'setValue', $4, false, 0, 10000, 'QUEUED', $3::bigint)"
)


async def main(dsn: str, n: int = 20_000, batch: int = 500) -> None:
    db = await open_database(dsn)
    devices = [str(uuid.uuid4()) for _ in range(1000)]
    async with db.connection() as conn:
        raw = conn.raw
        for phase in ("warm-up", "measured"):
            ids = [str(uuid.uuid4()) for _ in range(n)]
            now = int(time.time() * 1000)
            start = await raw.fetchval("SELECT pg_current_wal_lsn()")
            for i in range(0, n, batch):
                part = ids[i:i + batch]
                params = json.dumps({"pin": 7, "value": True})
                async with raw.transaction():
                    await raw.executemany(INSERT, [(x, devices[j % 1000], now, params, TENANT) for j, x in enumerate(part)])
                async with raw.transaction():
                    await raw.execute("UPDATE rpc SET status = 'SENT', attempts = 1, updated_time = $2 "
                                      "WHERE id = ANY($1::text[])", part, now)
                async with raw.transaction():
                    await raw.execute("UPDATE rpc SET status = 'SUCCESSFUL', response = $2::jsonb, updated_time = $3 "
                                      "WHERE id = ANY($1::text[])", part, json.dumps({"ok": True, "value": 42}), now)
            end = await raw.fetchval("SELECT pg_current_wal_lsn()")
            wal = float(await raw.fetchval("SELECT pg_wal_lsn_diff($1, $2)", end, start))
            print(f"{phase}: {wal / n:,.0f} WAL bytes per lifecycle ({n:,} lifecycles, batches of {batch})")
    await db.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
