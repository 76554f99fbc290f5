"""What starting ``fleetrpc serve`` on its own Mosquitto costs with N devices
in the database: reading their tokens and preloading the dynamic security
plugin, the broker's start, the whole start; and what a full resync of the
preloaded broker (``DynsecProvisioner.sync``, reads only) would add.

    .venv/bin/python benchmarks/bench_serve_start.py 1000 10000
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

from fleetrpc.config import load_server_settings
from fleetrpc.server import Server, ServerContext
from fleetrpc.store.db import open_database
from fleetrpc.store.entities import DeviceRepository, TenantRepository, UserRepository


async def seed(url: str, n: int) -> None:
    db = await open_database(url)
    try:
        devices = DeviceRepository(db)
        tenant = await TenantRepository(db, devices=devices).create("T")
        await UserRepository(db).create(tenant.id, None, "tenant@example.com", "TENANT_ADMIN", password="x" * 12)
        for i in range(n):
            await devices.create(tenant.id, f"device-{i:06d}")
    finally:
        await db.close()


async def run(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        await seed(url, n)
        settings = load_server_settings(env={}, overrides={
            "server": {"data_dir": tmp, "broker": "mosquitto"}, "store": {"url": url},
            "http": {"port": 0, "access_log": False}, "jwt": {"secret": "k" * 64},
        })
        ctx = ServerContext(settings)
        server = Server(settings, ctx=ctx)
        t0 = time.perf_counter()
        await server.start()
        started = time.perf_counter() - t0
        try:
            p = ctx.provisioner
            t1 = time.perf_counter()
            report = await p.sync(ctx.devices.all_credentials())
            resync = time.perf_counter() - t1
            assert report.created == report.removed == 0, report
        finally:
            await server.stop()
    print(f"{n:>7} devices: server start {started:.2f} s (preload and broker included); "
          f"a resync of the preloaded broker would add {resync:.2f} s")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    for arg in sys.argv[1:] or ["1000"]:
        asyncio.run(run(int(arg)))
