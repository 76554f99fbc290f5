"""EMQX's HTTP authn/authz hooks over real HTTP, on both databases, with
EMQX's request and response formats (EMQX itself cannot be installed on the
build machine: see docs/emqx.md); and the one device ACL rule both brokers
enforce."""

from __future__ import annotations

import types
import uuid

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetrpc.broker_auth.acl import DeviceAcl, filter_within, topic_matches
from fleetrpc.broker_auth.emqx import AUTHN_PATH, AUTHZ_PATH, EmqxHooks, EmqxSection, setup

SECRET = "s" * 24
HEADERS = {"X-Fleetrpc-Hook-Secret": SECRET}


@pytest.fixture
async def hooks(repos):
    tenant = await repos.tenants.create("T")
    a = await repos.devices.create(tenant.id, "a", access_token="token-a")
    b = await repos.devices.create(tenant.id, "b", access_token="token-b")
    ctx = types.SimpleNamespace(
        devices=repos.devices,
        settings=types.SimpleNamespace(
            emqx=EmqxSection(enabled=True, secret=SECRET),
            mqtt=types.SimpleNamespace(username="fleetrpc-server", password="server-pw"),
            dispatch=types.SimpleNamespace(prefix="fleetrpc"),
        ),
    )
    app = web.Application()
    setup(app, ctx)
    async with TestClient(TestServer(app)) as client:
        yield client, a, b, repos


async def _post(client, path, body, headers=HEADERS):
    resp = await client.post(path, data=msgspec.json.encode(body), headers={**headers, "Content-Type": "application/json"})
    return resp.status, await resp.json()


async def test_authn(hooks):
    client, a, b, repos = hooks
    status, body = await _post(client, AUTHN_PATH, {"username": "token-a", "password": "", "clientid": "x"})
    assert status == 200
    assert body == {"result": "allow", "is_superuser": False,
                    "client_attrs": {"device_id": a.id, "tenant_id": a.tenant_id}}
    # ThingsBoard firmware sends no password; Mosquitto-style clients send the token.
    assert (await _post(client, AUTHN_PATH, {"username": "token-a"}))[1]["result"] == "allow"
    assert (await _post(client, AUTHN_PATH, {"username": "token-a", "password": "token-a"}))[1]["result"] == "allow"
    for bad in ({"username": "token-a", "password": "guess"}, {"username": "nope", "password": ""},
                {"username": None}, {}, {"username": "fleetrpc-server", "password": "wrong"}):
        assert await _post(client, AUTHN_PATH, bad) == (200, {"result": "deny"})
    assert await _post(client, AUTHN_PATH, {"username": "fleetrpc-server", "password": "server-pw"}) == (
        200, {"result": "allow", "is_superuser": True})
    # A deleted device is refused at once.
    await repos.devices.delete(a.tenant_id, a.id)
    assert (await _post(client, AUTHN_PATH, {"username": "token-a", "password": ""}))[1] == {"result": "deny"}


async def test_authz(hooks):
    client, a, b, _ = hooks
    p = "fleetrpc"

    async def decide(username, action, topic, mountpoint=""):
        status, body = await _post(client, AUTHZ_PATH, {"username": username, "action": action, "topic": topic,
                                                       "mountpoint": mountpoint, "clientid": "c"})
        assert status == 200
        return body["result"]

    assert await decide("token-a", "subscribe", f"{p}/d/{a.id}/req/#") == "allow"
    assert await decide("token-a", "subscribe", f"{p}/d/{a.id}/ret/+") == "allow"
    assert await decide("token-a", "publish", f"{p}/d/{a.id}/res/node/1") == "allow"
    assert await decide("token-a", "publish", f"{p}/d/{a.id}/call/7") == "allow"
    assert await decide("token-a", "publish", f"{p}/d/{a.id}/presence") == "allow"
    for action, topic in [
        ("subscribe", f"{p}/d/{b.id}/req/#"), ("subscribe", f"{p}/d/+/req/#"), ("subscribe", "#"),
        ("subscribe", f"$share/g/{p}/d/{a.id}/req/#"), ("publish", f"{p}/d/{b.id}/res/node/1"),
        ("publish", f"{p}/d/{a.id}/req/node/1"), ("publish", f"{p}/d/{a.id}/ret/1"), ("publish", f"{p}/elves/x/call"),
        ("retain", f"{p}/d/{a.id}/hb"),
    ]:
        assert await decide("token-a", action, topic) == "deny", (action, topic)
    assert await decide("unknown-token", "publish", f"{p}/d/{a.id}/hb") == "deny"
    assert await decide("fleetrpc-server", "publish", f"{p}/d/{a.id}/req/node/1") == "allow"
    # ThingsBoard firmware behind a per-device mountpoint: its own API, nothing else.
    mp = f"tb/{a.id}/"
    assert await decide("token-a", "subscribe", "v1/devices/me/rpc/request/+", mp) == "allow"
    assert await decide("token-a", "publish", "v1/devices/me/rpc/response/42", mp) == "allow"
    assert await decide("token-a", "publish", f"{p}/d/{a.id}/res/node/1", mp) == "deny"
    assert await decide("token-a", "subscribe", "#", mp) == "deny"


async def test_secret_and_bad_bodies(hooks):
    client, a, _, _ = hooks
    for headers in ({}, {"X-Fleetrpc-Hook-Secret": "wrong" * 5}):
        status, body = await _post(client, AUTHN_PATH, {"username": "token-a"}, headers=headers)
        assert status == 401 and body["result"] == "ignore"
    for raw in (b"{", b"[]", b'{"username": 5}', b"\xff"):
        resp = await client.post(AUTHZ_PATH, data=raw, headers=HEADERS)
        assert resp.status == 400 and (await resp.json())["result"] == "ignore"
    resp = await client.post(AUTHN_PATH, data=b"x" * 20000, headers=HEADERS)
    assert resp.status == 413


@settings(max_examples=60, deadline=None)
@given(body=st.dictionaries(st.sampled_from(["username", "password", "topic", "action", "mountpoint", "clientid"]),
                            st.none() | st.text(max_size=40) | st.integers() | st.lists(st.text(max_size=3), max_size=2),
                            max_size=6))
def test_hooks_never_fail_on_any_body(body):
    import asyncio

    class NoDevices:
        async def by_token(self, token):
            return None

    async def run():
        app = web.Application()
        hooks = EmqxHooks(NoDevices(), secret=SECRET, server_username="srv", server_password="pw")
        app.router.add_post(AUTHN_PATH, hooks.authn)
        app.router.add_post(AUTHZ_PATH, hooks.authz)
        async with TestClient(TestServer(app)) as client:
            for path in (AUTHN_PATH, AUTHZ_PATH):
                resp = await client.post(path, data=msgspec.json.encode(body), headers=HEADERS)
                assert resp.status in (200, 400)
                assert (await resp.json())["result"] in ("allow", "deny", "ignore")
                if body.get("username") not in ("srv",):
                    assert (await resp.json())["result"] != "allow"

    asyncio.run(run())


def test_hooks_disabled_or_unsafe_by_configuration():
    app = web.Application()
    setup(app, types.SimpleNamespace(settings=types.SimpleNamespace(), devices=None))
    setup(app, types.SimpleNamespace(settings=types.SimpleNamespace(emqx=EmqxSection()), devices=None))
    assert not list(app.router.routes())
    with pytest.raises(ValueError, match="secret"):
        setup(app, types.SimpleNamespace(settings=types.SimpleNamespace(emqx=EmqxSection(enabled=True)), devices=None))
    with pytest.raises(ValueError, match="16 characters"):
        EmqxHooks(None, secret="short")
    assert EmqxHooks.authn.fleetrpc_public and EmqxHooks.authz.fleetrpc_public


# -- the ACL rule itself --------------------------------------------------------------

levels = st.sampled_from(["a", "b", "+", "#", "d", "x1"])
filters = st.lists(levels, min_size=1, max_size=5).map("/".join)
topics = st.lists(st.sampled_from(["a", "b", "d", "x1"]), min_size=1, max_size=6).map("/".join)


@settings(max_examples=500, deadline=None)
@given(pattern=filters, sub=filters, topic=topics)
def test_a_filter_within_a_pattern_matches_only_what_the_pattern_matches(pattern, sub, topic):
    if filter_within(pattern, sub) and topic_matches(sub, topic):
        assert topic_matches(pattern, topic)


def test_device_acl():
    device = str(uuid.uuid4())
    acl = DeviceAcl.fleetrpc("acme/prod", device)
    base = f"acme/prod/d/{device}"
    assert acl.may_subscribe(f"{base}/req/#") and acl.may_subscribe(f"{base}/req/n1/+")
    assert not acl.may_subscribe(f"{base}/#") and not acl.may_subscribe(f"{base}/req/#/x")
    assert acl.may_publish(f"{base}/ack/n1/5") and acl.may_publish(f"{base}/hb")
    assert not acl.may_publish(f"{base}/hb/extra") and not acl.may_publish(f"{base}/res/+")
    assert not acl.may_publish(f"{base}/call/1/2")
