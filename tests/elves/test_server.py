"""Elves through ``fleetrpc serve`` (the server's parts, its HTTP API, its
device registry and database) with a real ``fleetrpc agent`` process: an app
registered over HTTP runs a real script on the agent over MQTT, over
``POST /api/elves`` and over the signed ``/api/v2/rt/exec``; a center cron
fires through the server; the task log shows it all.  And the app
administration routes, role by role and tenant by tenant."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import subprocess
import sys
import time
import urllib.parse

import pytest

from fleetrpc.services.elves.client import ElvesClient
from fleetrpc.services.elves.openapi_v2 import signature
from tests.helpers.waiting import wait_until
from tests.server.conftest import sqlite_url, start_server, store_url, world  # noqa: F401 (fixtures)

pytestmark = pytest.mark.mqtt

_seq = itertools.count()
PROXY = f"{sys.executable}|worker.py"


def _prefix() -> str:
    return f"elvessrv{next(_seq)}x{int(time.time() * 1000) % 100000}"


@contextlib.asynccontextmanager
async def agent_process(mqtt_url: str, prefix: str, ip: str, device_id: str, root):
    """``fleetrpc agent`` in its own process, until the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetrpc.cli", "agent", "--url", mqtt_url, "--ip", ip, "--device-id", device_id,
         "--root", str(root), "--prefix", prefix, "--heartbeat", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        if proc.returncode not in (0, -15):
            print(out.decode(errors="replace"))


async def _json(api, method: str, path: str, token: str | None, body=None, status: int = 200):
    got, raw, _ = await api.request(method, path, token, json=body)
    assert got == status, (method, path, got, raw[:300])
    return json.loads(raw) if raw else None


async def test_elves_end_to_end_through_fleetrpc_serve(start_server, world, mqtt_url, apps_root):
    prefix = _prefix()
    async with start_server(dispatch={"prefix": prefix}) as (server, api):
        ctx = server.ctx
        assert ctx.elves is not None and "fleetrpc.services.elves.http" in ctx.features
        admin = await api.login(world.tenant.email)

        # The agent is a device of the tenant named by its IP; the app is made over HTTP.
        device = await _json(api, "POST", "/api/device", admin, {"name": "10.0.0.5", "type": "elves-agent"})
        device_id = device["id"]["id"]
        app = await _json(api, "POST", "/api/elves/apps", admin, {"app": "ops", "ips": ["10.0.0.5", "10.0.0.6"]})
        assert len(app["auth_id"]) == 16 and len(app["auth_key"]) == 32
        assert app["grants"] == {"ips": ["10.0.0.5", "10.0.0.6"], "main_cats": [], "sub_cats": []}
        key = app["auth_key"]

        async with agent_process(mqtt_url, prefix, "10.0.0.5", device_id, apps_root) as proc:
            d = ctx.dispatcher
            await wait_until(lambda: proc.poll() is None and d.is_online(device_id)
                             and (d.device_info(device_id).heartbeat or {}).get("elves"), timeout=30)
            ins = {"mode": "NP", "app": "ops", "func": "echo", "param": "via-mqtt", "timeout": 20, "proxy": PROXY}
            task_ids = []

            # 1. sendSync over MQTT: a real script on the real agent.
            async with ElvesClient("ops", mqtt_url, prefix=prefix, key=key) as client:
                r = await client.call("scheduler", "sendSync", agentip="10.0.0.5", ins=ins)
                assert r["flag"] == "true", r
                assert r["info"]["worker_flag"] == 1 and r["info"]["worker_result"] == "ops:echo:via-mqtt"
                task_ids.append(r["info"]["id"])

                # 2. The same over POST /api/elves, under the tenant admin's JWT.
                r = await _json(api, "POST", "/api/elves", admin, {
                    "mqt": "call", "mqs": "sheduler", "mqf": "sendSync", "key": key, "agentip": "10.0.0.5",
                    "ins": {**ins, "param": "via-http"}})
                assert r["flag"] == "true" and r["info"]["worker_result"] == "ops:echo:via-http", r
                task_ids.append(r["info"]["id"])

                # 3. Elves' own OpenAPI v2, signed with the app's key.
                params = {"auth_id": app["auth_id"], "timestamp": str(int(time.time())), "ip": "10.0.0.5",
                          "app": "ops", "func": "echo", "param": '"via-v2"', "timeout": "20", "proxy": PROXY}
                params["sign"] = signature("/api/v2/rt/exec", params, key)
                params["sign_type"] = "md5"
                r = await _json(api, "GET", "/api/v2/rt/exec?" + urllib.parse.urlencode(params), None)
                assert r["flag"] == "true" and r["result"]["worker_message"] == 'ops:echo:"via-v2"', r  # param is JSON, kept as its text
                task_ids.append(r["result"]["id"])

                # An IP granted but with no agent in the registry: Elves' 414.1.
                r = await client.call("scheduler", "sendSync", agentip="10.0.0.6", ins=ins)
                assert r["flag"] == "false" and r["error"].startswith("[414.1]"), r

                # 4. A center cron fires from the server (every second, real clock).
                fired, finished = asyncio.Event(), asyncio.Event()
                ctx.elves.cron.on_fired(lambda ids, fire, at: fired.set())
                cron_tasks: list = []

                async def on_cron_result(row):
                    cron_tasks.append(row)
                    finished.set()

                ctx.elves.scheduler.on_result("cron", on_cron_result)
                r = await client.call("cron", "setcronbyip", agentip="10.0.0.5", cron_type="center",
                                      rule="* * * * * ?", ins={**ins, "param": "via-cron"})
                assert r["flag"] == "true", r
                cron_id = r["cron_id"]
                await asyncio.wait_for(fired.wait(), 30)
                await asyncio.wait_for(finished.wait(), 30)
                r = await client.call("cron", "setcronbyip", agentip="10.0.0.5", id=cron_id)  # delCronByIpId
                assert r["flag"] == "true", r
                task_ids.append(cron_tasks[0].id)

                # 5. The task log has every task, finished and successful.
                log = await client.call("tasklog", "getTaskByIds", id=task_ids)
                assert log["notfound"] == []
                by_id = {t["id"]: t for t in log["info"]}
                assert [by_id[i]["type"] for i in task_ids] == ["rt", "rt", "rt", "cron"]
                assert all(by_id[i]["result_flag"] == "1" and by_id[i]["worker_flag"] == "1" for i in task_ids)
                assert by_id[task_ids[3]]["worker_message"] == "ops:echo:via-cron"
                assert all(by_id[i]["agent_ip"] == "10.0.0.5" for i in task_ids)

                # The heartbeat service reads the server's presence of the agent.
                r = await client.call("heartbeat", "getInfoByIp", agentip="10.0.0.5")
                assert r["status"] == "true" and r["apps"] == {"ops": "1.2.0"}, r
                r = await client.call("heartbeat", "getOnlineStat")
                assert r["stat"]["totalonline"] == 1

        # Another tenant sees none of it: its admin has no apps, and the key
        # of tenant 1 is not a key in tenant 2.
        admin2 = await api.login(world.tenant2.email)
        assert (await _json(api, "GET", "/api/elves/apps", admin2))["data"] == []
        r = await _json(api, "POST", "/api/elves", admin2, {
            "mqt": "call", "mqs": "tasklog", "mqf": "getTaskByIds", "key": key, "id": task_ids})
        assert r["flag"] == "false" and r["error"].startswith("[401.5]"), r
        r = await _json(api, "POST", "/api/elves", admin2, {"mqt": "call", "mqs": "tasklog", "mqf": "getTaskByIds",
                                                            "id": task_ids})
        assert r["flag"] == "true" and r["info"] == [] and sorted(r["notfound"]) == sorted(task_ids)


async def test_app_administration_over_http(start_server, world, mqtt_url):
    prefix = _prefix()
    async with start_server(dispatch={"prefix": prefix}) as (server, api):
        admin = await api.login(world.tenant.email)
        for who in (world.customer, world.sysadmin):
            token = await api.login(who.email)
            for method, path in (("GET", "/api/elves/apps"), ("POST", "/api/elves/apps")):
                got = await _json(api, method, path, token, {"app": "x"}, status=403)
                assert got["errorCode"] == 20
        assert (await api.request("GET", "/api/elves/apps", None))[0] == 401

        made = await _json(api, "POST", "/api/elves/apps", admin, {
            "app": "deploy", "callback_ip": "127.0.0.1", "callback_port": 8123, "ips": ["10.1.0.1"],
            "main_cats": ["web"]})
        key, auth_id = made["auth_key"], made["auth_id"]
        assert made["callback_ip"] == "127.0.0.1" and made["callback_port"] == 8123
        # Bad input: a clear 400, nothing half made.
        for body in ({"app": "deploy"}, {"app": "a/b"}, {"app": ""}, {"app": "a\x00b"},
                     {"app": "x", "ips": ["10.0.0.999"]},
                     {"app": "x", "callback_ip": "127.0.0.1"}, {"app": "x", "callback_ip": "h", "callback_port": 1},
                     {"app": "x", "callback_ip": "127.0.0.1", "callback_port": 70000}, {"app": 5}, {"nope": 1}):
            got = await _json(api, "POST", "/api/elves/apps", admin, body, status=400)
            assert got["errorCode"] == 31, body
        listed = await _json(api, "GET", "/api/elves/apps", admin)
        assert [a["app"] for a in listed["data"]] == ["deploy"]
        assert "auth_key" not in listed["data"][0] and listed["data"][0]["auth_id"] == auth_id

        one = await _json(api, "POST", "/api/elves/apps/deploy/grants", admin, {"ips": ["10.1.0.2", "all"],
                                                                               "sub_cats": ["db"]})
        assert one["grants"] == {"ips": ["10.1.0.1", "10.1.0.2", "all"], "main_cats": ["web"], "sub_cats": ["db"]}
        one = await _json(api, "DELETE", "/api/elves/apps/deploy/grants", admin, {"ips": ["all"], "main_cats": ["web"]})
        assert one["grants"] == {"ips": ["10.1.0.1", "10.1.0.2"], "main_cats": [], "sub_cats": ["db"]}
        await _json(api, "POST", "/api/elves/apps/deploy/grants", admin, {"ips": ["x"]}, status=400)
        one = await _json(api, "POST", "/api/elves/apps/deploy/callback", admin, {"callback_ip": None})
        assert one["callback_ip"] is None and one["callback_port"] is None

        # The key works over MQTT; a new key replaces it at once.
        async with ElvesClient("deploy", mqtt_url, prefix=prefix, key=key) as client:
            r = await client.call("supervisor", "checkIpAuthByKey", agentip="10.1.0.2", key=key, token=auth_id)
            assert r["status"] == "true", r
            fresh = await _json(api, "POST", "/api/elves/apps/deploy/key", admin)
            assert fresh["auth_key"] != key and fresh["auth_id"] == auth_id
            r = await client.call("heartbeat", "getOnlineStat")
            assert r["error"].startswith("[401.5]"), r

        # Another tenant's admin cannot see or touch the app.
        admin2 = await api.login(world.tenant2.email)
        for method, path in (("GET", "/api/elves/apps/deploy"), ("DELETE", "/api/elves/apps/deploy"),
                             ("POST", "/api/elves/apps/deploy/key"), ("POST", "/api/elves/apps/deploy/grants")):
            got = await _json(api, method, path, admin2, {"ips": ["10.9.9.9"]}, status=404)
            assert got["errorCode"] == 32
        await _json(api, "GET", "/api/elves/apps/deploy", admin)
        await _json(api, "DELETE", "/api/elves/apps/deploy", admin)
        await _json(api, "GET", "/api/elves/apps/deploy", admin, status=404)
        assert (await _json(api, "GET", "/api/elves/apps", admin))["data"] == []


async def test_elves_can_be_switched_off(start_server, world):
    async with start_server(elves={"enabled": False}) as (server, api):
        assert getattr(server.ctx, "elves", None) is None
        admin = await api.login(world.tenant.email)
        status, _, _ = await api.request("GET", "/api/elves/apps", admin)
        assert status == 404
