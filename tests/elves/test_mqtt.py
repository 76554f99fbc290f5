"""Every Elves function of scheduler, heartbeat, supervisor and tasklog over
MQTT, through a real broker, with real agents; seed spellings and intended ones."""

from __future__ import annotations

import asyncio
import json

import pytest

from fleetrpc.services.elves import NULL_TENANT
from tests.elves.conftest import wait_task
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.mqtt

INS = {"mode": "NP", "app": "ops", "func": "echo", "param": "p1", "timeout": "", "proxy": "python3|worker.py"}


@pytest.mark.parametrize("mqs, mqf", [("scheduler", "sendSync"), ("sheduler", "sendsync")])
async def test_send_sync_runs_a_script_app_on_a_real_agent(rig, mqs, mqf):
    await rig.agent("10.0.0.1")
    reply = await rig.app.call(mqs, mqf, agentip="10.0.0.1", ins=INS)
    assert (reply["mqt"], reply["mqs"], reply["mqf"]) == ("back", mqs, mqf)
    assert reply["flag"] == "true", reply
    info = reply["info"]
    assert info["agent_sync_flag"] == "true" and info["agent_sync_error"] == ""
    assert info["worker_flag"] == 1 and info["worker_result"] == "ops:echo:p1"
    assert isinstance(info["worker_costtime"], int) and isinstance(info["agent_sync_costtime"], int)
    # ... and it is in the task log, ended successfully.
    log = await rig.app.call("tasklog", "getTaskByIds", id=[info["id"]])
    task = log["info"][0]
    assert task["result_flag"] == "1" and task["worker_message"] == "ops:echo:p1"
    assert task["agent_sync_flag"] == "1" and task["type"] == "rt" and task["starttime"]


async def test_worker_failure_system_error_and_missing_app(rig):
    await rig.agent("10.0.0.1")
    fail = await rig.app.call("scheduler", "sendSync", agentip="10.0.0.1", ins={**INS, "func": "fail"})
    assert fail["flag"] == "true" and fail["info"]["worker_flag"] == 0
    assert fail["info"]["worker_result"] == "it went wrong"
    noflag = await rig.app.call("scheduler", "sendSync", agentip="10.0.0.1", ins={**INS, "func": "noflag"})
    assert noflag["info"]["worker_flag"] == -1
    assert noflag["info"]["worker_result"].startswith("app output flag error : hello")
    crash = await rig.app.call("scheduler", "sendSync", agentip="10.0.0.1", ins={**INS, "func": "other"})
    assert crash["info"]["worker_flag"] == -1 and "exit status 3" in crash["info"]["worker_result"]
    # An app the agent does not have (the key's app is "ops": grant a second app).
    key2 = await rig.elves.supervisor.create_app(NULL_TENANT, "absent")
    await rig.elves.supervisor.grant(NULL_TENANT, "absent", ips=["10.0.0.1"])
    other = await rig.client("absent", key=key2.auth_key)
    missing = await other.call("scheduler", "sendSync", agentip="10.0.0.1", ins={**INS, "app": "absent"})
    assert missing["info"]["worker_flag"] == -1
    assert missing["info"]["worker_result"] == "app [absent] not install !"
    log = await rig.app.call("tasklog", "getTaskByIds", id=[fail["info"]["id"], noflag["info"]["id"]])
    assert [t["result_flag"] for t in log["info"]] == ["0", "0"]


async def test_in_process_function_and_json_param(rig):
    await rig.agent("10.0.0.2")
    reply = await rig.app.call("scheduler", "sendSync", agentip="10.0.0.2",
                               ins={"app": "ops", "func": "hello", "param": {"name": "elves"}})
    assert reply["info"]["worker_flag"] == 1 and reply["info"]["worker_result"] == "hello elves"


async def test_timeout_kills_the_worker_and_zero_means_no_limit(rig):
    await rig.agent("10.0.0.1")
    slow = {**INS, "func": "sleep", "param": json.dumps({"s": 30}), "timeout": "1"}
    reply = await rig.app.call("scheduler", "sendSync", agentip="10.0.0.1", ins=slow)
    assert reply["info"]["worker_flag"] == -1 and reply["info"]["worker_result"] == "app exec timeout"
    # timeout 0: no limit, neither on the worker nor on the call (which
    # would otherwise end at the grace of 2 s).
    unlimited = {**INS, "func": "sleep", "param": json.dumps({"s": 3}), "timeout": 0}
    reply = await rig.app.call("scheduler", "sendSync", agentip="10.0.0.1", ins=unlimited)
    assert reply["flag"] == "true" and reply["info"]["worker_flag"] == 1, reply


async def test_offline_and_unknown_agents(rig):
    a = await rig.agent("10.0.0.1")
    a.kill()  # Last Will: offline at once
    await wait_until(lambda: not rig.d.is_online("10.0.0.1"))
    reply = await rig.app.call("scheduler", "sendSync", agentip="10.0.0.1", ins=INS)
    assert reply["flag"] == "false" and reply["error"].startswith("[410.1]Send Job To Agent Fail")
    assert "offline" in reply["error"]
    assert reply["info"]["agent_sync_flag"] == "false" and reply["info"]["worker_flag"] == -1
    reply = await rig.app.call("scheduler", "sendSync", agentip="10.9.9.9", ins=INS)
    assert reply["error"].startswith("[414.1]Agent Info Not Found")
    st = await rig.app.call("heartbeat", "getStatByIp", agentip="10.0.0.1")
    assert st["status"] == "false"
    # Both attempts are logged as failed.
    log = await rig.app.call("tasklog", "getTaskByIds", id=[reply["info"]["id"]])
    assert log["info"][0]["result_flag"] == "0" and log["info"][0]["agent_sync_flag"] == "0"


@pytest.mark.parametrize("mqf, extra", [("sendAsync", {}), ("sendsync", {"mode": "SAnP"})])
async def test_send_async_then_the_result_is_logged(rig, mqf, extra):
    await rig.agent("10.0.0.1")
    hooked = []

    async def hook(row):
        hooked.append(row)

    rig.elves.scheduler.on_result("rt", hook)
    reply = await rig.app.call("sheduler", mqf, agentip="10.0.0.1", ins={**INS, **extra})
    assert reply["flag"] == "true", reply
    info = reply["info"]
    assert info["agent_sync_flag"] == "true" and "worker_flag" not in info
    await wait_until(lambda: hooked)
    assert hooked[0].worker_message == "ops:echo:p1" and hooked[0].result_flag == 1
    log = await rig.app.call("tasklog", "agentAsyncLog", id=[info["id"]])  # the seed's name
    task = log["info"][0]
    assert task["worker_message"] == "ops:echo:p1" and task["agent_callback_time"] and task["result_flag"] == "1"


async def test_fan_out_to_many_agents(rig):
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        await rig.agent(ip)
    rig.agents[2].kill()
    await wait_until(lambda: not rig.d.is_online("10.0.0.3"))
    reply = await rig.app.call("scheduler", "sendSync", agentip=["10.0.0.1", "10.0.0.2", "10.0.0.3"],
                               ins={"app": "ops", "func": "hello", "param": "x"})
    info = reply["info"]
    assert set(info) == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    assert info["10.0.0.1"]["worker_result"] == "hello x" and info["10.0.0.2"]["worker_flag"] == 1
    assert info["10.0.0.3"]["agent_sync_flag"] == "false"
    ids = [i["id"] for i in info.values()]
    assert len(set(ids)) == 3
    log = await rig.app.call("tasklog", "getTaskByIds", id=ids)
    assert sorted(t["result_flag"] for t in log["info"]) == ["0", "1", "1"]


async def test_mode_p_forwards_to_the_processor(rig, aiohttp_processor):
    url, received = aiohttp_processor
    host, port = url
    await rig.elves.supervisor.repo.set_callback(NULL_TENANT, "ops", host, port)
    await rig.agent("10.0.0.1")
    reply = await rig.app.call("scheduler", "sendAsync", agentip="10.0.0.1", ins={**INS, "mode": "P"})
    task_id = reply["info"]["id"]
    await wait_until(lambda: received)
    assert received[0]["id"] == task_id and received[0]["message"] == "ops:echo:p1" and received[0]["flag"] == 1
    await wait_task(rig, task_id, lambda t: t.module_sync_flag is not None)
    # The processor reports its own result later: appProcessorLog (seed) ends the task.
    done = await rig.app.call("tasklog", "appProcessorLog", id=task_id,
                              info={"processor_sync_flag": "1", "processor_sync_error": "", "processor_sync_costtime": 7})
    assert done["flag"] == "true", done
    log = await rig.app.call("tasklog", "getTaskByIds", id=[task_id])
    task = log["info"][0]
    assert task["module_sync_flag"] == "1" and task["processor_costtime"] == "7"
    assert task["module_callback_time"] and task["result_flag"] == "1"


async def test_heartbeat_functions(rig):
    await rig.agent("10.0.0.1")
    await rig.agent("10.0.0.2")
    for mqf in ("getStatByIp", "getstatbyip", "getInfoByIp"):
        r = await rig.app.call("heartbeat", mqf, agentip="10.0.0.1")
        assert r["flag"] == "true" and r["status"] == "true"
        assert r["agent_starttime"] and r["hw_config"]["os"] and r["apps"]["ops"] == "1.2.0"
        assert r["cronlist"] == []
    r = await rig.app.call("heartbeat", "getInfoByIp", agentip="10.0.0.7")
    assert r["error"].startswith("[414.1]")
    r = await rig.app.call("heartbeat", "getStatByIpList", iplist=["10.0.0.2", "10.0.0.7", "10.0.0.1"])
    assert r["status"] == ["true", "false", "true"]
    r = await rig.app.call("heartbeat", "getOnlineStat")
    assert r["stat"]["totalonline"] == 2 and r["stat"]["linuxonline"] == 2 and r["stat"]["winonline"] == 0
    rig.agents[0].kill()
    await wait_until(lambda: not rig.d.is_online("10.0.0.1"))
    r = await rig.app.call("heartbeat", "getOnlineStat")
    assert r["stat"]["totalonline"] == 1


async def test_supervisor_functions(rig):
    key = rig.key
    r = await rig.app.call("supervisor", "checkIpAuthByKey", agentip="10.0.0.1", token=key.auth_id, key=key.auth_key)
    assert r["status"] == "true"
    r = await rig.app.call("supervisor", "checkipauthbykey", agentip="10.5.5.5", token=key.auth_id, key=key.auth_key)
    assert r["status"] == "false"
    await rig.elves.supervisor.repo.set_callback(NULL_TENANT, "ops", "127.0.0.1", 9000)
    for mqf in ("getAppCallbackInfo", "checkipauthbykey"):  # the seed's name, told apart by appname
        r = await rig.app.call("supervisor", mqf, appname="ops")
        assert (r["appip"], r["appport"]) == ("127.0.0.1", "9000"), r
    r = await rig.app.call("supervisor", "getAuthByKey", key=key.auth_key)
    assert r["auth_id"] == key.auth_id and "10.0.0.1" in r["ops"]["agent_ip_list"]
    r = await rig.app.call("supervisor", "getAppCallbackInfo", appname="nope")
    assert r["error"].startswith("[413.2]")


async def test_a_result_larger_than_a_reply_may_carry_is_a_clear_error(rig):
    # Published whole, it was over the server's payload limit: rejected
    # there as malformed, and the scheduler waited for the timeout.
    a = await rig.agent("10.0.0.1")
    a.add_function("ops", "big", lambda param: (True, "r" * (rig.d.settings.max_payload + 1)))
    ins = {**INS, "func": "big", "timeout": "3"}
    reply = await asyncio.wait_for(rig.app.call("scheduler", "sendSync", agentip="10.0.0.1", ins=ins), 2.5)
    info = reply["info"]
    assert info["worker_flag"] == -1 and "too large" in info["worker_result"], info
    assert len(info["worker_result"]) < 10_000


async def test_an_agent_with_many_self_crons_still_counts_as_an_agent(rig):
    # 20 self crons made its heartbeat larger than max_heartbeat_bytes
    # (4096): the server kept none of it, and the agent left getOnlineStat
    # and lost its hw and start time in getInfoByIp.
    a = await rig.agent("10.0.0.1", heartbeat_interval=0.2)
    for i in range(40):
        assert a.crons.on_set({"id": f"c{i:04d}", "cron": {"Rule": "0 0 0 1 1 ? 2099", "App": "ops", "Func": "echo",
                                                             "Param": "p" * 50}}) == {"ok": True}
    seen = rig.d.device_info(a.client.device_id).heartbeats
    await wait_until(lambda: rig.d.device_info(a.client.device_id).heartbeats >= seen + 2)
    assert rig.d.presence.stats.heartbeats_too_large >= 1
    r = await rig.app.call("heartbeat", "getOnlineStat")
    assert r["stat"]["totalonline"] == 1, r
    r = await rig.app.call("heartbeat", "getInfoByIp", agentip="10.0.0.1")
    assert r["status"] == "true" and r["agent_starttime"] and r["hw_config"]["os"], r
