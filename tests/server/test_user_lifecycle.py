"""Users' lifecycle through the real server (SQLite and PostgreSQL):
deleting, listing, enabling and disabling users, changing one's password
(ThingsBoard's UserController and AuthController, driven with
tb-rest-client where it has the method), and token revocation: a deleted
or disabled user's tokens, and every token from before a password change,
stop working at once -- on this node, on another node of the same
database, and for an open console event stream."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from tb_rest_client.models.change_password_request import ChangePasswordRequest
from tb_rest_client.rest import ApiException
from tb_rest_client.rest_client import RestClient

from fleetrpc.store.entities import UserRepository
from tests.entities_fixtures import CHEAP_HASHER
from tests.helpers.waiting import wait_until
from tests.server.conftest import PASSWORD, SECRET, Api, cluster_nodes

pytestmark = pytest.mark.mqtt


def _err(body: bytes) -> tuple[int, str, int]:
    e = json.loads(body)
    assert set(e) == {"status", "message", "errorCode", "timestamp"}, e
    return e["status"], e["message"], e["errorCode"]


async def _pair(api: Api, email: str, password: str = PASSWORD) -> dict:
    async with api.session.post(f"{api.url}/api/auth/login", json={"username": email, "password": password}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def _refresh(api: Api, refresh_token: str) -> tuple[int, bytes]:
    status, body, _ = await api.request("POST", "/api/auth/token", json={"refreshToken": refresh_token})
    return status, body


def _client(url: str, email: str, password: str = PASSWORD) -> RestClient:
    client = RestClient(base_url=url)
    client.login(username=email, password=password)
    return client


def _status(fn, *args, **kw) -> int:
    """The HTTP status tb-rest-client met (200 when the call succeeded)."""
    try:
        fn(*args, **kw)
    except ApiException as exc:
        return exc.status
    return 200


EXPIRED = (401, "Token has expired", 11)


# -- DELETE /api/user/{userId} -----------------------------------------------------------


async def test_delete_user_who_may_and_the_deleted_tokens(start_server, world):
    async with start_server() as (server, api):
        url = server.ctx.url
        victim = await _pair(api, world.customer2.email)
        tenant = await api.login(world.tenant.email)
        sysadmin = await api.login(world.sysadmin.email)
        customer = await api.login(world.customer.email)

        def as_tenant() -> dict:
            c = _client(url, world.tenant.email)
            try:
                return {
                    "other_tenant": _status(c.delete_user, world.customer3.id),
                    "sysadmin": _status(c.delete_user, world.sysadmin.id),
                    "itself": _status(c.delete_user, world.tenant.id),
                    "unknown": _status(c.delete_user, "8a7e4f10-0000-4000-8000-000000000000"),
                    "own_customer_user": _status(c.delete_user, world.customer2.id),
                    "again": _status(c.delete_user, world.customer2.id),
                }
            finally:
                c.stop()

        out = await asyncio.to_thread(as_tenant)
        assert out == {"other_tenant": 404, "sysadmin": 404, "itself": 403, "unknown": 404,
                       "own_customer_user": 200, "again": 404}, out
        # the deleted user's access token is refused at once, its refresh token too
        status, body, _ = await api.request("GET", "/api/auth/user", victim["token"])
        assert (status, *_err(body)[1:]) == (401, *EXPIRED[1:])
        status, body = await _refresh(api, victim["refreshToken"])
        assert _err(body) == (401, "Invalid username or password", 10)
        # everyone else still works; tenant 2's users are untouched
        for token in (tenant, sysadmin, customer):
            assert (await api.request("GET", "/api/auth/user", token))[0] == 200
        t2 = await api.login(world.tenant2.email)
        status, body, _ = await api.request("GET", "/api/users?pageSize=10&page=0", t2)
        assert sorted(u["email"] for u in json.loads(body)["data"]) == [world.customer3.email, world.tenant2.email]

        # customer users delete no one; a bad id is ThingsBoard's 400
        status, body, _ = await api.request("DELETE", f"/api/user/{world.customer.id}", customer)
        assert _err(body) == (403, "You don't have permission to perform this operation!", 20)
        status, body, _ = await api.request("DELETE", "/api/user/not-a-uuid", tenant)
        assert _err(body)[::2] == (400, 31)

        # the system administrator: not itself, not a tenant's last administrator
        status, body, _ = await api.request("DELETE", f"/api/user/{world.sysadmin.id}", sysadmin)
        assert _err(body) == (403, "Sysadmin is not allowed to delete himself", 20)
        status, body, _ = await api.request("DELETE", f"/api/user/{world.tenant2.id}", sysadmin)
        assert _err(body) == (400, "At least one tenant administrator must remain!", 31)
        status, body, _ = await api.request("DELETE", f"/api/user/{world.customer3.id}", sysadmin)
        assert status == 403  # customer users are their tenant's business
        status, body, _ = await api.request("POST", "/api/user?sendActivationMail=false", sysadmin, json={
            "email": "second-admin@t2.example", "authority": "TENANT_ADMIN",
            "tenantId": {"entityType": "TENANT", "id": world.t2}})
        assert status == 200, body
        status, _, _ = await api.request("DELETE", f"/api/user/{world.tenant2.id}", sysadmin)
        assert status == 200
        status, body, _ = await api.request("GET", "/api/users?pageSize=10&page=0", t2)
        assert _err(body) == EXPIRED
        with pytest.raises(AssertionError):
            await api.login(world.tenant2.email)


async def test_deleting_a_tenant_revokes_its_users_tokens(start_server, world):
    """However a user row goes (here with its tenant, by the tenants'
    repository), its tokens stop working: the database records it and the
    nodes read it (every ``cluster.poll_interval_s``)."""
    async with start_server(cluster={"poll_interval_s": 0.2}) as (server, api):
        t2 = await api.login(world.tenant2.email)
        c3 = await api.login(world.customer3.email)
        sysadmin = await api.login(world.sysadmin.email)
        status, _, _ = await api.request("DELETE", f"/api/tenant/{world.t2}", sysadmin)
        assert status == 200

        async def refused(token: str) -> bool:
            status, body, _ = await api.request("GET", "/api/auth/user", token)
            return status == 401 and _err(body) == EXPIRED

        for token in (t2, c3):
            for _ in range(100):
                if await refused(token):
                    break
                await asyncio.sleep(0.05)
            assert await refused(token)


# -- listing ---------------------------------------------------------------------------


async def test_user_pages_show_only_the_callers_reach(start_server, world):
    async with start_server() as (server, api):
        url = server.ctx.url

        def pages() -> dict:
            t, c, s = (_client(url, a.email) for a in (world.tenant, world.customer, world.sysadmin))
            try:
                emails = lambda page: sorted(u.email for u in page.data)  # noqa: E731
                return {
                    "tenant_users": emails(t.get_users(page_size=10, page=0)),
                    "tenant_users_p1": [t.get_users(page_size=2, page=1, sort_property="email",
                                                    sort_order="ASC").data[0].email],
                    "customer_users": emails(c.get_users(page_size=10, page=0)),
                    "sysadmin_users": _status(s.get_users, page_size=10, page=0),
                    "c1": emails(t.get_customer_users(world.c1, page_size=10, page=0)),
                    "c3": _status(t.get_customer_users, world.c3, page_size=10, page=0),
                    "c1_by_customer": _status(c.get_customer_users, world.c1, page_size=10, page=0),
                    "admins_t1": emails(s.get_tenant_admins(world.t1, page_size=10, page=0)),
                    "admins_t2": emails(s.get_tenant_admins(world.t2, page_size=10, page=0)),
                    "admins_by_tenant": _status(t.get_tenant_admins, world.t1, page_size=10, page=0),
                    "search": emails(t.get_users(page_size=10, page=0, text_search="CUSTOMERB")),
                }
            finally:
                for client in (t, c, s):
                    client.stop()

        out = await asyncio.to_thread(pages)
        assert out == {
            "tenant_users": sorted([world.tenant.email, world.customer.email, world.customer2.email]),
            "tenant_users_p1": [world.tenant.email],
            "customer_users": [world.customer.email],
            "sysadmin_users": 403,
            "c1": [world.customer.email],
            "c3": 404,  # another tenant's customer is not found
            "c1_by_customer": 403,
            "admins_t1": [world.tenant.email],
            "admins_t2": [world.tenant2.email],
            "admins_by_tenant": 403,
            "search": [world.customer2.email],
        }, out
        # the page's shape, and bad input is ThingsBoard's 400
        tenant = await api.login(world.tenant.email)
        status, body, _ = await api.request("GET", "/api/users?pageSize=2&page=0", tenant)
        page = json.loads(body)
        assert status == 200 and (page["totalElements"], page["totalPages"], page["hasNext"]) == (3, 2, True)
        assert set(page["data"][0]) >= {"id", "email", "authority", "tenantId", "customerId", "additionalInfo"}
        for bad in ("/api/users?page=0", "/api/users?pageSize=x&page=0", "/api/users?pageSize=5&page=0&sortOrder=UP",
                    "/api/users?pageSize=5&page=0&sortProperty=password_hash",
                    "/api/customer/nope/users?pageSize=5&page=0"):
            status, body, _ = await api.request("GET", bad, tenant)
            assert _err(body)[::2] == (400, 31), bad
        sysadmin = await api.login(world.sysadmin.email)
        status, body, _ = await api.request("GET", "/api/tenant/8a7e4f10-0000-4000-8000-000000000000/users"
                                                   "?pageSize=5&page=0", sysadmin)
        assert status == 200 and json.loads(body)["data"] == []  # as ThingsBoard: an empty page


# -- enable / disable ------------------------------------------------------------------


async def test_disabling_a_user_voids_its_tokens_at_once(start_server, world):
    async with start_server() as (server, api):
        url = server.ctx.url
        victim = await _pair(api, world.customer.email)
        assert (await api.request("GET", "/api/auth/user", victim["token"]))[0] == 200

        def disable() -> dict:
            c = _client(url, world.tenant.email)
            try:
                return {
                    "other_tenant": _status(c.set_user_credentials_enabled, world.customer3.id, False),
                    "disable": _status(c.set_user_credentials_enabled, world.customer.id, False),
                }
            finally:
                c.stop()

        assert await asyncio.to_thread(disable) == {"other_tenant": 404, "disable": 200}
        status, body, _ = await api.request("GET", "/api/auth/user", victim["token"])
        assert _err(body) == EXPIRED
        status, body = await _refresh(api, victim["refreshToken"])
        assert _err(body) == (401, "User account is not active", 10)
        status, body, _ = await api.request("POST", "/api/auth/login",
                                            json={"username": world.customer.email, "password": PASSWORD})
        assert _err(body) == (401, "User account is not active", 10)
        # tenant 2's customer user was not touched
        assert (await api.request("GET", "/api/auth/user", await api.login(world.customer3.email)))[0] == 200

        tenant = await api.login(world.tenant.email)
        status, body, _ = await api.request("GET", f"/api/user/{world.customer.id}", tenant)
        assert json.loads(body)["additionalInfo"]["userCredentialsEnabled"] is False
        for bad in ("maybe", "2"):
            status, body, _ = await api.request(
                "POST", f"/api/user/{world.customer.id}/userCredentialsEnabled?userCredentialsEnabled={bad}", tenant)
            assert _err(body)[::2] == (400, 31), bad
        customer2 = await api.login(world.customer2.email)
        status, body, _ = await api.request(
            "POST", f"/api/user/{world.customer.id}/userCredentialsEnabled?userCredentialsEnabled=true", customer2)
        assert status == 403
        # enabled again (the parameter defaults to true): a new login works, the old tokens stay void
        status, _, _ = await api.request("POST", f"/api/user/{world.customer.id}/userCredentialsEnabled", tenant)
        assert status == 200
        fresh = await api.login(world.customer.email)
        assert (await api.request("GET", "/api/auth/user", fresh))[0] == 200
        assert _err((await api.request("GET", "/api/auth/user", victim["token"]))[1]) == EXPIRED
        assert _err((await _refresh(api, victim["refreshToken"]))[1]) == (401, "Token is outdated", 10)


# -- POST /api/auth/changePassword -----------------------------------------------------


async def test_change_password_returns_a_new_pair_and_voids_the_old(start_server, world):
    async with start_server() as (server, api):
        url = server.ctx.url
        old = await _pair(api, world.customer.email)
        other_session = await _pair(api, world.customer.email)
        bystander = await api.login(world.customer2.email)
        token = old["token"]
        for body, message in (
            ({"currentPassword": "wrong!", "newPassword": "new-secret"}, "Current password doesn't match!"),
            ({"currentPassword": PASSWORD, "newPassword": "short"}, "Password must be 6 or more characters in length."),
            ({"currentPassword": PASSWORD, "newPassword": PASSWORD}, "New password should be different from existing!"),
            ({"currentPassword": PASSWORD}, "currentPassword and newPassword should be specified!"),
            ({"currentPassword": PASSWORD, "newPassword": 123456}, "currentPassword and newPassword should be specified!"),
            ([1, 2], "currentPassword and newPassword should be specified!"),
        ):
            status, answer, _ = await api.request("POST", "/api/auth/changePassword", token, json=body)
            assert _err(answer) == (400, message, 31), body
        status, answer, _ = await api.request("POST", "/api/auth/changePassword", token, data=b"{not json")
        assert _err(answer)[::2] == (400, 31)
        assert (await api.request("GET", "/api/auth/user", token))[0] == 200  # nothing changed yet

        def change() -> tuple:
            c = RestClient(base_url=url)
            c.token_login(old["token"], old["refreshToken"])
            try:
                pair = c.change_password(ChangePasswordRequest(current_password=PASSWORD, new_password="new-secret"))
                return pair.token, pair.refresh_token
            finally:
                c.stop()

        new_token, new_refresh = await asyncio.to_thread(change)
        # every older token of the user is void, on any session; the new pair works
        for t in (old["token"], other_session["token"]):
            assert _err((await api.request("GET", "/api/auth/user", t))[1]) == EXPIRED
        for r in (old["refreshToken"], other_session["refreshToken"]):
            assert _err((await _refresh(api, r))[1]) == (401, "Token is outdated", 10)
        status, body, _ = await api.request("GET", "/api/auth/user", new_token)
        assert status == 200 and json.loads(body)["email"] == world.customer.email
        status, body = await _refresh(api, new_refresh)
        assert status == 200
        assert (await api.request("GET", "/api/auth/user", bystander))[0] == 200  # other users untouched
        # the new password logs in, the old one does not
        await api.login(world.customer.email, "new-secret")
        status, body, _ = await api.request("POST", "/api/auth/login",
                                            json={"username": world.customer.email, "password": PASSWORD})
        assert _err(body) == (401, "Invalid username or password", 10)
        # no token, no change
        status, body, _ = await api.request("POST", "/api/auth/changePassword",
                                            json={"currentPassword": "new-secret", "newPassword": "x" * 10})
        assert _err(body) == (401, "Authentication failed", 10)


async def test_change_password_needs_the_tokens_own_user(start_server, world):
    """changePassword checks the current password of the token's email and
    sets the password of the token's user id: a token whose email is
    another user's than its id is refused (401), and changes no one's
    password (before: the email's password set the id's)."""
    import jwt

    async with start_server() as (server, api):
        real = await api.login(world.customer.email)
        claims = jwt.decode(real, options={"verify_signature": False})
        mixed = jwt.encode({**claims, "sub": world.customer2.email}, SECRET, algorithm="HS512")
        status, body, _ = await api.request("POST", "/api/auth/changePassword", mixed,
                                            json={"currentPassword": PASSWORD, "newPassword": "taken-over"})
        assert _err(body) == (401, "Authentication failed", 10)
        for email in (world.customer.email, world.customer2.email):  # both passwords unchanged
            await api.login(email)
        assert (await api.request("GET", "/api/auth/user", real))[0] == 200  # nothing revoked either


def _next_millisecond() -> None:
    """Let the clock leave the current millisecond: a revocation made after
    this is recorded later than any token issued before."""
    now = int(time.time() * 1000)
    while int(time.time() * 1000) <= now:
        time.sleep(0.0001)


async def test_a_password_change_during_a_login_voids_the_pair_it_returns(start_server, world):
    """A login verifies the old password, then the password changes (or the
    user is disabled or deleted) before the pair is signed: the pair must
    be void like any other token from before the change."""
    async with start_server() as (server, api):
        users = server.ctx.users
        reached, release = asyncio.Event(), asyncio.Event()
        reset = users.reset_failed_logins

        async def held_reset(user_id, **kw):  # after the password is verified, before the pair
            if user_id == world.customer.id and not release.is_set():
                reached.set()
                await release.wait()
            return await reset(user_id, **kw)

        users.reset_failed_logins = held_reset
        login = asyncio.ensure_future(_pair(api, world.customer.email))
        await reached.wait()
        _next_millisecond()
        await users.set_password(world.customer.id, "changed-meanwhile")
        release.set()
        pair = await login  # 200: it had verified the old password in time
        users.reset_failed_logins = reset
        assert _err((await api.request("GET", "/api/auth/user", pair["token"]))[1]) == EXPIRED
        assert _err((await _refresh(api, pair["refreshToken"]))[1]) == (401, "Token is outdated", 10)
        token = await api.login(world.customer.email, "changed-meanwhile")
        assert (await api.request("GET", "/api/auth/user", token))[0] == 200


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_a_password_change_elsewhere_during_a_refresh_voids_the_pair_it_returns(start_server, world):
    """A refresh reads the user; another process (``fleetrpc admin
    set-password``) changes the password before the pair is signed; this
    node hears of it at its next reading of the revocations, after it
    checked the refresh token: the new pair must be void then.  (SQLite:
    on PostgreSQL the node's LISTEN would hear of it at once.)"""
    async with start_server(cluster={"poll_interval_s": 3600}) as (server, api):
        users, tokens = server.ctx.users, server.ctx.tokens
        elsewhere = UserRepository(server.ctx.db, hasher=CHEAP_HASHER)  # no listener of this node's
        old = await _pair(api, world.customer.email)
        reached, release = asyncio.Event(), asyncio.Event()
        by_id = users.by_id

        async def held_by_id(user_id):  # after the user is read, before the pair
            user = await by_id(user_id)
            if user_id == world.customer.id and not release.is_set():
                reached.set()
                await release.wait()
            return user

        users.by_id = held_by_id
        refreshing = asyncio.ensure_future(_refresh(api, old["refreshToken"]))
        await reached.wait()
        _next_millisecond()
        await elsewhere.set_password(world.customer.id, "changed-elsewhere")
        release.set()
        status, body = await refreshing
        users.by_id = by_id
        assert status == 200, body  # the node did not know yet
        for user_id, since in (await users.revocations()).items():
            tokens.revoke(user_id, since)  # what its next reading of the table does
        fresh = json.loads(body)
        assert _err((await api.request("GET", "/api/auth/user", fresh["token"]))[1]) == EXPIRED
        assert _err((await _refresh(api, fresh["refreshToken"]))[1]) == (401, "Token is outdated", 10)
        token = await api.login(world.customer.email, "changed-elsewhere")
        assert (await api.request("GET", "/api/auth/user", token))[0] == 200


# -- the console's event stream ----------------------------------------------------------


async def test_console_stream_of_a_disabled_user_ends(start_server, world):
    async with start_server() as (server, api):
        customer = await api.login(world.customer.email)
        customer2 = await api.login(world.customer2.email)
        tenant = await api.login(world.tenant.email)
        hub = server.ctx.console_hub
        async with api.session.get(f"{api.url}/api/console/events?token={customer}") as r1, \
                api.session.get(f"{api.url}/api/console/events?token={customer2}") as r2:
            assert r1.status == r2.status == 200
            assert await r1.content.readline() == b": connected\n"
            await wait_until(lambda: len(hub.streams) == 2)
            status, _, _ = await api.request(
                "POST", f"/api/user/{world.customer.id}/userCredentialsEnabled?userCredentialsEnabled=false", tenant)
            assert status == 200
            # the disabled user's stream ends (EOF), the other one stays open
            rest = await asyncio.wait_for(r1.content.read(), 5)
            assert rest in (b"", b"\n")
            await wait_until(lambda: len(hub.streams) == 1)
            assert next(iter(hub.streams)).principal.user_id == world.customer2.id
        # and the token cannot open a new one
        status, body, _ = await api.request("GET", f"/api/console/events?token={customer}")
        assert _err(body) == EXPIRED


# -- several nodes on one database ---------------------------------------------------------


@pytest.mark.pg
async def test_revocation_reaches_the_other_node_at_once(mqtt_url, fresh_pg_db, tmp_path, world):
    """Disabled on node A: node B refuses the user's token -- through the
    database's notification, well before node B's next look at the table
    (``poll_interval_s`` is 30 s here)."""
    async with cluster_nodes(mqtt_url, fresh_pg_db, tmp_path, world) as ((a, b), servers):
        victim = await _pair(b, world.customer.email)
        other = await b.login(world.customer2.email)
        assert (await b.request("GET", "/api/auth/user", victim["token"]))[0] == 200  # cached on B now
        tenant = await a.login(world.tenant.email)
        status, _, _ = await a.request(
            "POST", f"/api/user/{world.customer.id}/userCredentialsEnabled?userCredentialsEnabled=false", tenant)
        assert status == 200
        tokens_b = servers[1].ctx.tokens
        await wait_until(lambda: tokens_b.is_outdated(world.customer.id, 0), timeout=3.0)
        status, body, _ = await b.request("GET", "/api/auth/user", victim["token"])
        assert _err(body) == EXPIRED
        assert _err((await _refresh(b, victim["refreshToken"]))[1]) == (401, "User account is not active", 10)
        assert (await b.request("GET", "/api/auth/user", other))[0] == 200

        # a password changed on B: A refuses the older tokens, takes the new pair
        old = await _pair(a, world.customer2.email)
        status, body, _ = await b.request("POST", "/api/auth/changePassword", other,
                                          json={"currentPassword": PASSWORD, "newPassword": "new-secret"})
        assert status == 200
        new = json.loads(body)
        tokens_a = servers[0].ctx.tokens
        await wait_until(lambda: tokens_a.is_outdated(world.customer2.id, old_ms(old["token"]) + 1), timeout=3.0)
        assert _err((await a.request("GET", "/api/auth/user", old["token"]))[1]) == EXPIRED
        assert (await a.request("GET", "/api/auth/user", new["token"]))[0] == 200


def old_ms(token: str) -> int:
    import jwt

    return jwt.decode(token, options={"verify_signature": False})["iatMs"]


async def test_a_node_started_later_knows_earlier_revocations(start_server, world):
    """The revocations are in the database: a restarted server refuses the
    tokens voided before it started."""
    async with start_server() as (server, api):
        victim = await _pair(api, world.customer.email)
        tenant = await api.login(world.tenant.email)
        status, _, _ = await api.request(
            "POST", f"/api/user/{world.customer.id}/userCredentialsEnabled?userCredentialsEnabled=false", tenant)
        assert status == 200
    async with start_server(seed=False) as (server, api):
        assert _err((await api.request("GET", "/api/auth/user", victim["token"]))[1]) == EXPIRED
        assert server.ctx.tokens.cache_hits == 0


async def test_guessing_the_current_password_locks_the_account_as_logins_do(start_server, world):
    """A stolen access token must not become a way to guess the password:
    wrong current passwords count towards auth.max_failed_logins."""
    async with start_server(auth={"failed_login_delay_ms": 0, "max_failed_logins": 3}) as (server, api):
        token = await api.login(world.customer.email)
        for _ in range(3):
            status, body, _ = await api.request("POST", "/api/auth/changePassword", token,
                                                json={"currentPassword": "guess", "newPassword": "new-secret"})
            assert _err(body) == (400, "Current password doesn't match!", 31)
        # locked now: even the right password is refused, here and at login
        status, body, _ = await api.request("POST", "/api/auth/changePassword", token,
                                            json={"currentPassword": PASSWORD, "newPassword": "new-secret"})
        assert status == 400 and "locked" in _err(body)[1].lower()
        status, body, _ = await api.request("POST", "/api/auth/login",
                                            json={"username": world.customer.email, "password": PASSWORD})
        assert status == 401 and "locked" in json.loads(body)["message"].lower()
