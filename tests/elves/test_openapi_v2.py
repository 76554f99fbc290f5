"""Elves' OpenAPI v2: signed GET/POST requests through real HTTP to real
agents; every signature error in Elves' order; cron, queue and info."""

from __future__ import annotations

import asyncio
import hashlib
import time
import types

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetrpc.services.elves import NULL_TENANT
from fleetrpc.services.elves.http import setup as elves_http_setup
from fleetrpc.services.elves.openapi_v2 import ROUTES, setup as openapi_setup, signature
from tests.elves.conftest import elves_http

pytestmark = pytest.mark.mqtt

PROXY = "python3|worker.py"


def md5_sign(path: str, params: dict, key: str) -> str:
    """The rule as Elves' book writes it, independently of the module."""
    text = path + "?" + "&".join(f"{k}={params[k]}" for k in sorted(params)) + key
    return hashlib.md5(text.encode()).hexdigest()


class Api:
    def __init__(self, client, key) -> None:
        self.client, self.key = client, key

    def signed(self, path, params, *, auth_id=None, auth_key=None, ts=None, sign_type="md5", sign=None):
        p = {k: str(v) for k, v in params.items()}
        p["auth_id"] = auth_id or self.key.auth_id
        p["timestamp"] = str(int(time.time()) if ts is None else ts)
        p["sign"] = sign or md5_sign(path, p, auth_key or self.key.auth_key)
        p["sign_type"] = sign_type
        return p

    async def get(self, path, params=None, **kw):
        resp = await self.client.get(path, params=self.signed(path, params or {}, **kw))
        assert resp.status == 200
        return await resp.json()

    async def post(self, path, params=None, **kw):
        resp = await self.client.post(path, data=self.signed(path, params or {}, **kw))
        assert resp.status == 200
        return await resp.json()


@pytest.fixture
async def api(rig):
    # no JWT middleware: these handlers authenticate by signature; openapi_setup is
    # idempotent beside the part's own setup_http
    async with elves_http(rig, extra=lambda app: openapi_setup(app, None)) as client:
        yield Api(client, rig.key)


def test_signature_matches_elves_rule_and_handlers_are_public(rig):
    p = {"auth_id": "ab", "timestamp": "1700000000", "ip": "10.0.0.1", "sign": "x", "sign_type": "md5"}
    assert signature("/api/v2/rt/exec", p, "KEY") == hashlib.md5(
        b"/api/v2/rt/exec?auth_id=ab&ip=10.0.0.1&timestamp=1700000000KEY").hexdigest()
    assert signature("//api/v2/info/app", {}, "K") == hashlib.md5(b"/api/v2/info/appK").hexdigest()
    app = web.Application()
    elves_http_setup(app, types.SimpleNamespace(dispatcher=rig.d, db=rig.db), service=rig.elves)
    paths = {r.resource.canonical: r.handler for r in app.router.routes() if r.resource.canonical.startswith("/api/v2")}
    assert set(paths) == set(ROUTES)
    assert all(getattr(h, "fleetrpc_public", False) for h in paths.values())


@pytest.mark.parametrize("method", ["get", "post"])
async def test_rt_exec_runs_on_a_real_agent(rig, api, method):
    await rig.agent("10.0.0.1")
    r = await getattr(api, method)("/api/v2/rt/exec", {
        "ip": "10.0.0.1", "app": "ops", "func": "echo", "param": '{"a": 1}', "proxy": PROXY})
    assert r["flag"] == "true" and r["error"] == "", r
    res = r["result"]
    assert res["worker_flag"] == "1" and res["worker_message"] == 'ops:echo:{"a": 1}' and len(res["id"]) == 16
    log = await rig.app.call("tasklog", "getTaskByIds", id=[res["id"]])
    assert log["info"][0]["type"] == "rt" and '"timeout":90' in log["info"][0]["instruct"]


async def test_signature_errors_in_elves_order(rig, api):
    path, ok = "/api/v2/rt/exec", {"ip": "10.0.0.1", "app": "ops", "func": "echo"}
    now = int(time.time())
    cases = [
        (dict(sign_type=""), "[401.1]Unauthorized Missing Sign Param"),
        (dict(sign="deadbeef" * 4, sign_type="sha1"), "[401.3]Unauthorized SignType Is Illegal"),
        (dict(sign="abc"), "[401.4]Unauthorized Sign Length Is Illegal"),
        (dict(ts="17e8"), "[401.8]Unauthorized Timestamp Is Illegal"),
        (dict(ts=now - 200), "[401.7]Unauthorized Sign Timeout"),
        (dict(ts=now + 200), "[401.7]Unauthorized Sign Timeout"),
        (dict(auth_id="0000000000000000"), "[413.1]AuthId Not Found"),
        (dict(auth_key="not-the-key"), "[401.5]Unauthorized Sign Error"),
        (dict(sign="0" * 32), "[401.5]Unauthorized Sign Error"),
    ]
    for kw, error in cases:
        r = await api.get(path, ok, **kw)
        assert r["flag"] == "false" and r["error"] == error, (kw, r)
    # Missing parameters one at a time.
    resp = await api.client.get(path, params={"ip": "10.0.0.1"})
    assert (await resp.json())["error"].startswith("[401.1]")
    # Signed correctly, but not allowed: another app's name, an IP not granted.
    r = await api.get(path, {**ok, "app": "other"})
    assert r["error"].startswith("[401.6]Unauthorized AuthId Permission Denied")
    r = await api.get(path, {**ok, "ip": "10.0.0.77"})
    assert r["error"].startswith("[401.6]") and "10.0.0.77" in r["error"]
    # A parameter changed after signing.
    p = api.signed(path, ok)
    p["func"] = "fail"
    resp = await api.client.get(path, params=p)
    assert (await resp.json())["error"] == "[401.5]Unauthorized Sign Error"


async def test_bad_arguments(rig, api):
    path = "/api/v2/rt/exec"
    for params, code in [
        ({"ip": "10.0.0.1", "func": "echo"}, "[403.3]"),
        ({"ip": "10.0.0.1", "app": "ops"}, "[403.7]"),
        ({"ip": "10.0.0.1.5", "app": "ops", "func": "echo"}, "[403.1]"),
        ({"app": "ops", "func": "echo"}, "[403.1]"),
        ({"ip": "10.0.0.1", "app": "ops", "func": "echo", "param": "{nope"}, "[403.2]"),
        ({"ip": "10.0.0.1", "app": "ops", "func": "echo", "timeout": "soon"}, "[403.8]"),
    ]:
        r = await api.post(path, params)
        assert r["flag"] == "false" and r["error"].startswith(code), (params, r)
    r = await api.get("/api/v2/rt/exec", {"ip": "10.0.0.2", "app": "ops", "func": "echo"})
    assert r["error"].startswith("[414.1]")  # no agent there
    r = await api.get("/api/v2/cron/add", {"ip": "10.0.0.1", "app": "ops", "func": "echo", "rule": "* * *"})
    assert r["error"].startswith("[403.5]")
    r = await api.get("/api/v2/cron/add", {"ip": "10.0.0.1", "app": "ops", "func": "echo", "rule": "0 * * * * ?",
                                            "mode": "sometimes"})
    assert r["error"].startswith("[403.4]")
    for op in ("start", "stop", "delete", "detail"):
        assert (await api.get(f"/api/v2/cron/{op}", {"cron_id": "short"}))["error"].startswith("[403.9]")
        assert (await api.get(f"/api/v2/cron/{op}", {"cron_id": "F" * 16}))["error"].startswith("[411.1]")
    for op in ("commit", "stop", "result"):
        assert (await api.get(f"/api/v2/queue/{op}", {}))["error"].startswith("[403.6]")
        assert (await api.get(f"/api/v2/queue/{op}", {"queue_id": "F" * 16}))["error"].startswith("[412.1]")


async def test_cron_through_the_openapi(rig, api):
    r = await api.post("/api/v2/cron/add", {"ip": "10.0.0.1", "app": "ops", "func": "echo", "param": '{"x": 2}',
                                             "rule": "0 0 12 ? * WED", "proxy": PROXY})
    assert r["flag"] == "true", r
    cron_id = r["result"]["id"]
    assert r["id"] == cron_id and len(cron_id) == 16
    assert (await api.get("/api/v2/cron/stop", {"cron_id": cron_id}))["flag"] == "true"
    detail = await api.get("/api/v2/cron/detail", {"cron_id": cron_id})
    assert detail["result"]["cron_flag"] == "0" and detail["result"]["rule"] == "0 0 12 ? * WED"
    assert detail["result"]["mode"] == "NP" and detail["result"]["app"] == "ops"
    assert (await api.get("/api/v2/cron/start", {"cron_id": cron_id}))["flag"] == "true"
    assert (await api.get("/api/v2/cron/detail", {"cron_id": cron_id}))["result"]["cron_flag"] == "1"
    assert (await api.post("/api/v2/cron/delete", {"cron_id": cron_id}))["flag"] == "true"
    assert (await api.get("/api/v2/cron/detail", {"cron_id": cron_id}))["error"].startswith("[411.1]")


async def test_queue_and_info_through_the_openapi(rig, api):
    await rig.agent("10.0.0.1")
    done = asyncio.Event()

    async def hook(row):
        done.set()

    rig.elves.scheduler.on_result("queue", hook)
    r = await api.post("/api/v2/queue/create", {"app": "ops"})
    qid = r["result"]["id"]
    a = await api.post("/api/v2/queue/addtask", {"queue_id": qid, "ip": "10.0.0.1", "func": "echo", "proxy": PROXY})
    b = await api.post("/api/v2/queue/addtask", {"queue_id": qid, "ip": "10.0.0.1", "func": "echo", "proxy": PROXY,
                                                 "depend_task_id": a["id"]})
    bad = await api.post("/api/v2/queue/addtask", {"queue_id": qid, "ip": "10.0.0.1", "func": "echo",
                                                   "depend_task_id": "nope"})
    assert bad["error"].startswith("[412.4]")
    assert (await api.get("/api/v2/queue/commit", {"queue_id": qid}))["flag"] == "true"
    for _ in range(200):
        r = await api.get("/api/v2/queue/result", {"queue_id": qid})
        if r["status"] == "finished":
            break
        done.clear()
        try:
            await asyncio.wait_for(done.wait(), 0.5)
        except asyncio.TimeoutError:
            pass
    assert r["status"] == "finished"
    assert r["result"][a["id"]]["status"] == "finish" and r["result"][b["id"]]["depend_task_id"] == a["id"]
    assert (await api.get("/api/v2/queue/stop", {"queue_id": qid}))["result"] == {a["id"]: "finish", b["id"]: "finish"}
    info = await api.get("/api/v2/info/app")
    assert info["result"]["app"] == "ops" and info["flag"] == "true"
    agents = await api.get("/api/v2/info/agents")
    assert sorted(agents["result"]) == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.9.9.9"]


async def test_another_tenants_auth_id_reaches_only_its_own(rig, api):
    other = await rig.elves.supervisor.create_app("a1b2c3d4-0000-4000-8000-000000000001", "ops")
    await rig.elves.supervisor.grant(other.tenant_id, "ops", ips=["10.0.0.1"])
    r = await api.post("/api/v2/cron/add", {"ip": "10.0.0.1", "app": "ops", "func": "echo", "rule": "0 * * * * ?"})
    cron_id = r["id"]
    theirs = await api.get("/api/v2/cron/detail", {"cron_id": cron_id}, auth_id=other.auth_id, auth_key=other.auth_key)
    assert theirs["error"].startswith("[411.1]")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(ROUTES), params=st.dictionaries(
    st.sampled_from(["ip", "app", "func", "param", "timeout", "mode", "rule", "cron_id", "queue_id", "depend_task_id"]),
    st.text(max_size=30), max_size=6))
async def test_any_signed_parameters_get_an_elves_answer(rig, api, path, params):
    r = await api.post(path, params)
    assert r["flag"] in ("true", "false")
    if r["flag"] == "false":
        assert r["error"].startswith("[") and not r["error"].startswith("[500]"), r
