"""API keys (ThingsBoard 4.3's ApiKeyController and ``X-Authorization:
ApiKey <value>``) through the real server, on SQLite and PostgreSQL:
tb-rest-client's own ``save_api_key`` / ``api_key_login`` drive it; the
value is shown once and only its hash is stored; a disabled, deleted or
expired key, or a disabled or deleted user, is refused at once -- on this
node and on another node of the same database; nobody reaches another
tenant's keys, nor a customer user anybody else's."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from tb_rest_client.models.api_key_info import ApiKeyInfo
from tb_rest_client.models.user_id import UserId
from tb_rest_client.rest import ApiException
from tb_rest_client.rest_client import RestClient

from fleetrpc.device import DeviceClient
from tests.helpers.waiting import wait_until
from tests.server.conftest import PASSWORD, Api, cluster_nodes

pytestmark = pytest.mark.mqtt

BAD = (401, "Invalid username or password", 10)
NOT_ACTIVE = (401, "User account is not active", 10)
KEY_EXPIRED = (401, "API key is expired", 10)


def _err(body: bytes) -> tuple[int, str, int]:
    e = json.loads(body)
    assert set(e) == {"status", "message", "errorCode", "timestamp"}, e
    return e["status"], e["message"], e["errorCode"]


async def _new_key(api: Api, token: str, user_id: str, *, enabled: bool = True, expiration: int = 0,
                   description: str = "a key") -> dict:
    status, body, _ = await api.request("POST", "/api/apiKey", token, json={
        "userId": {"entityType": "USER", "id": user_id}, "description": description, "enabled": enabled,
        "expirationTime": expiration})
    assert status == 200, body
    return json.loads(body)


async def _as_key(api: Api, value: str, path: str = "/api/auth/user", method: str = "GET",
                  header: str = "X-Authorization") -> tuple[int, bytes]:
    status, body, _ = await api.request(method, path, headers={header: f"ApiKey {value}"})
    return status, body


# -- tb-rest-client --------------------------------------------------------------------


def _rest_client_session(url: str, email: str, user_id: str, device_id: str) -> dict:
    admin = RestClient(base_url=url)
    admin.login(username=email, password=PASSWORD)
    out: dict = {}
    try:
        made = admin.save_api_key(ApiKeyInfo(user_id=UserId(user_id, "USER"), description="CI robot",
                                             enabled=True, expiration_time=0))
        out["made"] = made
        page = admin.get_user_api_keys(user_id, page_size=10, page=0)
        out["listed"] = page
        out["described"] = admin.update_api_key_description(made.id, body="CI robot, renamed")

        robot = RestClient(base_url=url)
        robot.api_key_login(made.value)
        out["devices"] = [d.name for d in robot.get_tenant_devices(page_size=10, page=0).data]
        out["rpc"] = robot.handle_two_way_device_rpc_request(device_id, {"method": "echo", "params": {"v": 7}})
        out["own_keys"] = robot.get_user_api_keys(user_id, page_size=10, page=0).total_elements

        out["disabled"] = admin.enable_api_key(made.id, False)
        try:
            robot.get_tenant_devices(page_size=10, page=0)
        except ApiException as exc:
            out["after_disable"] = (exc.status, json.loads(exc.body))
        admin.enable_api_key(made.id, True)
        out["after_enable"] = len(robot.get_tenant_devices(page_size=10, page=0).data)
        admin.delete_api_key(made.id)
        try:
            robot.get_tenant_devices(page_size=10, page=0)
        except ApiException as exc:
            out["after_delete"] = (exc.status, json.loads(exc.body))
    finally:
        admin.stop()
    return out


async def test_tb_rest_client_api_key_login_and_controller(start_server, world, mqtt_url):
    async with start_server() as (server, api):
        ctx = server.ctx
        dev = DeviceClient(world.dev_t1.id, mqtt_url)
        dev.add_method("echo", lambda p: p)
        await dev.connect()
        try:
            await wait_until(lambda: ctx.dispatcher.is_online(dev.device_id))
            out = await asyncio.to_thread(_rest_client_session, ctx.url, world.tenant.email, world.tenant.id,
                                          world.dev_t1.id)
        finally:
            await dev.close()
        made = out["made"]
        assert made.value.startswith("tb_") and len(made.value) == 3 + 86  # 64 random bytes, URL-safe Base64
        assert made.enabled and not made.expired and made.user_id.id == world.tenant.id
        assert made.tenant_id.id == world.t1 and made.expiration_time == 0
        assert [k.description for k in out["listed"].data] == ["CI robot"]
        assert out["described"].description == "CI robot, renamed"
        assert sorted(out["devices"]) == sorted([world.dev_c1.name, world.dev_c2.name, world.dev_t1.name])
        assert out["rpc"] == {"v": 7}
        assert out["own_keys"] == 1
        assert out["disabled"].enabled is False
        status, body = out["after_disable"]
        assert (status, body["message"], body["errorCode"]) == NOT_ACTIVE
        assert out["after_enable"] == 3
        status, body = out["after_delete"]
        assert (status, body["message"], body["errorCode"]) == BAD


async def test_the_value_is_shown_once_and_only_its_hash_is_stored(start_server, world):
    async with start_server() as (server, api):
        tenant = await api.login(world.tenant.email)
        made = await _new_key(api, tenant, world.customer.id, description="for customer A")
        value = made["value"]
        assert made["userId"] == {"entityType": "USER", "id": world.customer.id}
        assert made["tenantId"] == {"entityType": "TENANT", "id": world.t1}
        status, body, _ = await api.request("GET", f"/api/apiKeys/{world.customer.id}?pageSize=10&page=0", tenant)
        page = json.loads(body)
        assert status == 200 and page["totalElements"] == 1
        assert "value" not in page["data"][0] and value.encode() not in body
        status, body, _ = await api.request("PUT", f"/api/apiKey/{made['id']['id']}/enabled/true", tenant)
        assert status == 200 and value.encode() not in body
        # the key acts as its user: a customer user, its own customer's devices only
        status, body = await _as_key(api, value)
        assert status == 200 and json.loads(body)["email"] == world.customer.email
        status, body = await _as_key(api, value, "/api/tenant/devices?pageSize=10&page=0")
        assert status == 403
        status, body = await _as_key(api, value, f"/api/customer/{world.c1}/devices?pageSize=10&page=0")
        assert status == 200 and [d["name"] for d in json.loads(body)["data"]] == [world.dev_c1.name]
        status, body = await _as_key(api, value, f"/api/customer/{world.c2}/devices?pageSize=10&page=0")
        assert status == 403
        # the Authorization header works too
        assert (await _as_key(api, value, header="Authorization"))[0] == 200
        # nowhere in the database
        rows = await server.ctx.api_keys.db.fetch("SELECT * FROM api_key")
        assert len(rows) == 1
        assert all(value not in str(v) for r in rows for v in dict(r).values())
        # the second request was answered from memory
        assert server.ctx.api_key_auth.cache_hits >= 1


async def test_disabled_deleted_expired_keys_and_users_are_refused_at_once(start_server, world):
    async with start_server() as (server, api):
        tenant = await api.login(world.tenant.email)
        key = await _new_key(api, tenant, world.customer.id)
        kid = key["id"]["id"]
        assert (await _as_key(api, key["value"]))[0] == 200  # in memory now
        assert (await api.request("PUT", f"/api/apiKey/{kid}/enabled/false", tenant))[0] == 200
        assert _err((await _as_key(api, key["value"]))[1]) == NOT_ACTIVE
        assert (await api.request("PUT", f"/api/apiKey/{kid}/enabled/true", tenant))[0] == 200
        assert (await _as_key(api, key["value"]))[0] == 200
        assert (await api.request("DELETE", f"/api/apiKey/{kid}", tenant))[0] == 200
        assert _err((await _as_key(api, key["value"]))[1]) == BAD
        assert (await api.request("DELETE", f"/api/apiKey/{kid}", tenant))[0] == 404

        # created disabled (ThingsBoard's default), and made expired
        off = await _new_key(api, tenant, world.customer.id, enabled=False)
        assert _err((await _as_key(api, off["value"]))[1]) == NOT_ACTIVE
        gone = await _new_key(api, tenant, world.customer.id, expiration=1)
        assert gone["expired"] is True
        assert _err((await _as_key(api, gone["value"]))[1]) == KEY_EXPIRED
        # (3 s of validity: room for a loaded machine between the creation
        # and the first use; then wait for that moment itself, not a guess)
        expires_ms = int(time.time() * 1000) + 3000
        soon = await _new_key(api, tenant, world.customer.id, expiration=expires_ms)
        assert (await _as_key(api, soon["value"]))[0] == 200  # in memory, until it expires
        await asyncio.sleep(max(0.0, expires_ms / 1000 - time.time()) + 0.1)
        assert _err((await _as_key(api, soon["value"]))[1]) == KEY_EXPIRED

        # unknown, empty and garbage values
        assert _err((await _as_key(api, "tb_" + "A" * 86))[1]) == BAD
        status, body = await _as_key(api, "")
        assert _err(body)[0::2] == (401, 10)
        assert _err((await _as_key(api, "x" * 5000))[1]) == BAD

        # the user disabled, enabled, deleted
        key = await _new_key(api, tenant, world.customer.id)
        assert (await _as_key(api, key["value"]))[0] == 200
        base = f"/api/user/{world.customer.id}/userCredentialsEnabled?userCredentialsEnabled="
        assert (await api.request("POST", base + "false", tenant))[0] == 200
        assert _err((await _as_key(api, key["value"]))[1]) == NOT_ACTIVE
        assert (await api.request("POST", base + "true", tenant))[0] == 200
        assert (await _as_key(api, key["value"]))[0] == 200  # unlike its JWTs, the key comes back
        assert (await api.request("DELETE", f"/api/user/{world.customer.id}", tenant))[0] == 200
        assert _err((await _as_key(api, key["value"]))[1]) == BAD
        rows = await server.ctx.api_keys.db.fetch("SELECT id FROM api_key WHERE user_id = $1", world.customer.id)
        assert rows == []  # the user's keys went with it


async def test_unknown_values_cost_one_query_and_a_new_key_works_at_once(start_server, world, monkeypatch):
    """An unknown value asked again and again is read once (then refused
    from memory); a key created on this node with a value refused a moment
    before works at once."""
    async with start_server() as (server, api):
        tenant = await api.login(world.tenant.email)
        auth = server.ctx.api_key_auth
        value = "tb_" + "Z" * 86
        lookups = auth.lookups
        for _ in range(20):
            assert _err((await _as_key(api, value))[1]) == BAD
        assert auth.lookups == lookups + 1
        monkeypatch.setattr("fleetrpc.store.entities.api_keys.new_value", lambda: value)
        made = await _new_key(api, tenant, world.customer.id)
        assert made["value"] == value
        status, body = await _as_key(api, value)
        assert status == 200 and json.loads(body)["email"] == world.customer.email


async def test_a_key_of_a_user_not_activated_yet_is_refused_until_activation(start_server, world):
    """A user created without a password (userCredentialsEnabled false) is
    not active: ThingsBoard refuses its keys (DisabledException) as it
    refuses a disabled user's, until the user sets its first password."""
    async with start_server() as (server, api):
        tenant = await api.login(world.tenant.email)
        status, body, _ = await api.request("POST", "/api/user?sendActivationMail=false", tenant, json={
            "email": "not-yet@example.com", "authority": "CUSTOMER_USER",
            "customerId": {"entityType": "CUSTOMER", "id": world.c1}})
        assert status == 200, body
        user = json.loads(body)
        assert user["additionalInfo"]["userCredentialsEnabled"] is False
        uid = user["id"]["id"]
        key = await _new_key(api, tenant, uid)
        for path in ("/api/auth/user", f"/api/customer/{world.c1}/devices?pageSize=10&page=0"):
            assert _err((await _as_key(api, key["value"], path))[1]) == NOT_ACTIVE, path
        # activated: the key works from then on
        status, link, _ = await api.request("GET", f"/api/user/{uid}/activationLink", tenant)
        assert status == 200
        activate_token = link.decode().split("activateToken=", 1)[1]
        status, body, _ = await api.request("POST", "/api/noauth/activate",
                                            json={"activateToken": activate_token, "password": "first-password"})
        assert status == 200, body
        status, body = await _as_key(api, key["value"])
        assert status == 200 and json.loads(body)["email"] == "not-yet@example.com"


async def test_nobody_reaches_someone_elses_keys(start_server, world):
    async with start_server() as (server, api):
        tenant = await api.login(world.tenant.email)
        tenant2 = await api.login(world.tenant2.email)
        customer = await api.login(world.customer.email)
        customer2 = await api.login(world.customer2.email)
        customer3 = await api.login(world.customer3.email)
        sysadmin = await api.login(world.sysadmin.email)
        mine = await _new_key(api, customer, world.customer.id, description="customer A's own")
        admins = await _new_key(api, tenant, world.tenant.id, description="tenant admin's own")
        kid, aid = mine["id"]["id"], admins["id"]["id"]

        async def tries(token: str, key_id: str, user_id: str) -> dict:
            out = {}
            out["list"] = (await api.request("GET", f"/api/apiKeys/{user_id}?pageSize=10&page=0", token))[0]
            out["create"] = (await api.request("POST", "/api/apiKey", token, json={
                "userId": {"entityType": "USER", "id": user_id}, "description": "mine now", "enabled": True}))[0]
            out["describe"] = (await api.request("PUT", f"/api/apiKey/{key_id}/description", token,
                                                 json="stolen"))[0]
            out["disable"] = (await api.request("PUT", f"/api/apiKey/{key_id}/enabled/false", token))[0]
            out["delete"] = (await api.request("DELETE", f"/api/apiKey/{key_id}", token))[0]
            return out

        # another tenant's administrator and customer user: not found
        for token in (tenant2, customer3):
            assert set((await tries(token, kid, world.customer.id)).values()) <= {403, 404}
            assert (await tries(token, aid, world.tenant.id)) == {
                "list": 404 if token == tenant2 else 403, "create": 404 if token == tenant2 else 403,
                "describe": 404, "disable": 404, "delete": 404}
        # a customer user of the same tenant: another customer's user, its administrator
        assert set((await tries(customer2, kid, world.customer.id)).values()) == {403}
        assert set((await tries(customer2, aid, world.tenant.id)).values()) == {403}
        # the owner cannot reach its administrator's keys either
        assert set((await tries(customer, aid, world.tenant.id)).values()) == {403}
        # the system administrator administers tenant administrators, not customer users
        assert set((await tries(sysadmin, kid, world.customer.id)).values()) == {403}
        # nothing changed
        status, body, _ = await api.request("GET", f"/api/apiKeys/{world.customer.id}?pageSize=10&page=0", customer)
        page = json.loads(body)
        assert status == 200 and [(k["description"], k["enabled"]) for k in page["data"]] == [
            ("customer A's own", True)]
        assert (await _as_key(api, mine["value"]))[0] == 200
        assert (await _as_key(api, admins["value"]))[0] == 200
        # a key acts only within its user's tenant
        status, body = await _as_key(api, admins["value"], f"/api/device/{world.dev_t2.id}")
        assert status == 404
        # its owner and its administrators manage it
        assert (await api.request("PUT", f"/api/apiKey/{kid}/description", customer, json="renamed"))[0] == 200
        status, body, _ = await api.request("PUT", f"/api/apiKey/{kid}/enabled/false", tenant)
        assert status == 200 and json.loads(body)["description"] == "renamed"
        status, body, _ = await api.request("GET", f"/api/apiKeys/{world.tenant.id}?pageSize=10&page=0", sysadmin)
        assert status == 200 and json.loads(body)["totalElements"] == 1
        assert (await api.request("DELETE", f"/api/apiKey/{aid}", sysadmin))[0] == 200


async def test_bad_input_gets_a_clear_4xx(start_server, world):
    async with start_server() as (server, api):
        tenant = await api.login(world.tenant.email)
        user = {"entityType": "USER", "id": world.tenant.id}
        for body in (None, [], "x", {}, {"description": "no user"}, {"userId": user},
                     {"userId": user, "description": "   "}, {"userId": user, "description": "x" * 256},
                     {"userId": user, "description": "d", "expirationTime": "soon"},
                     {"userId": user, "description": "d", "expirationTime": -1},
                     {"userId": user, "description": "d", "expirationTime": 2 ** 70},
                     {"userId": user, "description": "d", "enabled": "yes"},
                     {"userId": {"id": "nope"}, "description": "d"},
                     {"userId": {"entityType": "DEVICE", "id": world.dev_t1.id}, "description": "d"},
                     {"userId": user, "description": "d", "id": {"entityType": "API_KEY", "id": "bad"}},
                     {"userId": user, "description": "d\x00"}):
            status, answer, _ = await api.request("POST", "/api/apiKey", tenant, json=body)
            assert status == 400, (body, answer)
        key = await _new_key(api, tenant, world.tenant.id)
        kid = key["id"]["id"]
        # the key's user and expiration cannot change; description and enabled can
        status, body, _ = await api.request("POST", "/api/apiKey", tenant, json={
            "id": key["id"], "userId": user, "description": "d", "expirationTime": 5})
        assert _err(body)[:2] == (400, "Cannot update API key expiration time!")
        status, body, _ = await api.request("POST", "/api/apiKey", tenant, json={
            "id": key["id"], "userId": user, "description": "updated", "enabled": True})
        assert status == 200 and json.loads(body)["description"] == "updated" and "value" not in json.loads(body)
        for path in (f"/api/apiKey/{kid}/enabled/maybe", "/api/apiKey/nope/enabled/true"):
            assert (await api.request("PUT", path, tenant))[0] == 400
        assert (await api.request("PUT", f"/api/apiKey/{kid}/description", tenant, data=b""))[0] == 400
        assert (await api.request("PUT", f"/api/apiKey/{kid}/description", tenant, data=b"\xff\xfe"))[0] == 400
        status, body, _ = await api.request("PUT", f"/api/apiKey/{kid}/description", tenant, data=b"plain text")
        assert status == 200 and json.loads(body)["description"] == "plain text"
        for path in ("/api/apiKeys/nope?pageSize=1&page=0", f"/api/apiKeys/{world.tenant.id}",
                     f"/api/apiKeys/{world.tenant.id}?pageSize=1&page=0&sortProperty=value"):
            assert (await api.request("GET", path, tenant))[0] == 400, path
        assert (await api.request("DELETE", "/api/apiKey/nope", tenant))[0] == 400
        assert (await api.request("GET", f"/api/apiKeys/{world.t2}?pageSize=1&page=0", tenant))[0] == 404
        # without credentials
        assert _err((await api.request("GET", f"/api/apiKeys/{world.tenant.id}?pageSize=1&page=0"))[1])[0] == 401


# -- several nodes on one database ---------------------------------------------------------


@pytest.mark.pg
async def test_a_key_stopped_on_one_node_is_refused_on_the_other(mqtt_url, fresh_pg_db, tmp_path, world):
    """Disabled (or its user disabled) on node A: node B, which had the key
    in memory, refuses it -- through the database's notification, well
    before its next re-read (``poll_interval_s`` is 30 s here)."""
    async with cluster_nodes(mqtt_url, fresh_pg_db, tmp_path, world) as ((a, b), servers):
        tenant = await a.login(world.tenant.email)
        key = await _new_key(a, tenant, world.customer.id)
        other = await _new_key(a, tenant, world.customer2.id)
        auth_b = servers[1].ctx.api_key_auth
        # Node B's LISTEN connection may come up during these first reads:
        # it then forgets every verified key (notifications may have been
        # missed) and a read under way does not cache what it read.  Read
        # until both keys are in B's memory.
        for _ in range(100):
            for value in (key["value"], other["value"]):
                assert (await _as_key(b, value))[0] == 200
            if all(auth_b.cached(value) is not None for value in (key["value"], other["value"])):
                break
            await asyncio.sleep(0.05)
        hits = auth_b.cache_hits
        assert (await _as_key(b, key["value"]))[0] == 200 and auth_b.cache_hits == hits + 1  # from memory
        assert (await a.request("PUT", f"/api/apiKey/{key['id']['id']}/enabled/false", tenant))[0] == 200
        await wait_until(lambda: auth_b.cached(key["value"]) is None, timeout=3.0)
        assert _err((await _as_key(b, key["value"]))[1]) == NOT_ACTIVE
        assert (await _as_key(b, other["value"]))[0] == 200

        # the other key's user disabled on A
        status, _, _ = await a.request(
            "POST", f"/api/user/{world.customer2.id}/userCredentialsEnabled?userCredentialsEnabled=false", tenant)
        assert status == 200
        await wait_until(lambda: auth_b.cached(other["value"]) is None, timeout=3.0)
        assert _err((await _as_key(b, other["value"]))[1]) == NOT_ACTIVE

        # deleted on B: A refuses it
        third = await _new_key(b, tenant, world.tenant.id)
        assert (await _as_key(a, third["value"]))[0] == 200
        assert (await b.request("DELETE", f"/api/apiKey/{third['id']['id']}", tenant))[0] == 200
        auth_a = servers[0].ctx.api_key_auth
        await wait_until(lambda: auth_a.cached(third["value"]) is None, timeout=3.0)
        assert _err((await _as_key(a, third["value"]))[1]) == BAD
