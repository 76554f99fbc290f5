"""cmdbproxy: CSV import over HTTP, lookups over MQTT and HTTP in the seed's
spelling and the intended one, tenant isolation, category grants, and the
upstream CMDB with its cache."""

from __future__ import annotations

import types

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetrpc.services.elves import NULL_TENANT
from fleetrpc.services.elves.cmdb import CmdbSettings, parse_csv
from fleetrpc.services.elves.errors import ElvesError
from tests.elves.conftest import elves_http, fake_auth

pytestmark = pytest.mark.mqtt

OTHER_TENANT = "a1b2c3d4-0000-4000-8000-000000000001"
CSV = (
    "ip,sn,iplist,idc,main_cat,sub_cat,app_info,manager\n"
    '10.0.0.1,SN001,"10.0.0.1,192.168.0.1",bj-1,web,nginx,shop,alice\n'
    "10.0.0.2,SN002,10.0.0.2,sh-2,db,mysql,,bob\n"
)


@pytest.fixture
async def http(rig):
    async with elves_http(rig, fake_auth) as client:
        async def upload(body, *, authority="TENANT_ADMIN", tenant=NULL_TENANT, query=""):
            headers = {"X-Test-Authority": authority, "X-Test-Tenant": tenant, "Content-Type": "text/csv"}
            resp = await client.post("/api/elves/cmdb" + query, data=body, headers=headers)
            return resp.status, await resp.json()

        async def post(envelope, tenant=NULL_TENANT):
            resp = await client.post("/api/elves", json=envelope,
                                     headers={"X-Test-Authority": "TENANT_ADMIN", "X-Test-Tenant": tenant})
            return await resp.json()

        yield types.SimpleNamespace(upload=upload, post=post)


@pytest.mark.parametrize("mqf", ["getCmdbInfoByIp", "checkipauthbykey", "GETCMDBINFOBYIP"])
async def test_lookup_over_mqtt(rig, http, mqf):
    status, r = await http.upload(CSV)
    assert status == 200 and r["result"] == {"imported": 2, "replaced": False}, r
    r = await rig.app.call("cmdbproxy", mqf, agentip="10.0.0.1")
    assert r["flag"] == "true", r
    assert {k: r[k] for k in ("sn", "iplist", "idc", "main_cat", "sub_cat", "app_info", "manager")} == {
        "sn": "SN001", "iplist": "10.0.0.1,192.168.0.1", "idc": "bj-1", "main_cat": "web", "sub_cat": "nginx",
        "app_info": "shop", "manager": "alice"}
    missing = await rig.app.call("cmdbproxy", mqf, agentip="10.0.0.9")
    assert missing["flag"] == "false" and missing["error"] == "[414.1]Cmdb Info Not Found: 10.0.0.9"
    bad = await rig.app.call("cmdbproxy", mqf, agentip="nowhere")
    assert bad["error"].startswith("[403.1]")


@pytest.mark.parametrize("mqf", ["getCmdbInfoByIpList", "checkipauthbykey"])
async def test_list_lookup_over_mqtt_and_http(rig, http, mqf):
    await http.upload(CSV)
    ips = ["10.0.0.2", "10.0.0.9", "10.0.0.1"]
    r = await rig.app.call("cmdbproxy", mqf, agentiplist=ips)
    assert [(i["ip"], i["found"], i["sn"]) for i in r["info"]] == [
        ("10.0.0.2", True, "SN002"), ("10.0.0.9", False, ""), ("10.0.0.1", True, "SN001")]
    r = await http.post({"mqt": "call", "mqs": "cmdbproxy", "mqf": mqf, "agentiplist": ips})
    assert [i["found"] for i in r["info"]] == [True, False, True]
    r = await http.post({"mqt": "call", "mqs": "cmdbproxy", "mqf": "getCmdbInfoByIp", "agentip": "10.0.0.2"})
    assert r["idc"] == "sh-2"
    bad = await rig.app.call("cmdbproxy", mqf, agentiplist="10.0.0.1")
    assert bad["flag"] == "false" and bad["error"].startswith("[403.")


async def test_import_replace_errors_and_tenants(rig, http):
    await http.upload(CSV)
    status, r = await http.upload("ip,sn\n10.0.0.3,SN003\n", query="?replace=true")
    assert status == 200 and r["result"]["replaced"] is True
    r = await rig.app.call("cmdbproxy", "getCmdbInfoByIpList", agentiplist=["10.0.0.1", "10.0.0.3"])
    assert [i["found"] for i in r["info"]] == [False, True]
    # Upsert: a second import updates the row.
    await http.upload("ip,manager\n10.0.0.3,carol\n")
    assert (await rig.app.call("cmdbproxy", "getCmdbInfoByIp", agentip="10.0.0.3"))["manager"] == "carol"
    for body, msg in [
        ("sn\nSN1\n", "needs an 'ip' column"),
        ("ip,colour\n10.0.0.1,red\n", "unknown columns"),
        ("ip,sn\n10.0.0.x,SN\n10.0.0.1,a\n10.0.0.1,b\n", "line 2: bad ip"),
        ("ip,sn\n10.0.0.1,a\n10.0.0.1,b\n", "line 3: ip 10.0.0.1 appears twice"),
        ("ip,sn\n10.0.0.1,a,extra\n", "more fields"),
        (b"ip\n\xff\xfe\n", "not UTF-8"),
    ]:
        status, r = await http.upload(body)
        assert status == 400 and r["flag"] == "false" and msg in r["error"], (body, r)
    status, r = await http.upload(CSV, authority="CUSTOMER_USER")
    assert status == 403 and r["error"].startswith("[401.6]")
    # Another tenant's import is its own; neither sees the other's rows.
    await http.upload("ip,sn\n10.0.0.3,THEIRS\n", tenant=OTHER_TENANT)
    assert (await rig.app.call("cmdbproxy", "getCmdbInfoByIp", agentip="10.0.0.3"))["sn"] == "SN003"
    theirs = await http.post({"mqt": "call", "mqs": "cmdbproxy", "mqf": "getCmdbInfoByIp", "agentip": "10.0.0.3"},
                             tenant=OTHER_TENANT)
    assert theirs["sn"] == "THEIRS"


async def test_category_grants_use_the_cmdb(rig, http):
    await http.upload(CSV)
    await rig.agent("10.0.0.2")
    key = await rig.elves.supervisor.create_app(NULL_TENANT, "dba")
    await rig.elves.supervisor.grant(NULL_TENANT, "dba", main_cats=["db"])
    dba = await rig.client("dba", key=key.auth_key)
    ok = await dba.call("supervisor", "checkIpAuthByKey", agentip="10.0.0.2", key=key.auth_key)
    assert ok["status"] == "true"
    denied = await dba.call("supervisor", "checkIpAuthByKey", agentip="10.0.0.1", key=key.auth_key)
    assert denied["status"] == "false"
    r = await dba.call("scheduler", "sendSync", agentip="10.0.0.1", ins={"app": "dba", "func": "x"})
    assert r["error"].startswith("[401.6]")


async def test_upstream_cmdb_with_a_cache(rig):
    seen: list[str] = []

    async def host(request):
        ip = request.match_info["ip"]
        seen.append(ip)
        if ip == "10.0.0.7":
            return web.json_response({"data": {"sn": "UP7", "iplist": ["10.0.0.7", "10.1.0.7"], "main_cat": "web"}})
        return web.json_response({"error": "no such host"}, status=404)

    upstream = web.Application()
    upstream.router.add_get("/host/{ip}", host)
    server = TestServer(upstream)
    await server.start_server()
    try:
        cmdb = rig.elves.cmdb
        cmdb.settings = CmdbSettings(upstream_url=str(server.make_url("/host/{ip}")).replace("%7Bip%7D", "{ip}"),
                                     cache_ttl_s=3600)
        for _ in range(2):
            r = await rig.app.call("cmdbproxy", "getCmdbInfoByIp", agentip="10.0.0.7")
            assert r["sn"] == "UP7" and r["iplist"] == "10.0.0.7,10.1.0.7" and r["idc"] == ""
            nf = await rig.app.call("cmdbproxy", "getCmdbInfoByIp", agentip="10.0.0.8")
            assert nf["error"].startswith("[414.1]")
        assert seen == ["10.0.0.7", "10.0.0.8"]  # the second round came from the cache
        cmdb._cache.clear()
        cmdb.settings = CmdbSettings(upstream_url=cmdb.settings.upstream_url, cache_ttl_s=0)
        await rig.app.call("cmdbproxy", "getCmdbInfoByIp", agentip="10.0.0.7")
        await rig.app.call("cmdbproxy", "getCmdbInfoByIp", agentip="10.0.0.7")
        assert seen[2:] == ["10.0.0.7", "10.0.0.7"]
    finally:
        await server.close()
    cmdb._cache.clear()
    down = await rig.app.call("cmdbproxy", "getCmdbInfoByIp", agentip="10.0.0.7")
    assert down["flag"] == "false" and down["error"].startswith("[500]CMDB upstream unreachable")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_csv_text_parses_or_is_refused_clearly(text):
    try:
        rows = parse_csv(text)
    except ElvesError as err:
        assert err.code == "403.0" and err.message.startswith("Bad CSV")
        return
    assert all("ip" in r and set(r) <= {"ip", "sn", "iplist", "idc", "main_cat", "sub_cat", "app_info", "manager"}
               for r in rows)
