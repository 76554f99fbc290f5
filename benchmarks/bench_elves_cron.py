"""Center-cron firing precision: N crons due in the same second.

    python benchmarks/bench_elves_cron.py                      # 10,000 crons, no agents
    python benchmarks/bench_elves_cron.py --crons 10000 --agents 500 --distinct --json out.json
    python benchmarks/bench_elves_cron.py --db postgresql://user@host/db

The server is a Dispatcher with the Elves services on a throwaway Mosquitto
and a database (a SQLite file by default), on the real clock.  N center
crons (one per agent IP, of one app) are stored with the same fire time a
few seconds ahead; the node's cron loop wakes, claims every firing in the
database and hands them to the scheduler's async path.  Per firing:

- ``claimed``: from the fire time to the moment the loop handed the firing
  to the scheduler (claim in the database and next fire time included);
- ``sent``: to the moment the scheduler's ``send_async_batch`` returned
  for it (task log rows written, the instruction published and accepted by
  the agent -- or, for an IP with no agent, refused and logged as failed;
  a fire time's fan-outs go as one batch).

``--agents K`` starts K real ElvesAgents (in a second process) for the
first K IPs; the others have none (a failed task each, Elves' offline
case).  ``--distinct`` gives every cron its own parameter, so that no two
share a fan-out (the worst case: N sends of one agent each).  The machine
is shared: keep runs short.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def ip_of(i: int) -> str:
    return f"10.{100 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"


async def run_agents(url: str, prefix: str, count: int) -> None:
    from fleetrpc.agent import ElvesAgent

    agents = []
    for start in range(0, count, 100):
        batch = []
        for i in range(start, min(count, start + 100)):
            a = ElvesAgent(ip_of(i), url, prefix=prefix, heartbeat_interval=600)
            a.add_function("bench", "noop", lambda param: (True, "ok"))
            batch.append(a)
        await asyncio.gather(*(a.start() for a in batch))
        agents += batch
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for a in agents:
        await a.close()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": round(pct(values, 0.50) * 1000, 1), "p99_ms": round(pct(values, 0.99) * 1000, 1),
            "max_ms": round(max(values) * 1000, 1) if values else None,
            "mean_ms": round(statistics.fmean(values) * 1000, 1) if values else None}


async def bench(args) -> dict:
    import msgspec

    from fleetrpc.broker import start_broker
    from fleetrpc.config import Settings
    from fleetrpc.dispatch import Dispatcher
    from fleetrpc.services.elves import NULL_TENANT, ElvesSettings
    from fleetrpc.services.elves.cron import CronRow
    from fleetrpc.services.elves.envelope import Instruction
    from fleetrpc.services.elves.service import ElvesService
    from fleetrpc.store.db import open_database
    from fleetrpc.services.elves.tasklog import new_task_id

    prefix = "cronbench"
    db_url = args.db or f"sqlite:///{Path(args.tmp) / 'cron-bench.db'}"
    async with start_broker("mosquitto") as broker:
        agents_proc = None
        if args.agents:
            agents_proc = subprocess.Popen(
                [sys.executable, __file__, "--agents-worker", "--url", broker.url, "--prefix", prefix,
                 "--agents", str(args.agents)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert agents_proc.stdout.readline().strip() == "ready"
        d = Dispatcher(Settings(mqtt_url=broker.url, node_id="cron-bench", prefix=prefix, min_timeout_ms=0))
        await d.start()
        db = await open_database(db_url)
        elves = ElvesService(d, db, settings=ElvesSettings(accept_timeout_s=30.0))
        try:
            await elves.start()
            if args.agents:
                t_wait = time.monotonic()
                while sum(1 for i in range(args.agents) if d.device_info(ip_of(i)) is not None) < args.agents:
                    if time.monotonic() - t_wait > 120:
                        raise SystemExit("agents did not all come online")
                    await asyncio.sleep(0.1)
            await db.execute("DELETE FROM elves_cron")
            await db.execute("DELETE FROM elves_cron_firing")
            await db.execute("DELETE FROM elves_task")
            key = await elves.supervisor.create_app(NULL_TENANT, f"bench{new_task_id()}")
            await elves.supervisor.grant(NULL_TENANT, key.app, ips=["all"])
            fire = int(time.time()) + args.lead
            when = datetime.fromtimestamp(fire, timezone.utc)
            rule = f"{when.second} {when.minute} {when.hour} {when.day} {when.month} ? {when.year}"
            rows = []
            for i in range(args.crons):
                ins = Instruction(app=key.app, func="noop", mode="NP", param=str(i) if args.distinct else "",
                                  timeout=10, proxy="").normalised()
                rows.append(CronRow(id=f"{i:016X}", tenant_id=NULL_TENANT, caller=key.app, agent_ip=ip_of(i),
                                    cron_type="center", rule=rule, ins=msgspec.json.encode(ins).decode(), enabled=1,
                                    create_time=int(time.time() * 1000), next_fire=fire * 1000))
            cols = ("id", "tenant_id", "caller", "agent_ip", "cron_type", "rule", "ins", "enabled", "create_time", "next_fire")
            await db.executemany(
                f"INSERT INTO elves_cron ({', '.join(cols)}) VALUES ({', '.join(f'${i + 1}' for i in range(len(cols)))})",
                [tuple(getattr(r, c) for c in cols) for r in rows])
            if time.time() > fire - 1:
                raise SystemExit(f"storing {args.crons} crons took longer than --lead {args.lead} s: raise it")
            claimed: list[float] = []
            sent: list[float] = []
            done = asyncio.Event()

            def on_fired(ids, fire_ms, handed_at):
                claimed.extend([handed_at - fire_ms / 1000] * len(ids))

            elves.cron.on_fired(on_fired)
            original = elves.scheduler.send_async_batch

            async def timed_send_async_batch(*a, **kw):
                out = await original(*a, **kw)
                now = time.time()
                sent.extend([now - fire] * sum(len(o) for o in out))
                if len(sent) >= args.crons:
                    done.set()
                return out

            elves.scheduler.send_async_batch = timed_send_async_batch
            elves.cron._wake.set()  # see the crons stored behind its back
            await asyncio.wait_for(done.wait(), args.lead + 300)
            ok = await db.fetchval("SELECT COUNT(*) FROM elves_task WHERE type = 'cron' AND agent_sync_flag = 1")
            return {
                "crons": args.crons, "agents": args.agents, "distinct": args.distinct, "db": db.dialect,
                "claimed": summary(claimed), "sent": summary(sent), "accepted_by_agents": ok,
                "firings": await db.fetchval("SELECT COUNT(*) FROM elves_cron_firing"),
            }
        finally:
            await elves.close()
            await d.close()
            await db.close()
            if agents_proc is not None:
                agents_proc.stdin.close()
                agents_proc.wait(timeout=60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--crons", type=int, default=10_000)
    p.add_argument("--agents", type=int, default=0)
    p.add_argument("--distinct", action="store_true")
    p.add_argument("--lead", type=int, default=8, help="seconds between storing the crons and their fire time")
    p.add_argument("--db", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--agents-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", default=None, help=argparse.SUPPRESS)
    p.add_argument("--prefix", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tmp", default=os.environ.get("TMPDIR", "/tmp"))
    args = p.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    if args.agents_worker:
        asyncio.run(run_agents(args.url, args.prefix, args.agents))
        return
    result = asyncio.run(bench(args))
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
