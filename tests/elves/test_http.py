"""POST /api/elves: the same envelopes under the server's auth (a stand-in
middleware sets request[PRINCIPAL] as the server's JWT middleware does)."""

from __future__ import annotations

import pytest

from fleetrpc.services.elves import NULL_TENANT
from tests.elves.conftest import elves_http, fake_auth

pytestmark = pytest.mark.mqtt

OTHER_TENANT = "a1b2c3d4-0000-4000-8000-000000000001"
INS = {"mode": "NP", "app": "ops", "func": "echo", "param": "h", "timeout": "", "proxy": "python3|worker.py"}


@pytest.fixture
async def http(rig):
    async with elves_http(rig, fake_auth) as client:
        async def post(body, authority="TENANT_ADMIN", tenant=NULL_TENANT, raw=False):
            headers = {"X-Test-Authority": authority, "X-Test-Tenant": tenant} if authority else {}
            kw = {"data": body} if raw else {"json": body}
            resp = await client.post("/api/elves", headers=headers, **kw)
            return resp.status, await resp.json()

        yield post


def env(mqs, mqf, **args):
    return {"mqt": "call", "mqs": mqs, "mqf": mqf, **args}


@pytest.mark.parametrize("mqs, mqf", [("scheduler", "sendSync"), ("sheduler", "sendsync")])
async def test_send_sync_over_http(rig, http, mqs, mqf):
    await rig.agent("10.0.0.1")
    status, r = await http(env(mqs, mqf, agentip="10.0.0.1", ins=INS))
    assert status == 200 and r["flag"] == "true", r
    assert (r["mqt"], r["mqs"], r["mqf"]) == ("back", mqs, mqf)
    assert r["info"]["worker_result"] == "ops:echo:h"
    status, log = await http(env("tasklog", "getTaskByIds", id=[r["info"]["id"]]))
    assert log["info"][0]["result_flag"] == "1"


@pytest.mark.parametrize("mqs, mqf, extra", [("scheduler", "sendAsync", {}), ("sheduler", "sendsync", {"mode": "AAnP"})])
async def test_send_async_over_http(rig, http, mqs, mqf, extra):
    await rig.agent("10.0.0.1")
    status, r = await http(env(mqs, mqf, agentip="10.0.0.1", ins={**INS, **extra}))
    assert r["flag"] == "true" and r["info"]["agent_sync_flag"] == "true" and "worker_flag" not in r["info"]
    from tests.elves.conftest import wait_task

    await wait_task(rig, r["info"]["id"], lambda t: t.result_flag == 1)
    for mqf in ("getTaskByIds", "agentAsyncLog"):
        status, log = await http(env("tasklog", mqf, id=[r["info"]["id"]]))
        assert log["info"][0]["worker_message"] == "ops:echo:h"


@pytest.mark.parametrize(
    "mqs, mqf, args, check",
    [
        ("heartbeat", "getStatByIp", {"agentip": "10.0.0.1"}, lambda r: r["status"] == "true"),
        ("heartbeat", "getstatbyip", {"agentip": "10.0.0.1"}, lambda r: r["agent_starttime"] and r["status"] == "true"),
        ("heartbeat", "getInfoByIp", {"agentip": "10.0.0.1"}, lambda r: r["hw_config"]["os"] and r["cronlist"] == []),
        ("heartbeat", "getStatByIpList", {"iplist": ["10.0.0.9", "10.0.0.1"]}, lambda r: r["status"] == ["false", "true"]),
        ("heartbeat", "getOnlineStat", {}, lambda r: r["stat"]["totalonline"] == 1),
        ("supervisor", "getAppCallbackInfo", {"appname": "ops"}, lambda r: r["appip"] == "" and r["appport"] == ""),
        ("supervisor", "checkipauthbykey", {"appname": "ops"}, lambda r: "appip" in r),
        ("supervisor", "getAuthByKey", {"key": "KEY"}, lambda r: "10.0.0.1" in r["ops"]["agent_ip_list"]),
        ("supervisor", "checkIpAuthByKey", {"agentip": "10.0.0.1", "token": "", "key": "KEY"}, lambda r: r["status"] == "true"),
        ("supervisor", "checkipauthbykey", {"agentip": "10.0.0.5", "key": "KEY"}, lambda r: r["status"] == "false"),
    ],
)
async def test_heartbeat_and_supervisor_over_http(rig, http, mqs, mqf, args, check):
    await rig.agent("10.0.0.1")
    args = {k: (rig.key.auth_key if v == "KEY" else v) for k, v in args.items()}
    status, r = await http(env(mqs, mqf, **args))
    assert status == 200 and r["flag"] == "true" and check(r), r


async def test_processor_result_over_http(rig, http):
    await rig.agent("10.0.0.1")
    _, r = await http(env("scheduler", "sendSync", agentip="10.0.0.1", ins={**INS, "mode": "P"}))
    task_id = r["info"]["id"]
    for mqf in ("appProcessorResult", "appProcessorLog"):
        _, done = await http(env("tasklog", mqf, id=task_id, info={"processor_sync_flag": "true", "processor_sync_costtime": "4"}))
        assert done["flag"] == "true", done
    _, log = await http(env("tasklog", "getTaskByIds", id=task_id))
    # No processor address: the push failed, then the processor's report ended it.
    assert log["info"][0]["module_sync_flag"] == "0" and log["info"][0]["result_flag"] == "1"


async def test_http_auth_errors(rig, http):
    await rig.agent("10.0.0.1")
    status, r = await http(env("heartbeat", "getOnlineStat"), authority="CUSTOMER_USER")
    assert status == 403 and r["error"].startswith("[401.6]")
    status, r = await http(env("heartbeat", "getOnlineStat"), authority=None)
    assert status == 403 and r["flag"] == "false"
    status, r = await http(b"{not json", raw=True)
    assert status == 400 and r["error"].startswith("[403.0]Malformed Envelope")
    status, r = await http(env("scheduler", "sendSync", agentip="10.0.0.1", ins=INS, key="f" * 32))
    assert r["error"] == "[401.5]Auth Key Not Valid"
    status, r = await http(env("scheduler", "sendSync", agentip="10.0.0.1", ins=INS, auth_id="nope"))
    assert r["error"] == "[413.1]AuthId Not Found: 'nope'"
    status, r = await http(env("scheduler", "sendSync", agentip="10.0.0.1", ins={**INS, "app": "ghost"}))
    assert r["error"] == "[413.2]App Not Found: 'ghost'"
    # Another tenant's admin: the app "ops" is not theirs, nor its agents or tasks.
    status, r = await http(env("scheduler", "sendSync", agentip="10.0.0.1", ins=INS), tenant=OTHER_TENANT)
    assert r["error"] == "[413.2]App Not Found: 'ops'"
    status, r = await http(env("scheduler", "sendSync", agentip="10.0.0.1", ins=INS, key=rig.key.auth_key), tenant=OTHER_TENANT)
    assert r["error"] == "[401.5]Auth Key Not Valid"
    status, r = await http(env("scheduler", "sendSync", agentip="10.0.0.1", ins={k: v for k, v in INS.items() if k != "app"}))
    assert r["error"].startswith("[403.3]Bad Argument")
