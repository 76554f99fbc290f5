"""Where the fixed-rate latency tail comes from: stalls, or steady queueing?

Runs fleetrpc alone at a fixed rate against a throwaway tuned Mosquitto and
the simulated fleet (the same rig as ``fleetrpc bench``), records every
call's intended time, and reports:

- how the calls at or above p99 spread over 10 ms windows (a few crowded
  windows = stalls; many windows = queueing);
- the gaps in the dispatcher's own loop (the pacer's 0.5 ms wake-ups that
  came late), each with the CPU the process used during the gap: little CPU
  in a long gap means the process was runnable but not running;
- the process's run-queue wait (``/proc/self/schedstat``) and the machine's
  steal time over the phase.

::

    python benchmarks/latency_tail.py --rate 10000 --devices 1000 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import time

from fleetrpc.bench import runner
from fleetrpc.bench.pacer import Pacer
from fleetrpc.sim.fleet import Fleet, raise_nofile_limit


def _schedstat() -> tuple[int, int]:
    """(run-queue wait ns, timeslices) of this process."""
    with open("/proc/self/schedstat") as f:
        _, wait, slices = f.read().split()
    return int(wait), int(slices)


def _steal_ticks() -> int:
    with open("/proc/stat") as f:
        return int(f.readline().split()[8])


async def measure(rate: float, devices: int, seconds: float, qos: int) -> None:
    raise_nofile_limit()
    cfg = runner.BenchConfig(devices=devices, qos=qos, targets=("fleetrpc",))
    async with runner._broker(None) as (url, _, _):
        fleet = Fleet(url, devices, processes=2, qos=qos, lifetime=120 + seconds)
        await fleet.start()
        target = await runner._open_target("fleetrpc", url, cfg, fleet.device_ids)
        runner.freeze_startup_heap()
        names = fleet.device_ids
        loop = asyncio.get_running_loop()
        clock = time.perf_counter
        records: list[tuple[float, float]] = []  # (intended time, latency)
        ticks: list[tuple[float, float]] = []    # (wall, this thread's CPU) per pacer wake-up
        total, launched, outstanding = int(rate * seconds), 0, 0
        finished = loop.create_future()

        async def one(device: str, intended: float) -> None:
            nonlocal outstanding
            await target.call(device, "echo", {"v": 1}, timeout=10)
            records.append((intended, clock() - intended))
            outstanding -= 1
            if launched >= total and not outstanding and not finished.done():
                finished.set_result(None)

        t0 = clock() + 0.2

        def release() -> None:
            nonlocal launched, outstanding
            now = clock()
            ticks.append((now, time.thread_time()))
            due = min(total, int((now - t0) * rate) + 1) if now >= t0 else 0
            while launched < due:
                outstanding += 1
                loop.create_task(one(names[launched % devices], t0 + launched / rate))
                launched += 1

        wait0, slices0, steal0, cpu0 = *_schedstat(), _steal_ticks(), time.process_time()
        with Pacer(runner.PACER_PERIOD, release):
            await finished
        wait1, slices1, steal1, cpu1 = *_schedstat(), _steal_ticks(), time.process_time()
        await target.close()
        await fleet.stop()

    lat = sorted(l for _, l in records)
    p99 = lat[int(len(lat) * 0.99)]
    print(f"{len(records)} calls at {rate:,.0f}/s: p50 {lat[len(lat) // 2] * 1e3:.3f} ms, "
          f"p99 {p99 * 1e3:.3f} ms, max {lat[-1] * 1e3:.2f} ms")
    windows: dict[int, list[float]] = {}
    for intended, l in records:
        if l >= p99:
            windows.setdefault(int((intended - t0) / 0.01), []).append(l)
    print(f"calls at or above p99: {sum(map(len, windows.values()))} in {len(windows)} of "
          f"{int(seconds / 0.01)} windows of 10 ms")
    for w, ls in sorted(windows.items(), key=lambda kv: -len(kv[1]))[:8]:
        print(f"  t={w * 0.01:5.2f} s: {len(ls):4d} calls, worst {max(ls) * 1e3:.2f} ms")
    gaps = [(a - t0, (b - a) * 1e3, (cb - ca) * 1e3)
            for (a, ca), (b, cb) in zip(ticks, ticks[1:]) if b - a > 3 * runner.PACER_PERIOD]
    print(f"dispatcher loop gaps over {3 * runner.PACER_PERIOD * 1e3:.1f} ms: {len(gaps)}")
    for at, gap, cpu in sorted(gaps, key=lambda g: -g[1])[:8]:
        print(f"  t={at:5.2f} s: {gap:5.2f} ms, of which this process ran {cpu:.2f} ms")
    print(f"run-queue wait {(wait1 - wait0) / 1e6:,.0f} ms over {slices1 - slices0:,} timeslices; "
          f"CPU {(cpu1 - cpu0) * 1e3:,.0f} ms; machine steal {steal1 - steal0} ticks")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=10_000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--qos", type=int, choices=(0, 1), default=1)
    args = ap.parse_args()
    import uvloop

    uvloop.run(measure(args.rate, args.devices, args.seconds, args.qos))


if __name__ == "__main__":
    main()
