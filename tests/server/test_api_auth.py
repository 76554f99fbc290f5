"""Login, refresh, tokens (errorCode 10 vs 11), locked logins, rate limits,
through real HTTP."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from urllib.parse import urlsplit

import jwt
import pytest

from fleetrpc.api.auth import NULL_UUID

from tests.helpers.waiting import wait_until

from .conftest import SECRET

pytestmark = pytest.mark.mqtt


def _claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


async def _error(api, method, path, token=None, **kw):
    status, body, r = await api.request(method, path, token, **kw)
    return status, json.loads(body) if body else None


async def test_login_token_claims_user_refresh_logout(start_server, world):
    async with start_server() as (server, api):
        status, body, _ = await api.request("POST", "/api/auth/login",
                                            json={"username": world.customer.email, "password": "secret"})
        assert status == 200
        pair = json.loads(body)
        assert set(pair) == {"token", "refreshToken"}
        header = jwt.get_unverified_header(pair["token"])
        assert header["alg"] == "HS512"
        c = _claims(pair["token"])
        assert c["sub"] == world.customer.email and c["userId"] == world.customer.id
        assert c["scopes"] == ["CUSTOMER_USER"] and c["tenantId"] == world.t1 and c["customerId"] == world.c1
        assert c["iss"] == "thingsboard.io" and c["exp"] - c["iat"] == 9000 and c["enabled"] is True
        assert {"sessionId", "firstName", "lastName", "isPublic"} <= set(c)
        r = _claims(pair["refreshToken"])
        assert r["scopes"] == ["REFRESH_TOKEN"] and r["exp"] - r["iat"] == 604800 and "jti" in r
        # the null UUID stands for "no tenant / no customer"
        sa = _claims(await api.login(world.sysadmin.email))
        assert sa["tenantId"] == NULL_UUID and sa["customerId"] == NULL_UUID

        status, body, _ = await api.request("GET", "/api/auth/user", pair["token"])
        assert status == 200 and json.loads(body)["email"] == world.customer.email
        # both header forms
        status, _, _ = await api.request("GET", "/api/auth/user", headers={"Authorization": f"Bearer {pair['token']}"})
        assert status == 200

        status, body, _ = await api.request("POST", "/api/auth/token", json={"refreshToken": pair["refreshToken"]})
        assert status == 200
        fresh = json.loads(body)
        assert _claims(fresh["token"])["sessionId"] != c["sessionId"]
        # a refresh token is no access token
        status, e = await _error(api, "GET", "/api/auth/user", pair["refreshToken"])
        assert (status, e["errorCode"]) == (401, 10)
        assert (await api.request("POST", "/api/auth/logout", fresh["token"]))[0] == 200
        # a disabled user cannot refresh, and its tokens stop working (test_user_lifecycle.py)
        await server.ctx.users.update(world.customer.id, enabled=False)
        status, e = await _error(api, "POST", "/api/auth/token", json={"refreshToken": pair["refreshToken"]})
        assert (status, e["errorCode"], e["message"]) == (401, 10, "User account is not active")
        assert (await api.request("POST", "/api/auth/logout", fresh["token"]))[0] == 401


async def test_token_errors_keep_10_and_11_apart(start_server, world):
    async with start_server() as (server, api):
        good = await api.login(world.tenant.email)
        claims = _claims(good)
        now = int(time.time())
        expired = jwt.encode({**claims, "iat": now - 100, "exp": now - 10}, SECRET, algorithm="HS512")
        forged = jwt.encode(claims, "another-secret-" + "y" * 60, algorithm="HS512")
        wrong_issuer = jwt.encode({**claims, "iss": "evil"}, SECRET, algorithm="HS512")
        cases = {
            None: (10, "Authentication failed"),
            "not.a.jwt": (10, "Invalid username or password"),
            "garbage": (10, "Invalid username or password"),
            wrong_issuer: (10, "Invalid username or password"),
            expired: (11, "Token has expired"),
            forged: (11, "Token has expired"),  # ThingsBoard maps a bad signature to "expired"
        }
        for token, (code, message) in cases.items():
            status, e = await _error(api, "GET", "/api/auth/user", token)
            assert (status, e["errorCode"], e["message"]) == (401, code, message), token
        # a header that is not "Bearer ..." is no token
        status, e = await _error(api, "GET", "/api/auth/user", headers={"X-Authorization": good})
        assert (status, e["errorCode"]) == (401, 10)
        # every /api route asks for a token before anything else
        status, e = await _error(api, "POST", f"/api/rpc/twoway/{world.dev_t1.id}", json={"method": "x"})
        assert (status, e["errorCode"]) == (401, 10)


async def test_secret_rotation_keeps_old_tokens_valid(start_server, world):
    async with start_server() as (server, api):
        old = await api.login(world.tenant.email)
    new_secret = "rotated-secret-" + "z" * 60
    async with start_server(jwt={"secret": new_secret, "previous_secrets": [SECRET]}) as (server, api):
        assert (await api.request("GET", "/api/auth/user", old))[0] == 200
        token = await api.login(world.tenant.email)
        jwt.decode(token, new_secret, algorithms=["HS512"], options={"verify_aud": False})


async def test_login_failures(start_server, world):
    async with start_server(auth={"max_failed_logins": 3, "lockout_s": 600}) as (server, api):
        for body in (b"{", b"[]", json.dumps({"username": "", "password": "x"}).encode()):
            status, e = await _error(api, "POST", "/api/auth/login", data=body, headers={"Content-Type": "application/json"})
            assert (status, e["errorCode"], e["message"]) == (401, 10, "Authentication failed")
        for _ in range(3):
            status, e = await _error(api, "POST", "/api/auth/login", json={"username": world.tenant.email, "password": "bad"})
            assert (status, e["errorCode"], e["message"]) == (401, 10, "Invalid username or password")
        # locked now: even the right password is refused
        status, e = await _error(api, "POST", "/api/auth/login", json={"username": world.tenant.email, "password": "secret"})
        assert (status, e["errorCode"], e["message"]) == (401, 10, "User account is locked due to security policy")
        # other accounts are not affected
        await api.login(world.customer.email)


async def test_rate_limits(start_server, world):
    async with start_server(rate_limits={"user_per_s": 0.001, "user_burst": 3}) as (server, api):
        token = await api.login(world.tenant.email)
        statuses = [(await api.request("GET", "/api/auth/user", token))[0] for _ in range(3)]
        assert statuses == [200, 200, 200]
        status, e = await _error(api, "GET", "/api/auth/user", token)
        assert (status, e["errorCode"], e["message"]) == (429, 33, "Too many requests for current user!")
        other = await api.login(world.customer.email)
        assert (await api.request("GET", "/api/auth/user", other))[0] == 200
    async with start_server(rate_limits={"tenant_per_s": 0.001, "tenant_burst": 2}) as (server, api):
        a = await api.login(world.tenant.email)
        b = await api.login(world.customer.email)  # same tenant
        assert (await api.request("GET", "/api/auth/user", a))[0] == 200
        assert (await api.request("GET", "/api/auth/user", b))[0] == 200
        status, e = await _error(api, "GET", "/api/auth/user", a)
        assert (status, e["errorCode"], e["message"]) == (429, 33, "Too many requests for current tenant!")
        # another tenant has its own bucket
        assert (await api.request("GET", "/api/auth/user", await api.login(world.tenant2.email)))[0] == 200


class _GatedHasher:
    """A password hasher whose checks wait for ``gate``: logins that pile
    up while the hashing threads are busy."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.checking = 0

    def verify(self, stored, password):
        self.checking += 1
        self.gate.wait(30)
        return self.inner.verify(stored, password)

    def __getattr__(self, name):
        return getattr(self.inner, name)


async def test_a_burst_of_logins_is_bounded_and_keeps_the_default_executor_free(start_server, world):
    """Password checks run on threads of their own: a burst of logins never
    holds the loop's default executor (host name lookups of reconnects),
    and past ``max_waiting_hashes`` a login is answered 429 at once."""
    async with start_server() as (server, api):
        users = server.ctx.users
        users.hasher = gated = _GatedHasher(users.hasher)
        users.max_waiting_hashes = 8
        login = {"username": world.tenant.email, "password": "secret"}
        try:
            waiting = [asyncio.ensure_future(api.request("POST", "/api/auth/login", json=login)) for _ in range(8)]
            await wait_until(lambda: gated.checking >= 2)
            # more logins wait than the default executor has threads, yet it answers
            assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 5) == "free"
            await wait_until(lambda: users._waiting_hashes == 8)
            status, e = await _error(api, "POST", "/api/auth/login", json=login)
            assert (status, e["errorCode"], e["message"]) == (429, 33, "Too many logins at once: try again in a moment")
            assert (await api.request("POST", "/api/auth/login", json=login))[2].headers["Retry-After"] == "1"
        finally:
            gated.gate.set()
        assert [r[0] for r in await asyncio.gather(*waiting)] == [200] * 8
        assert users._waiting_hashes == 0
        await api.login(world.tenant.email)
        # the API's description says so (a client generated from it expects it)
        answers = json.loads((await api.request("GET", "/api/openapi.json"))[1])["paths"]["/api/auth/login"]["post"]
        assert {"401", "429"} <= answers["responses"].keys()


async def _raw_get(url: str, path: str, header: bytes) -> tuple[int, bytes]:
    """GET with a header as raw bytes (aiohttp's client sends no invalid UTF-8)."""
    u = urlsplit(url)
    reader, writer = await asyncio.open_connection(u.hostname, u.port)
    try:
        writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + header + b"\r\nConnection: close\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_non_utf8_auth_headers_are_refused_not_a_500(start_server, world):
    """aiohttp decodes header bytes that are no UTF-8 to lone surrogates; a
    token or metrics token made of them is a 401 in ThingsBoard's shape."""
    async with start_server(http={"metrics_token": "scrape-" + "m" * 20}) as (server, api):
        url = server.ctx.url
        for path, header, message in (
            ("/metrics", b"Authorization: Bearer \xff\xfe", "metrics need Authorization: Bearer <http.metrics_token>"),
            ("/metrics", b"Authorization: \xc3\x28", "metrics need Authorization: Bearer <http.metrics_token>"),
            ("/api/auth/user", b"X-Authorization: Bearer \xff\xfe", "Invalid username or password"),
            ("/api/auth/user", b"Authorization: Bearer a\xed\xa0\x80.b.c", "Invalid username or password"),
            ("/api/auth/user", b"X-Authorization: ApiKey \xff\xfe", "Invalid username or password"),
        ):
            status, body = await _raw_get(url, path, header)
            e = json.loads(body)
            assert (status, e["errorCode"], e["message"]) == (401, 10, message), header
        # still served to the right token
        status, body, _ = await api.request("GET", "/metrics", headers={"Authorization": "Bearer scrape-" + "m" * 20})
        assert status == 200 and b"fleetrpc_" in body


async def test_the_error_log_never_shows_a_device_token(start_server, world, caplog, monkeypatch):
    """A request to ThingsBoard's device API (/api/v1/{token}/...) that fails
    unexpectedly is logged with its path, the token masked as in the access log."""
    import logging

    from fleetrpc.errors import StoreError

    from tests.endpoint.test_server import ENDPOINT

    token = "device-secret-" + "q" * 12
    async with start_server(endpoint=ENDPOINT) as (server, api):
        ep = server.ctx.endpoint
        for exc in (StoreError("the database is down"), RuntimeError("a bug")):  # (both end as a 500)
            def authenticate(username, password, client_id, exc=exc):
                raise exc

            monkeypatch.setattr(ep, "_authenticate", authenticate)
            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="fleetrpc.api"):
                assert (await api.request("GET", f"/api/v1/{token}/rpc?timeout=50"))[0] == 500
                assert (await api.request("POST", f"/api/v1/{token}/telemetry", json={"t": 1}))[0] == 500
            lines = [r.getMessage() for r in caplog.records if r.name == "fleetrpc.api"]
            assert len(lines) == 2 and all("/api/v1/***/" in line for line in lines), lines
            assert token not in caplog.text


@pytest.mark.parametrize("token", ["", "  ", " scrape-me", "scrape-me\n"])
def test_a_metrics_token_no_header_can_carry_is_refused_at_start(tmp_path, token):
    """An empty http.metrics_token (or spaces around one) would refuse every
    scrape: the server does not start with it, and says why."""
    from fleetrpc.config import load_server_settings
    from fleetrpc.errors import ValidationError

    path = tmp_path / "fleetrpc.toml"
    path.write_text(f"[http]\nmetrics_token = {json.dumps(token)}\n")
    with pytest.raises(ValidationError, match="http.metrics_token must not be empty"):
        load_server_settings(path, env={})
    with pytest.raises(ValidationError, match="http.metrics_token must not be empty"):
        load_server_settings(env={}, overrides={"http": {"metrics_token": token}})
    assert load_server_settings(env={}, overrides={"http": {"metrics_token": "scrape-me"}}).http.metrics_token
