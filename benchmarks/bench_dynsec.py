"""What provisioning one device costs in Mosquitto's dynamic security plugin
as the number of devices grows (the plugin rewrites its whole JSON file on
every command), and what preloading the file costs instead.

    .venv/bin/python benchmarks/bench_dynsec.py 1000 10000
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid

from fleetrpc.broker import Broker
from fleetrpc.broker_auth.dynsec import DynsecProvisioner


async def run(n: int, k: int = 5) -> None:
    broker = Broker("mosquitto", dynsec=True)
    try:
        t0 = time.perf_counter()
        broker.preload_dynsec([(str(uuid.uuid4()), f"token-{i}") for i in range(n)])
        t1 = time.perf_counter()
        await broker.start()
        t2 = time.perf_counter()
        size = os.path.getsize(broker.dir / "dynamic-security.json")
        a = broker.dynsec
        async with DynsecProvisioner(broker.url, a.admin_username, a.admin_password,
                                     server_username=a.server_username, timeout=600) as p:
            t3 = time.perf_counter()
            for i in range(k):
                await p.provision(str(uuid.uuid4()), f"extra-{i}")
            per = (time.perf_counter() - t3) / k
        print(f"{n:>7} devices: preload {t1 - t0:.2f} s, file {size / 1e6:.1f} MB, broker start "
              f"{t2 - t1:.2f} s, provisioning one more device {per * 1000:.0f} ms")
    finally:
        await broker.aclose()


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["1000"]:
        asyncio.run(run(int(arg)))
