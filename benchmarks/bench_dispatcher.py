"""The dispatcher's own cost per call, without a network.

A loopback transport answers every request on the next loop turn, so what is
measured is the dispatcher (call, pending table, wheel, queues, codec,
completion) plus one awaiting caller task per call.  Runs the compiled core
and the pure twins, each in a fresh process::

    python benchmarks/bench_dispatcher.py            # both variants
    python benchmarks/bench_dispatcher.py --calls 500000
    python benchmarks/bench_dispatcher.py --loop asyncio
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time


class Loopback:
    """Stands in for the broker: replies to each request one loop turn later."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.handle = None

    async def start(self, filters) -> None:
        pass

    async def close(self) -> None:
        pass

    def publish(self, topic, payload, qos=1, retain=False, token=-1, properties=None) -> None:
        self.out.append(topic)
        if self.handle is None:
            self.handle = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.handle = None
        out, self.out = self.out, []
        for topic in out:
            self.on_message(topic.replace("/req/", "/res/"), b'{"i":1}', None)


async def measure(calls: int, window: int) -> float:
    from fleetrpc.config import Settings
    from fleetrpc.dispatch import Dispatcher

    d = Dispatcher(Settings(node_id="bench", min_timeout_ms=0, presence=False), transport=Loopback())
    await d.start()
    names = [f"dev-{i:05d}" for i in range(1000)]
    done = 0

    async def caller(k: int) -> None:
        nonlocal done
        i = k
        call = d.call
        while done < calls:
            await call(names[i % 1000], "echo", {"i": 1}, timeout=10)
            done += 1
            i += window

    c0 = time.process_time()
    await asyncio.gather(*(caller(k) for k in range(window)))
    cpu = time.process_time() - c0
    await d.close()
    return cpu / done * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--window", type=int, default=2000)
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.loop == "uvloop":
            import uvloop

            run = uvloop.run
        else:
            run = asyncio.run
        print(f"{run(measure(args.calls, args.window)):.2f}")
        return
    results = {}
    for name, env in (("compiled", {}), ("pure", {"FLEETRPC_NO_EXTENSIONS": "1"})):
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--calls", str(args.calls), "--window", str(args.window),
             "--loop", args.loop],
            env={**os.environ, **env}, capture_output=True, text=True, check=True,
        )
        results[name] = float(out.stdout.strip())
    print(f"CPU per call, loopback transport, {args.window} concurrent callers, {args.loop}:")
    for name, us in results.items():
        print(f"  {name:9s} {us:6.2f} us   ({us / results['compiled']:.2f}x compiled)")


if __name__ == "__main__":
    main()
