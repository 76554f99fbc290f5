"""The persistent engine's own CPU per lifecycle, without a network or a database.

What ``fleetrpc bench --persistent`` charges to the fleetrpc process, minus
what is not the engine's: a loopback transport stands in for the broker and
the device (it acks each request and replies to it one loop turn later, as
an acking device does), and an in-memory store stands in for the database
behind the real :class:`~fleetrpc.store.batching.GroupCommitStore` (each
batch "commits" after ``--commit-ms``, so batches form as they do against
PostgreSQL).  So what is measured is the dispatcher, the engine (status
bookkeeping, events, durable waits), the group-commit queue, and the thin
caller loop of the real benchmark::

    rpc_id = await engine.call(device, "echo", params)      # QUEUED committed
    await engine.wait(rpc_id, timeout, durable=True)         # SUCCESSFUL committed

Usage::

    python benchmarks/bench_persistent_engine.py                  # compiled and pure core
    python benchmarks/bench_persistent_engine.py --variant c --lifecycles 100000
    python benchmarks/bench_persistent_engine.py --events         # an event sink that builds every body
    # instruction counts (repeatable on a busy machine):
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \\
        python benchmarks/bench_persistent_engine.py --child --lifecycles 20000 --commit-ms 0

The figure is ``time.process_time()`` over the timed phase divided by the
lifecycles; a warm-up phase runs first.  The cyclic GC runs at Python's
default thresholds (as in ``fleetrpc bench --persistent``), and the time it
took is reported beside the total.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_dispatcher  # noqa: E402  (its Loopback transport)


class Loopback(bench_dispatcher.Loopback):
    """Stands in for the broker and an acking device: each request gets its
    ack and its reply one loop turn after it was published (the dispatcher
    benchmark's loopback, which only replies, plus the ack)."""

    reply = b'{"ok":true}'

    def flush(self) -> None:
        self.handle = None
        out, self.out = self.out, []
        on_message, reply = self.on_message, self.reply
        for topic in out:
            on_message(topic.replace("/req/", "/ack/"), b"", None)
            on_message(topic.replace("/req/", "/res/"), reply, None)


def memory_store(commit_s: float):
    """A store that keeps nothing: every write "commits" after ``commit_s``."""
    from fleetrpc.store.base import Page, Store, WriteResult

    class MemoryStore(Store):
        backend = "memory"

        def __init__(self) -> None:
            super().__init__(None)
            self.writes = 0

        async def open(self) -> None:
            pass

        async def close(self) -> None:
            pass

        async def write(self, inserts=(), changes=(), *, atomic=False):
            if commit_s > 0:
                await asyncio.sleep(commit_s)
            else:
                await asyncio.sleep(0)
            self.writes += len(inserts) + len(changes)
            self.stats.transactions += 1
            return WriteResult(inserted=[True] * len(inserts), applied=[True] * len(changes))

        async def delete(self, rpc_id, tenant_id):
            return None

        async def get(self, rpc_id, tenant_id):
            return None

        async def list_by_device(self, device_id, *, tenant_id, **kw):
            return Page.build([], 0, 10, 0)

        async def load_unfinished(self):
            return []

        async def claim_unfinished(self, node_id):
            return []

        async def purge_terminal(self, older_than_ms, tenant_id):
            return 0

        async def set_tenant_ttl(self, tenant_id, days):
            pass

        async def get_tenant_ttl(self, tenant_id):
            return None

        async def purge_expired(self, now_ms, default_days):
            return 0

    return MemoryStore()


async def measure(lifecycles: int, callers: int, devices: int, commit_s: float,
                  events: bool, warmup: int) -> dict:
    from fleetrpc.config import Settings
    from fleetrpc.dispatch import Dispatcher
    from fleetrpc.rpc.persistent import PersistentRpc
    from fleetrpc.rpc.status import RpcStatus
    from fleetrpc.store.batching import GroupCommitStore

    # As in fleetrpc bench --persistent (bench/persistent.py).
    settings = Settings(node_id="bench", presence=False, ttl_enabled=False, min_timeout_ms=0,
                        queue_cap=max(100, 4 * (callers // devices + 1)),
                        inflight_window=max(20_000, 2 * callers))
    d = Dispatcher(settings, transport=Loopback())
    await d.start()
    store = GroupCommitStore(memory_store(commit_s))
    await store.open()
    emitted = 0

    def sink(event_type: str, body: dict) -> None:
        nonlocal emitted
        emitted += 1

    engine = PersistentRpc(d, store, emit=sink if events else None)
    await engine.start()
    names = [f"dev-{i:05d}" for i in range(devices)]
    params = {"i": 1}
    SUCCESSFUL = RpcStatus.SUCCESSFUL

    async def phase(n: int) -> tuple[int, float, float]:
        done = 0
        bad = 0
        call, wait = engine.call, engine.wait

        async def caller(k: int) -> None:
            nonlocal done, bad
            i = k
            while done + bad < n:
                rpc_id = await call(names[i % devices], "echo", params, timeout_ms=120_000)
                rec = await wait(rpc_id, 300.0, durable=True)
                if rec.status is SUCCESSFUL:
                    done += 1
                else:
                    bad += 1
                i += callers

        gc0 = _gc_seconds()
        c0 = time.process_time()
        await asyncio.gather(*(caller(k) for k in range(callers)))
        cpu = time.process_time() - c0
        if bad:
            raise SystemExit(f"{bad} lifecycles did not end SUCCESSFUL (too slow for the timeouts?)")
        return done, cpu, _gc_seconds() - gc0

    await phase(warmup)
    done, cpu, gc_s = await phase(lifecycles)
    writes = store.store.writes
    batches = store.batch_stats.batches
    await engine.close()
    await store.close()
    await d.close()
    return {
        "lifecycles": done,
        "cpu_us_per_lifecycle": cpu / done * 1e6,
        "gc_us_per_lifecycle": gc_s / done * 1e6,
        "writes_per_batch": writes / max(batches, 1),
    }


_gc_time = [0.0]
_gc_t0 = [0.0]


def _gc_callback(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_t0[0] = time.process_time()
    else:
        _gc_time[0] += time.process_time() - _gc_t0[0]


def _gc_seconds() -> float:
    return _gc_time[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lifecycles", type=int, default=100_000)
    ap.add_argument("--warmup", type=int, default=5000, help="lifecycles before the timed phase")
    ap.add_argument("--callers", type=int, default=1000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--commit-ms", type=float, default=1.0,
                    help="how long a batch takes to commit (default %(default)s)")
    ap.add_argument("--events", action="store_true", help="an event sink (every event body built)")
    ap.add_argument("--variant", choices=("c", "py", "both"), default="both")
    ap.add_argument("--no-uvloop", action="store_true")
    ap.add_argument("--no-gc", action="store_true", help="cyclic GC off (for profiles only)")
    ap.add_argument("--child", action="store_true", help="run one measurement in this process")
    args = ap.parse_args()
    if args.child:
        gc.callbacks.append(_gc_callback)
        if args.no_gc:
            gc.disable()
        coro = measure(args.lifecycles, args.callers, args.devices, args.commit_ms / 1000.0, args.events,
                       args.warmup)
        if args.no_uvloop:
            r = asyncio.run(coro)
        else:
            import uvloop

            r = uvloop.run(coro)
        print(f"{r['cpu_us_per_lifecycle']:.2f} {r['gc_us_per_lifecycle']:.2f} {r['writes_per_batch']:.1f}")
        return
    variants = {"c": ("compiled", {}), "py": ("pure", {"FLEETRPC_NO_EXTENSIONS": "1"})}
    chosen = ("c", "py") if args.variant == "both" else (args.variant,)
    print(f"CPU per persistent lifecycle, loopback transport, in-memory store "
          f"(commit {args.commit_ms} ms), {args.callers} callers, {args.devices} devices"
          f"{', events' if args.events else ''}:")
    for v in chosen:
        name, env = variants[v]
        cmd = [sys.executable, __file__, "--child", "--lifecycles", str(args.lifecycles),
               "--callers", str(args.callers), "--devices", str(args.devices),
               "--commit-ms", str(args.commit_ms), "--warmup", str(args.warmup)]
        if args.events:
            cmd.append("--events")
        if args.no_uvloop:
            cmd.append("--no-uvloop")
        out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=True)
        cpu, gc_us, per_batch = out.stdout.split()
        print(f"  {name:9s} {float(cpu):6.1f} us  (cyclic GC {float(gc_us):.1f} us; "
              f"{float(per_batch):.0f} writes per batch)")


if __name__ == "__main__":
    main()
