"""Devices connected directly to fleetrpc's endpoint vs through Mosquitto.

In one run, the same lean simulator (``fleetrpc.sim``, worker processes)
answers a closed loop of two-way calls from one Dispatcher:

- ``broker``: dispatcher -> Mosquitto (tuned, throwaway) -> devices;
- ``direct``: dispatcher with a :class:`DeviceEndpoint` transport <- devices.

For each it reports round trips/s and CPU per round trip of the dispatcher
process (which includes the endpoint in the direct case), of the broker, and
of the simulator.  Then the memory each idle direct connection costs the
process (RSS delta after connecting N idle devices; kernel socket buffers
are not in RSS and are not counted), and the CPU of their keepalives.

Short runs only (the machine is shared)::

    python benchmarks/bench_endpoint.py
    python benchmarks/bench_endpoint.py --devices 1000 --seconds 5 --qos 1 --idle 5000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import sys
import time
import tracemalloc

import uvloop

from fleetrpc import Dispatcher, Settings
from fleetrpc.bench.cpu import process_cpu
from fleetrpc.broker import Broker
from fleetrpc.sim.fleet import Behaviour, Fleet
from fleetrpc.transport.endpoint import DeviceEndpoint, EndpointSettings


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _by_client_id(username: str, password: str | None, client_id: str) -> str:
    # the simulator's devices all log in as "bench"; their client id is the device id
    return client_id if username == "bench" else None


async def _load(d: Dispatcher, devices: list[str], seconds: float, concurrency: int,
                others: dict[str, int]) -> dict[str, float]:
    """Closed loop: ``concurrency`` callers, each calling a random device
    again as soon as its previous call returned."""
    done = 0
    errors = 0
    stop = False
    call = d.call

    async def caller(seed: int) -> None:
        nonlocal done, errors
        rng = random.Random(seed)
        pick = devices.__getitem__
        n = len(devices)
        while not stop:
            try:
                await call(pick(int(rng.random() * n)), "echo", {"i": 1}, timeout=10)
                done += 1
            except Exception:
                errors += 1

    # warm-up, then the measured window
    tasks = [asyncio.ensure_future(caller(k)) for k in range(concurrency)]
    await asyncio.sleep(min(1.0, seconds / 4))
    done0 = done
    t_0 = os.times()
    others0 = {name: process_cpu(pid) or 0.0 for name, pid in others.items()}
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - t0
    n = done - done0
    t_1 = os.times()
    user, system = t_1.user - t_0.user, t_1.system - t_0.system
    cpu = user + system
    others_cpu = {name: (process_cpu(pid) or 0.0) - others0[name] for name, pid in others.items()}
    stop = True
    await asyncio.gather(*tasks)
    per = (lambda c: c / n * 1e6) if n else (lambda c: float("nan"))
    # user = Python and the compiled core; system = the kernel's side of our
    # sockets (a loopback send also runs the receiver's TCP input)
    out = {"round_trips_per_s": n / elapsed, "dispatcher_us_per_rt": per(cpu),
           "dispatcher_user_us_per_rt": per(user), "dispatcher_sys_us_per_rt": per(system),
           "errors": errors}
    for name, c in others_cpu.items():
        out[f"{name}_us_per_rt"] = c / n * 1e6 if n else float("nan")
    return out


async def run_broker(args) -> dict:
    broker = Broker("mosquitto")
    await broker.start()
    try:
        fleet = Fleet(broker.url, args.devices, processes=args.processes, qos=args.qos,
                      behaviour=Behaviour(presence=True))
        async with fleet:
            d = Dispatcher(Settings(mqtt_url=broker.url, node_id="bench", qos=args.qos, min_timeout_ms=0))
            await d.start()
            try:
                others = {"broker": broker.pid}
                others.update({f"sim{k}": pid for k, pid in enumerate(fleet.pids)})
                await _wait_online(d, fleet.device_ids)
                return await _load(d, fleet.device_ids, args.seconds, args.concurrency, others)
            finally:
                await d.close()
    finally:
        await broker.stop()


async def run_direct(args, write_batch_above: int = 0) -> dict:
    ep = DeviceEndpoint(EndpointSettings(host="127.0.0.1", port=0, max_inflight=1000,
                                         write_batch_above=write_batch_above,
                                         write_batch_delay=args.write_batch_delay),
                        authenticate=_by_client_id)
    d = Dispatcher(Settings(node_id="bench", qos=args.qos, min_timeout_ms=0), transport=ep)
    await d.start()
    try:
        url = f"mqtt://bench@127.0.0.1:{ep.ports['tcp']}"
        fleet = Fleet(url, args.devices, processes=args.processes, qos=args.qos, behaviour=Behaviour(presence=True))
        async with fleet:
            others = {f"sim{k}": pid for k, pid in enumerate(fleet.pids)}
            await _wait_online(d, fleet.device_ids)
            return await _load(d, fleet.device_ids, args.seconds, args.concurrency, others)
    finally:
        await d.close()


async def run_idle(args) -> dict:
    """Memory per idle direct connection, and the CPU of their keepalives."""
    ep = DeviceEndpoint(EndpointSettings(host="127.0.0.1", port=0, max_connections=args.idle + 10),
                        authenticate=_by_client_id)
    d = Dispatcher(Settings(node_id="bench", min_timeout_ms=0), transport=ep)
    await d.start()
    try:
        gc.collect()
        rss0 = _rss()
        tracemalloc.start()
        traced0 = tracemalloc.get_traced_memory()[0]
        url = f"mqtt://bench@127.0.0.1:{ep.ports['tcp']}"
        fleet = Fleet(url, args.idle, processes=args.processes, keepalive=args.keepalive,
                      behaviour=Behaviour(presence=False))
        async with fleet:
            await _wait_online(d, fleet.device_ids, timeout=120)
            gc.collect()
            traced = tracemalloc.get_traced_memory()[0] - traced0
            tracemalloc.stop()
            rss1 = _rss()
            cpu0 = time.process_time()
            await asyncio.sleep(args.idle_seconds)
            cpu = time.process_time() - cpu0
            return {
                "connections": ep.connection_count,
                "rss_bytes_per_connection": (rss1 - rss0) / args.idle,
                # Python objects only (session, reader, transport, tables); libuv's
                # C handle (~0.3 KiB) is in RSS but not here
                "python_bytes_per_connection": traced / args.idle,
                "keepalive": args.keepalive,
                "cpu_ms_per_s_idle": cpu / args.idle_seconds * 1e3,
            }
    finally:
        await d.close()


async def _wait_online(d: Dispatcher, devices: list[str], timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not all(d.is_online(x) for x in devices):
        if time.monotonic() > end:
            missing = sum(1 for x in devices if not d.is_online(x))
            raise RuntimeError(f"{missing} devices not online")
        await asyncio.sleep(0.05)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--qos", type=int, default=1, choices=(0, 1))
    p.add_argument("--concurrency", type=int, default=1000, help="calls in flight (closed loop)")
    p.add_argument("--processes", type=int, default=1, help="simulator worker processes")
    p.add_argument("--idle", type=int, default=5000, help="idle direct connections for the memory figure (0: skip)")
    p.add_argument("--keepalive", type=int, default=60)
    p.add_argument("--idle-seconds", type=float, default=5.0)
    p.add_argument("--write-batch-above", type=int, default=0,
                   help="also run the direct path with this write_batch_above")
    p.add_argument("--write-batch-delay", type=float, default=0.001)
    p.add_argument("--only", choices=("broker", "direct"), help="run one path only (profiling)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    results: dict[str, dict] = {}

    async def run() -> None:
        if args.idle:  # first, while the process heap is fresh
            results["idle"] = await run_idle(args)
        if args.only in (None, "broker"):
            results["broker"] = await run_broker(args)
        if args.only in (None, "direct"):
            results["direct"] = await run_direct(args)
            if args.write_batch_above:
                results["batched"] = await run_direct(args, args.write_batch_above)

    uvloop.run(run())
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return
    print(f"devices={args.devices} qos={args.qos} concurrency={args.concurrency} seconds={args.seconds}")
    for name in ("broker", "direct", "batched"):
        r = results.get(name)
        if r is None:
            continue
        extra = "  ".join(f"{k}={v:.1f}" for k, v in r.items()
                          if k.endswith("_us_per_rt") and not k.startswith("dispatcher"))
        print(f"{name:>7}: {r['round_trips_per_s']:9.0f} rt/s  dispatcher {r['dispatcher_us_per_rt']:5.1f} us/rt "
              f"(user {r['dispatcher_user_us_per_rt']:.1f}, sys {r['dispatcher_sys_us_per_rt']:.1f})  "
              f"{extra}  errors={r['errors']}")
    if "broker" in results and "direct" in results:
        ratio = results["direct"]["round_trips_per_s"] / results["broker"]["round_trips_per_s"]
        print(f"direct / broker: {ratio:.2f}x")
        if "batched" in results:
            ratio = results["batched"]["round_trips_per_s"] / results["broker"]["round_trips_per_s"]
            print(f"batched / broker: {ratio:.2f}x")
    if "idle" in results:
        r = results["idle"]
        print(f"   idle: {r['connections']} connections, {r['rss_bytes_per_connection']:.0f} B RSS each "
              f"({r['python_bytes_per_connection']:.0f} B of Python objects), "
              f"keepalive {r['keepalive']} s: {r['cpu_ms_per_s_idle']:.2f} ms CPU per s")


if __name__ == "__main__":
    main()
