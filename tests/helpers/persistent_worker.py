"""A persistent-RPC server process for the crash test.

    python -m tests.helpers.persistent_worker MQTT_URL STORE_URL NODE COUNT DEVICE...

Recovers what the store holds, submits COUNT persistent calls round-robin to
the devices, printing ``ID <rpc id>`` once each id was returned (i.e. its row
committed), then ``UNFINISHED <n>`` every 100 ms until nothing is unfinished.
"""

import asyncio
import sys

from fleetrpc.config import Settings
from fleetrpc.dispatch import Dispatcher
from fleetrpc.rpc.persistent import PersistentRpc
from fleetrpc.runner import run
from fleetrpc.store import open_store


async def main(mqtt_url: str, store_url: str, node: str, count: int, devices: list[str]) -> None:
    store = await open_store(store_url, group_commit=True)
    d = Dispatcher(Settings(mqtt_url=mqtt_url, node_id=node, min_timeout_ms=0, ttl_enabled=False))
    await d.start()
    engine = PersistentRpc(d, store)
    print("RECOVERED", await engine.start(), flush=True)

    async def one(i: int) -> None:
        rpc_id = await engine.call(devices[i % len(devices)], "work", {"i": i}, timeout_ms=1000,
                                   retries=3, expiration_time=None)
        print("ID", rpc_id, flush=True)

    async def submit() -> None:
        for start in range(0, count, 50):
            await asyncio.gather(*(one(i) for i in range(start, min(count, start + 50))))

    task = asyncio.ensure_future(submit())
    while not task.done() or engine.unfinished:
        print("UNFINISHED", engine.unfinished, flush=True)
        await asyncio.sleep(0.1)
    await engine.flush()
    print("DONE", flush=True)
    await engine.close()
    await d.close()
    await store.close()


if __name__ == "__main__":
    url, store_url, node, count, *devices = sys.argv[1:]
    run(main(url, store_url, node, int(count), devices))
