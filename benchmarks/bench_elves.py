"""Elves sendSync fanned out to many agents, end to end over a real Mosquitto.

    python benchmarks/bench_elves.py                       # 1000 in-process, 100 script
    python benchmarks/bench_elves.py --agents 1000 --script-agents 100 --rounds 5 --json out.json

An app (ElvesClient) sends ``sendSync`` with a list of agent IPs to the
server (a Dispatcher with the Elves services, SQLite task log), which runs
it through the dispatcher's broadcast path on every agent and answers once
every agent did.  Two workloads:

- ``inproc``: a trivial in-process function (``bench.noop``) on ``--agents``
  agents;
- ``script``: a real script app (a Python worker started per call, result
  read from its output) on ``--script-agents`` agents.

The agents are ElvesAgents (each its own MQTT connection, the device SDK)
in one worker process; the figures are the whole call as the app sees it
(envelope in, every agent's result logged, reply out), per round.  The
machine is shared: keep runs short.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

WORKER = """\
import sys
print("<ElvesWFlag>true</ElvesWFlag><ElvesWResult>%s</ElvesWResult>" % sys.argv[2])
"""


def ip_of(i: int) -> str:
    return f"10.{100 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"


# -- the agents' process ---------------------------------------------------------


async def run_agents(url: str, prefix: str, count: int, root: str) -> None:
    from fleetrpc.agent import ElvesAgent

    agents = []
    for start in range(0, count, 100):
        batch = []
        for i in range(start, min(count, start + 100)):
            a = ElvesAgent(ip_of(i), url, root=root, prefix=prefix, heartbeat_interval=600)
            a.add_function("bench", "noop", lambda param: (True, "ok"))
            batch.append(a)
        await asyncio.gather(*(a.start() for a in batch))
        agents.extend(batch)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes it
    await asyncio.gather(*(a.close() for a in agents), return_exceptions=True)


# -- the server and the app ------------------------------------------------------


async def bench(args) -> dict:
    from fleetrpc.broker import start_broker
    from fleetrpc.config import Settings
    from fleetrpc.dispatch import Dispatcher
    from fleetrpc.runner import use_uvloop  # noqa: F401
    from fleetrpc.services.elves import NULL_TENANT, ElvesSettings
    from fleetrpc.services.elves.client import ElvesClient
    from fleetrpc.services.elves.service import ElvesService
    from fleetrpc.store.db import open_database

    results: dict = {"agents": args.agents, "script_agents": args.script_agents, "rounds": args.rounds}
    total = max(args.agents, args.script_agents)
    with tempfile.TemporaryDirectory(prefix="bench-elves-") as tmp:
        app_dir = Path(tmp) / "apps" / "benchapp"
        app_dir.mkdir(parents=True)
        (app_dir / "worker.py").write_text(WORKER)
        async with start_broker("mosquitto") as broker:
            prefix = "bench"
            d = Dispatcher(Settings(mqtt_url=broker.url, node_id="bench-server", prefix=prefix, min_timeout_ms=0))
            await d.start()
            db = await open_database(f"sqlite:///{tmp}/elves.db")
            elves = ElvesService(d, db, settings=ElvesSettings(task_retention_days=0))
            await elves.start()
            key = await elves.supervisor.create_app(NULL_TENANT, "bench")
            await elves.supervisor.grant(NULL_TENANT, "bench", ips=["all"])
            await elves.supervisor.create_app(NULL_TENANT, "benchapp", auth_key=key.auth_key[::-1])
            await elves.supervisor.grant(NULL_TENANT, "benchapp", ips=["all"])
            started = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, __file__, "--agents-worker", "--url", broker.url, "--prefix", prefix,
                 "--count", str(total), "--root", tmp],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
            try:
                line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
                if line.strip() != "ready":
                    raise RuntimeError("the agents' process did not start")
                while len(d.online_devices) < total:
                    await asyncio.sleep(0.05)
                results["agents_connect_s"] = round(time.perf_counter() - started, 2)
                async with ElvesClient("bench", broker.url, prefix=prefix, key=key.auth_key) as app, \
                        ElvesClient("benchapp", broker.url, prefix=prefix, key=key.auth_key[::-1]) as sapp:
                    results["inproc"] = await _rounds(
                        app, [ip_of(i) for i in range(args.agents)],
                        {"app": "bench", "func": "noop", "param": "", "timeout": 30}, args.rounds)
                    results["script"] = await _rounds(
                        sapp, [ip_of(i) for i in range(args.script_agents)],
                        {"app": "benchapp", "func": "run", "param": "x", "timeout": 60, "proxy": f"{sys.executable}|worker.py"},
                        args.rounds)
            finally:
                proc.stdin.close()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                await elves.close()
                await d.close()
                await db.close()
    return results


async def _rounds(app, ips: list[str], ins: dict, rounds: int) -> dict:
    times = []
    for _ in range(rounds + 1):  # the first round warms up and is not counted
        t0 = time.perf_counter()
        reply = await app.call("scheduler", "sendSync", agentip=ips, ins=ins, timeout=300)
        elapsed = time.perf_counter() - t0
        info = reply.get("info") or {}
        ok = sum(1 for v in info.values() if v.get("worker_flag") == 1)
        if ok != len(ips):
            bad = [v for v in info.values() if v.get("worker_flag") != 1][:3]
            raise RuntimeError(f"{len(ips) - ok} of {len(ips)} agents failed: {bad or reply}")
        times.append(elapsed)
    times = times[1:]
    med = statistics.median(times)
    return {
        "agents": len(ips),
        "seconds": [round(t, 3) for t in times],
        "median_s": round(med, 3),
        "agents_per_s": round(len(ips) / med),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--script-agents", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument("--agents-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--prefix", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    args = p.parse_args()
    from fleetrpc.runner import run

    if args.agents_worker:
        from fleetrpc.sim.fleet import raise_nofile_limit

        raise_nofile_limit()
        run(run_agents(args.url, args.prefix, args.count, args.root))
        return
    from fleetrpc.sim.fleet import raise_nofile_limit

    raise_nofile_limit()
    results = run(bench(args))
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
