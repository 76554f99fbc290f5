"""Device listing with many devices per tenant: one page (default order, by
name, deep offset, text search) and the count, on SQLite or PostgreSQL.

    .venv/bin/python benchmarks/bench_entities.py sqlite:///tmp/bench-entities.db 10000
    .venv/bin/python benchmarks/bench_entities.py postgresql://postgres@127.0.0.1:5432/db 10000
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

from fleetrpc.store.db import open_database
from fleetrpc.store.entities import NULL_UUID, DeviceRepository, TenantRepository


async def main(url: str, n: int) -> None:
    db = await open_database(url)
    try:
        tenants, devices = TenantRepository(db), DeviceRepository(db)
        tenant = await tenants.create(f"bench-{uuid.uuid4().hex[:6]}")
        other = await tenants.create("other")
        now = int(time.time() * 1000)
        rows = [(str(uuid.uuid4()), t.id, NULL_UUID, now + i, f"device-{i:06d}", "sensor", None, None)
                for i in range(n) for t in (tenant, other)]
        await db.executemany(
            "INSERT INTO device (id, tenant_id, customer_id, created_time, name, type, label, additional_info) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", rows)

        async def timed(label, coro_fn, repeat=20):
            await coro_fn()
            t0 = time.perf_counter()
            for _ in range(repeat):
                await coro_fn()
            print(f"  {label:<34} {(time.perf_counter() - t0) / repeat * 1000:7.2f} ms")

        print(f"{db.dialect}: {n} devices in each of 2 tenants")
        await timed("first page of 20 (createdTime)", lambda: devices.list(tenant.id, 20, 0))
        await timed("first page of 20 (name DESC)",
                    lambda: devices.list(tenant.id, 20, 0, sort_property="name", sort_order="DESC"))
        await timed("last page of 20 (createdTime)", lambda: devices.list(tenant.id, 20, n // 20 - 1))
        await timed("text search 'ice-0042' (20)", lambda: devices.list(tenant.id, 20, 0, text_search="ice-0042"))
        await timed("count", lambda: devices.count(tenant.id))
        await timed("by_token (miss)", lambda: devices.by_token("no-such-token"))
    finally:
        await db.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10_000))
