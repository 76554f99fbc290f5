"""Self crons on a real agent under a controllable clock: pushed by the
server, kept in the agent's conf/cron.json, fired on their Quartz rule,
each run a ``cron`` task of the log and the cron's last result, listed in
the heartbeat; stopped, restarted with the agent, deleted."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from fleetrpc.agent import ElvesAgent
from fleetrpc.services.elves import NULL_TENANT
from fleetrpc.services.elves.clock import ManualClock
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.mqtt

#: 2030-01-01 00:00:05 UTC
T0 = datetime(2030, 1, 1, 0, 0, 5, tzinfo=timezone.utc).timestamp()
INS = {"mode": "NP", "app": "ops", "func": "hello", "param": '{"name": "cron"}', "timeout": 10, "proxy": ""}


async def _cron_tasks(rig, cron_id: str) -> list:
    rows = await rig.db.fetch(
        "SELECT id FROM elves_task WHERE tenant_id = $1 AND type = 'cron' ORDER BY starttime, id", NULL_TENANT)
    tasks = await rig.elves.tasklog.get(NULL_TENANT, [r[0] for r in rows])
    return tasks


async def test_self_cron_runs_on_the_agent(rig):
    clock = ManualClock(T0)
    agent = await rig.agent("10.0.0.1", clock=clock, cron_timezone="UTC")
    path = rig.root / "conf" / "cron.json"
    r = await rig.app.call("cron", "setcronbyip", agentip="10.0.0.1", cron_type="self", rule="0/10 * * * * ?", ins=INS)
    assert r["flag"] == "true", r
    cron_id = r["cron_id"]
    # Kept in Elves' own file, and in the heartbeat with its next fire time.
    assert json.loads(path.read_text())[cron_id]["Rule"] == "0/10 * * * * ?"
    listing = agent.info()["crons"]
    assert [c["cron_id"] for c in listing] == [cron_id]
    assert listing[0]["next_fire_time"] == int((T0 + 5) * 1000)

    # Nothing before its time; at 00:00:10 it runs, reported as a cron task.
    clock.set(T0 + 4)
    assert agent.crons.fired == 0
    clock.set(T0 + 5)
    await wait_until(lambda: agent.crons.fired == 1)
    detail = None

    async def reported() -> bool:
        nonlocal detail
        detail = (await rig.app.call("cron", "cronDetail", id=cron_id))["result"]
        return bool(detail["last_task_id"])

    await _until(reported)
    assert detail["last_exec_result"]["worker_message"] == "hello cron"
    assert detail["last_exec_time"] == "2030-01-01 00:00:10"
    log = await rig.app.call("tasklog", "getTaskByIds", id=[detail["last_task_id"]])
    task = log["info"][0]
    assert task["type"] == "cron" and task["agent_ip"] == "10.0.0.1" and task["result_flag"] == "1"
    assert task["worker_flag"] == "1" and task["starttime"] == "2030-01-01 00:00:10"
    assert agent.info()["crons"][0]["next_fire_time"] == int((T0 + 15) * 1000)

    # A jump over several fire times runs it once, not once per missed time.
    clock.set(T0 + 45)
    await wait_until(lambda: agent.crons.fired == 2)
    await _until(lambda: _count(rig, 2))

    # Stopped: kept, not run.
    r = await rig.app.call("cron", "stopCron", id=cron_id)
    assert r["flag"] == "true", r
    assert json.loads(path.read_text())[cron_id]["Flag"] == "false"
    assert agent.info()["crons"][0]["next_fire_time"] is None
    r = await rig.app.call("cron", "startCron", id=cron_id)
    assert r["flag"] == "true" and agent.info()["crons"][0]["next_fire_time"] == int((T0 + 55) * 1000)

    # An agent that restarts reads its file and goes on.
    await agent.close()
    rig.agents.remove(agent)
    clock2 = ManualClock(T0 + 100)
    again = await rig.agent("10.0.0.1", clock=clock2, cron_timezone="UTC")
    assert [c["cron_id"] for c in again.info()["crons"]] == [cron_id]
    clock2.set(T0 + 105)
    await wait_until(lambda: again.crons.fired == 1)
    await _until(lambda: _count(rig, 3))

    # Deleted: gone from the file and the heartbeat.
    r = await rig.app.call("cron", "delCronByIpId", agentip="10.0.0.1", id=cron_id)
    assert r["flag"] == "true", r
    assert json.loads(path.read_text()) == {} and again.info()["crons"] == []


async def test_bad_pushes_and_forged_reports(rig):
    agent = await rig.agent("10.0.0.2", clock=ManualClock(T0), cron_timezone="UTC")
    # The agent refuses what it cannot run; nothing is kept.
    assert agent.crons.on_set({"id": "X", "cron": {"Rule": "every day", "App": "ops", "Func": "f"}})["error"]
    assert agent.crons.on_set({"id": "a/b", "cron": {"Rule": "0 * * * * ?", "App": "ops", "Func": "f"}})["error"]
    assert agent.crons.on_set({"cron": {}})["error"]
    assert agent.crons.on_delete({"id": "never-there"}) == {"ok": True}
    assert agent.info()["crons"] == []
    # A report for a cron that is not a self cron of this agent is refused.
    other = ElvesAgent("10.0.0.3", rig.url, prefix=rig.prefix, heartbeat_interval=0)
    await other.start()
    rig.agents.append(other)
    r = await rig.app.call("cron", "setcronbyip", agentip="10.0.0.2", cron_type="self", rule="0 * * * * ?", ins=INS)
    with pytest.raises(Exception, match="not this agent's"):
        await other.client.call("elves.agentAsyncResult", {
            "id": "f00d", "cron_id": r["cron_id"], "worker_flag": 1, "worker_result": "forged"}, timeout=5)
    with pytest.raises(Exception, match="no self cron"):
        await other.client.call("elves.agentAsyncResult", {
            "id": "f00d", "cron_id": "NOPE", "worker_flag": 1}, timeout=5)
    assert await _count(rig, 0)


async def _count(rig, n: int) -> bool:
    return len(await _cron_tasks(rig, "")) == n


async def _until(predicate, timeout: float = 5.0) -> None:
    import asyncio
    import time

    end = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
