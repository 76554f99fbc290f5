"""Several `fleetrpc serve` nodes on one Mosquitto and one PostgreSQL
(issue 14): calls/s through 1, 2 and 3 nodes in one run, with each node's
CPU per call and the broker's and PostgreSQL's; then the takeover time after
kill -9 of one of three nodes, over several runs.

    .venv/bin/python benchmarks/bench_cluster.py                 # defaults below
    .venv/bin/python benchmarks/bench_cluster.py --calls 3000 --takeovers 5 --lease 5

Everything shares this machine's cores (2 here): the load generator and the
simulated devices run in this process, the nodes in their own
(tests/faults/serve.py: every part of `fleetrpc serve`, users and devices in
memory), and the broker and PostgreSQL in theirs.  So the calls/s are a
ceiling of the machine, not of fleetrpc; the per-call CPU of each process is
the figure to compare between 1, 2 and 3 nodes.  Calls go round robin over
the nodes' REST APIs (a load balancer), a fixed number per phase with a
fixed concurrency: lightweight two-way calls (answered when the device
replied) and persistent ones (done when every row is SUCCESSFUL).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fleetrpc.broker import start_broker  # noqa: E402
from tests.faults.rig import Api, Device, ServerProcess, device_uuid, rpc_rows  # noqa: E402
from tests.services import PgServer, _pg_execute, find_pg_bindir  # noqa: E402


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and their children."""
    total = 0.0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs = [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for q in procs:
            try:
                t = q.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    return total


class Rig:
    def __init__(self, args, tmp: Path, mqtt_url: str, pg: PgServer, broker_pid: int) -> None:
        self.args, self.tmp, self.mqtt_url, self.pg, self.broker_pid = args, tmp, mqtt_url, pg, broker_pid
        self.devices: list[Device] = []
        self.nodes: list[ServerProcess] = []
        self.apis: list[Api] = []

    async def add_devices(self, n: int) -> None:
        for i in range(n):
            d = Device(device_uuid(1, i), self.mqtt_url)
            await d.connect()
            self.devices.append(d)

    def node(self, k: int, lease: float) -> ServerProcess:
        s = ServerProcess(self.tmp / f"node{k}", mqtt_url=self.mqtt_url, store_url=self.pg.dsn,
                          devices=[d.id for d in self.devices], node_id=f"bench-{k}",
                          sections={"server": {"log_level": "WARNING"},
                                    "cluster": {"lease_ttl_s": lease, "partitions": self.args.partitions}})
        self.nodes.append(s)
        self.apis.append(Api(s))
        return s

    async def cluster_state(self, api: Api) -> dict:
        async with api.session.get(f"{api.server.url}/readyz") as r:
            return (await r.json())["cluster"]

    async def balanced(self, apis: list[Api], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            owned = [(await self.cluster_state(a))["owned"] for a in apis]
            if sum(owned) == self.args.partitions and max(owned) - min(owned) <= 1:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"not balanced: {owned}")
            await asyncio.sleep(0.1)

    # -- load --------------------------------------------------------------

    async def run_calls(self, apis: list[Api], n: int, persistent: bool, running: list[Api] | None = None) -> dict:
        """``n`` calls round robin over ``apis``; CPU measured on every
        node ``running`` (default: ``apis``)."""
        sem = asyncio.Semaphore(self.args.concurrency)
        ids: list[str] = []
        errors = 0
        seq = iter(range(10**9))

        rate = self.args.rate
        start = 0.0  # set once the idle measurement is over

        async def one(i: int) -> None:
            nonlocal errors
            if rate:  # open loop: call i leaves at its time, whatever the others do
                await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            api = apis[i % len(apis)]
            dev = self.devices[i % len(self.devices)]
            params = {"i": next(seq) + 1_000_000 * self.phase}
            async with sem:
                if persistent:
                    rpc_id = await api.persistent(dev.id, params, timeout_ms=10_000, retries=1)
                    if rpc_id is None:
                        errors += 1
                    else:
                        ids.append(rpc_id)
                else:
                    status, _ = await api.twoway(dev.id, params)
                    errors += status != 200

        pids = [a.server.proc.pid for a in (running or apis)]
        # Each node's CPU while idle (lease rounds, scans, keep-alives):
        # subtracted for the "net" figure, which is what a call costs.
        idle0 = [cpu_s([p]) for p in pids]
        await asyncio.sleep(IDLE_S)
        idle = [(cpu_s([p]) - c) / IDLE_S for p, c in zip(pids, idle0)]
        node0 = [cpu_s([p]) for p in pids]
        start = time.perf_counter() + 0.05
        broker0, pg0, me0 = cpu_s([self.broker_pid]), cpu_s([self.pg.pid]), cpu_s([psutil.Process().pid])
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        if persistent:  # done when every call is SUCCESSFUL in the database
            while True:
                rows = await rpc_rows(self.pg.dsn)
                if all(rows.get(i, {}).get("status") in ("SUCCESSFUL", "FAILED", "EXPIRED") for i in ids):
                    errors += sum(rows[i]["status"] != "SUCCESSFUL" for i in ids)
                    break
                await asyncio.sleep(0.05)
        wall = time.perf_counter() - t0
        node_cpu = [cpu_s([p]) - c for p, c in zip(pids, node0)]
        return {
            "calls": n, "errors": errors, "wall_s": wall, "calls_per_s": n / wall, "rate": rate,
            "node_cpu_us_per_call": [c / n * 1e6 for c in node_cpu],
            "nodes_cpu_us_per_call": sum(node_cpu) / n * 1e6,
            "node_idle_cpu": idle,
            "nodes_net_cpu_us_per_call": (sum(node_cpu) - sum(idle) * wall) / n * 1e6,
            "broker_cpu_us_per_call": (cpu_s([self.broker_pid]) - broker0) / n * 1e6,
            "pg_cpu_us_per_call": (cpu_s([self.pg.pid]) - pg0) / n * 1e6,
            "bench_cpu_us_per_call": (cpu_s([psutil.Process().pid]) - me0) / n * 1e6,
        }

    phase = 0


IDLE_S = 3.0


async def main(args) -> None:
    bindir = find_pg_bindir()
    if bindir is None:
        raise SystemExit("no PostgreSQL (initdb, postgres) found")
    results: dict = {"args": vars(args), "throughput": [], "takeover": []}
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        pg = PgServer(bindir)
        await pg.start()
        try:
            await _pg_execute(pg.dsn_for("postgres"), 'CREATE DATABASE "fleetrpc_test"')
            async with start_broker("mosquitto") as broker:
                rig = Rig(args, Path(tmp), broker.url, pg, broker.pid)
                await rig.add_devices(args.devices)
                try:
                    await throughput(rig, args, results)
                    await takeovers(rig, args, results)
                finally:
                    for a in rig.apis:
                        await a.close()
                    for n in rig.nodes:
                        n.kill9()
                    for d in rig.devices:
                        await d.close()
        finally:
            pg.close()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


async def throughput(rig: Rig, args, results: dict) -> None:
    print(f"calls per phase {args.calls}, concurrency {args.concurrency}, rate {args.rate or 'max'}, "
          f"{args.devices} devices, "
          f"{args.partitions} partitions")
    print("| nodes | kind | calls/s | CPU per call: each node | all nodes | all nodes, net of idle | each node idle | broker | PostgreSQL | bench (client + devices) | errors |")
    print("|---:|---|---:|---|---:|---:|---|---:|---:|---:|---:|")
    for k in range(3):
        node = rig.node(k, args.lease)
        await node.start()
        apis = rig.apis[: k + 1]
        await rig.balanced(apis)
        for a in apis:
            await a.login()
        # warm-up: connections, caches, JIT-free but first-call paths
        await rig.run_calls(apis, min(200, args.calls), persistent=False)
        phases = [(apis, False, "lightweight"), (apis, True, "persistent")]
        if k == 2:
            # Three nodes up, every call through one of them: does a node
            # cost more per call because others run beside it?
            phases += [(apis[:1], False, "lightweight, all through node 1"),
                       (apis[:1], True, "persistent, all through node 1")]
        for use, persistent, kind in phases:
            rig.phase += 1
            r = await rig.run_calls(use, args.calls, persistent, running=apis)
            r.update(nodes=k + 1, kind=kind)
            results["throughput"].append(r)
            print(f"| {k + 1} | {r['kind']} | {r['calls_per_s']:,.0f} | "
                  f"{' / '.join(f'{c:.0f}' for c in r['node_cpu_us_per_call'])} us | "
                  f"{r['nodes_cpu_us_per_call']:.0f} us | {r['nodes_net_cpu_us_per_call']:.0f} us | "
                  f"{' / '.join(f'{c * 100:.1f} %' for c in r['node_idle_cpu'])} | "
                  f"{r['broker_cpu_us_per_call']:.0f} us | "
                  f"{r['pg_cpu_us_per_call']:.0f} us | {r['bench_cpu_us_per_call']:.0f} us | {r['errors']} |",
                  flush=True)


async def takeovers(rig: Rig, args, results: dict) -> None:
    """kill -9 one node of three (each in turn), time until the two others
    own every partition (their /readyz), restart it, wait for balance."""
    times: list[float] = []
    if not args.takeovers:
        return
    for run in range(args.takeovers):
        k = run % 3
        victim, api = rig.nodes[k], rig.apis[k]
        survivors = [a for a in rig.apis[:3] if a is not api]
        killed = time.monotonic()
        victim.kill9()
        while True:
            owned = [(await rig.cluster_state(a))["owned"] for a in survivors]
            if sum(owned) == args.partitions:
                break
            await asyncio.sleep(0.02)
        took = time.monotonic() - killed
        times.append(took)
        print(f"takeover {run + 1}: {took:.2f} s (lease {args.lease:g} s)", flush=True)
        await victim.start()
        await rig.balanced(rig.apis[:3])
    results["takeover"] = times
    print(f"takeover after kill -9, {len(times)} runs, lease {args.lease:g} s: "
          f"min {min(times):.2f} / median {statistics.median(times):.2f} / max {max(times):.2f} s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=3000, help="calls per phase")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rate", type=float, default=0.0,
                    help="calls/s sent at a fixed rate (0: as fast as --concurrency allows)")
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--partitions", type=int, default=1024)
    ap.add_argument("--lease", type=float, default=5.0, help="cluster.lease_ttl_s")
    ap.add_argument("--takeovers", type=int, default=5)
    ap.add_argument("--json", default=None, help="write the results here")
    asyncio.run(main(ap.parse_args()))
