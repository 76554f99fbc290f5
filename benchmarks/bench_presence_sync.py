"""What ``Dispatcher.start()`` costs while it waits for the broker's
retained presence (docs/reliability.md, docs/protocol.md).

    python benchmarks/bench_presence_sync.py --url mqtt://127.0.0.1:1883 --devices 20000,100000

For each fleet size: retained "online" presences for that many devices
under a fresh prefix, a check that the broker holds them all (a watcher
subscribes and counts), then ``--starts`` dispatchers started one after
another, each timed from ``start()`` to its return, with how many devices
it knew online when it returned; the retained messages are cleared at the
end.  The wait is bounded (5 s); a start that gave up says so in
``timeouts``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import uvloop

from fleetrpc import Dispatcher, Settings
from fleetrpc.transport.mqtt import MqttTransport
from fleetrpc.wire import presence_topic


async def _retain(pub: MqttTransport, prefix: str, n: int, payload: bytes) -> None:
    for i in range(n):
        pub.publish(presence_topic(prefix, f"dev-{i}"), payload, 1, retain=True)
        if i % 5000 == 0:
            await asyncio.sleep(0)  # let the window drain


async def measure(url: str, n: int, starts: int) -> None:
    prefix = f"psync{uuid.uuid4().hex[:6]}"
    pub = MqttTransport(url)
    await pub.start()
    try:
        await _retain(pub, prefix, n, b'{"status":"online"}')
        seen: set[str] = set()
        watcher = MqttTransport(url)
        watcher.on_message = lambda topic, payload, props: seen.add(topic)
        await watcher.start([(f"{prefix}/d/+/presence", 0)])
        deadline = time.monotonic() + 60
        while len(seen) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await watcher.close()
        if len(seen) < n:
            raise SystemExit(f"the broker holds {len(seen)} of {n} presences after 60 s")
        for k in range(starts):
            d = Dispatcher(Settings(mqtt_url=url, prefix=prefix, node_id=f"psync{k}",
                                    presence_max_devices=max(n, 100_000)))
            t0 = time.perf_counter()
            await d.start()
            elapsed = time.perf_counter() - t0
            known = sum(d.is_online(f"dev-{i}") for i in range(n))
            s = d.stats
            print(f"devices={n} start {elapsed * 1000:.0f} ms  known at return {known}/{n}  "
                  f"synced={s.presence_synced} timeouts={s.presence_sync_timeouts}")
            await d.close()
    finally:
        await _retain(pub, prefix, n, b"")  # leave the broker as found
        await asyncio.sleep(1)
        await pub.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="mqtt://127.0.0.1:1883", help="the broker (its retained store is used)")
    p.add_argument("--devices", default="20000,100000", help="comma-separated fleet sizes")
    p.add_argument("--starts", type=int, default=2)
    args = p.parse_args()
    for n in (int(x) for x in args.devices.split(",")):
        uvloop.run(measure(args.url, n, args.starts))


if __name__ == "__main__":
    main()
