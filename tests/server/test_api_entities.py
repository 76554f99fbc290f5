"""ThingsBoard's entity endpoints through real HTTP on SQLite and PostgreSQL:
tenants, customers, users and activation, devices, credentials, assignment,
listings and DeviceInfo; each role; and, per endpoint, another tenant's and
another customer's ids, which reach nothing."""

from __future__ import annotations

import json
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest

from fleetrpc.device import DeviceClient
from fleetrpc.store.entities import NULL_UUID
from tests.helpers.rest import Client
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.mqtt

UNKNOWN = "8a7e4f10-0000-4000-8000-000000000000"


def ref(entity_type: str, id_: str) -> dict:
    return {"entityType": entity_type, "id": id_}


async def sessions(api, world) -> dict[str, Client]:
    names = {"sysadmin": world.sysadmin, "tenant": world.tenant, "customer": world.customer,
             "customer2": world.customer2, "tenant2": world.tenant2}
    return {name: Client(api, await api.login(a.email)) for name, a in names.items()}


def error(result, status: int, code: int) -> None:
    got, body = result
    assert (got, body["errorCode"], body["status"]) == (status, code, status), result


# -- tenants and customers ------------------------------------------------------------------


async def test_tenants(start_server, world):
    async with start_server() as (server, api):
        s = await sessions(api, world)
        status, t = await s["sysadmin"].post("/api/tenant", {"title": "Tenant 3", "email": "t3@example.com",
                                                             "additionalInfo": {"k": 1}})
        assert status == 200
        assert set(t) >= {"id", "createdTime", "title", "name", "region", "tenantProfileId", "email",
                          "additionalInfo", "version"}
        assert t["id"]["entityType"] == "TENANT" and t["title"] == t["name"] == "Tenant 3"
        status, updated = await s["sysadmin"].post("/api/tenant", {**t, "title": "Tenant Three"})
        assert (status, updated["id"], updated["title"], updated["version"]) == (200, t["id"], "Tenant Three", 2)
        status, page = await s["sysadmin"].get("/api/tenants?pageSize=2&page=0&sortProperty=title&sortOrder=ASC")
        assert status == 200 and (page["totalElements"], page["totalPages"], page["hasNext"]) == (3, 2, True)
        assert [x["title"] for x in page["data"]] == ["Tenant 1", "Tenant 2"]
        status, page = await s["sysadmin"].get("/api/tenants?pageSize=10&page=0&textSearch=three")
        assert [x["title"] for x in page["data"]] == ["Tenant Three"]
        assert (await s["sysadmin"].get(f"/api/tenant/{world.t2}"))[1]["title"] == "Tenant 2"
        error(await s["sysadmin"].get(f"/api/tenant/{UNKNOWN}"), 404, 32)
        # a tenant administrator reads its own tenant, no other, and manages none
        assert (await s["tenant"].get(f"/api/tenant/{world.t1}"))[1]["title"] == "Tenant 1"
        for who in ("tenant", "tenant2"):
            other = world.t2 if who == "tenant" else world.t1
            error(await s[who].get(f"/api/tenant/{other}"), 403, 20)
            error(await s[who].get(f"/api/tenant/{UNKNOWN}"), 403, 20)  # existence not told
            error(await s[who].get("/api/tenants?pageSize=10&page=0"), 403, 20)
            error(await s[who].post("/api/tenant", {"title": "x"}), 403, 20)
            error(await s[who].post("/api/tenant", {"id": ref("TENANT", other), "title": "hijacked"}), 403, 20)
        error(await s["customer"].get(f"/api/tenant/{world.t1}"), 403, 20)
        # bad bodies and pages
        error(await s["sysadmin"].post("/api/tenant", {"title": ""}), 400, 31)
        error(await s["sysadmin"].post("/api/tenant", [1]), 400, 31)
        error(await s["sysadmin"].get("/api/tenants?pageSize=0&page=0"), 400, 31)
        error(await s["sysadmin"].get("/api/tenants?pageSize=1&page=0&sortProperty=secret"), 400, 31)
        error(await s["sysadmin"].post("/api/tenant", {"id": ref("TENANT", UNKNOWN), "title": "x"}), 404, 32)
        assert (await s["sysadmin"].get(f"/api/tenant/{world.t1}"))[1]["title"] == "Tenant 1"


async def test_customers(start_server, world):
    async with start_server() as (server, api):
        s = await sessions(api, world)
        # the caller's tenant, whatever the body says
        status, c = await s["tenant"].post("/api/customer", {"title": "Customer D", "tenantId": ref("TENANT", world.t2)})
        assert status == 200 and c["tenantId"] == ref("TENANT", world.t1) and c["id"]["entityType"] == "CUSTOMER"
        assert {"title", "name", "email", "additionalInfo", "createdTime", "version"} <= set(c)
        error(await s["tenant"].post("/api/customer", {"title": "Customer A"}), 400, 31)  # taken in the tenant
        assert (await s["tenant2"].post("/api/customer", {"title": "Customer A"}))[0] == 200  # not in another
        status, page = await s["tenant"].get("/api/customers?pageSize=10&page=0&sortProperty=title&sortOrder=DESC")
        assert [x["title"] for x in page["data"]] == ["Customer D", "Customer B", "Customer A"]
        assert (await s["tenant"].get(f"/api/customer/{world.c1}"))[1]["title"] == "Customer A"
        assert (await s["customer"].get(f"/api/customer/{world.c1}"))[1]["title"] == "Customer A"
        # another customer of the tenant: 403; another tenant's customer: not found
        error(await s["customer"].get(f"/api/customer/{world.c2}"), 403, 20)
        error(await s["customer"].get(f"/api/customer/{world.c3}"), 403, 20)
        error(await s["tenant2"].get(f"/api/customer/{world.c1}"), 404, 32)
        error(await s["tenant"].get(f"/api/customer/{world.c3}"), 404, 32)
        error(await s["sysadmin"].get(f"/api/customer/{world.c1}"), 403, 20)
        # updates reach the caller's tenant only
        error(await s["tenant2"].post("/api/customer", {"id": ref("CUSTOMER", world.c1), "title": "hijacked"}), 404, 32)
        assert (await s["tenant"].get(f"/api/customer/{world.c1}"))[1]["title"] == "Customer A"
        status, renamed = await s["tenant"].post("/api/customer", {"id": ref("CUSTOMER", world.c2), "title": "Customer B2"})
        assert (status, renamed["title"]) == (200, "Customer B2")
        for who in ("customer", "sysadmin"):
            error(await s[who].post("/api/customer", {"title": "x"}), 403, 20)
            error(await s[who].get("/api/customers?pageSize=10&page=0"), 403, 20)


# -- users and activation -----------------------------------------------------------------


async def test_users_and_activation(start_server, world):
    async with start_server() as (server, api):
        s = await sessions(api, world)
        status, admin = await s["sysadmin"].post(
            "/api/user?sendActivationMail=false",
            {"email": "New.Admin@example.com", "authority": "TENANT_ADMIN", "tenantId": ref("TENANT", world.t2),
             "firstName": "New"})
        assert status == 200
        assert (admin["email"], admin["authority"], admin["tenantId"], admin["customerId"]) == (
            "new.admin@example.com", "TENANT_ADMIN", ref("TENANT", world.t2), ref("CUSTOMER", NULL_UUID))
        assert admin["additionalInfo"]["userCredentialsEnabled"] is False
        # no password yet: no login
        status, body, _ = await api.request("POST", "/api/auth/login",
                                            json={"username": "new.admin@example.com", "password": "whatever"})
        assert status == 401
        status, link = await s["sysadmin"].get(f"/api/user/{admin['id']['id']}/activationLink")
        assert status == 200 and link.startswith(f"{server.ctx.url}/api/noauth/activate?activateToken=")
        token = parse_qs(urlsplit(link).query)["activateToken"][0]
        status, e = await Client(api, None).post("/api/noauth/activate", {"activateToken": token, "password": "short"})
        error((status, e), 400, 31)
        status, pair = await Client(api, None).post("/api/noauth/activate",
                                                    {"activateToken": token, "password": "a good password"})
        assert status == 200 and set(pair) == {"token", "refreshToken"}
        me = Client(api, pair["token"])
        assert (await me.get("/api/auth/user"))[1]["email"] == "new.admin@example.com"
        assert (await api.login("new.admin@example.com", "a good password"))
        # one activation per link: then "already activated"
        error(await Client(api, None).post("/api/noauth/activate", {"activateToken": token, "password": "another one"}), 400, 31)
        error(await s["sysadmin"].get(f"/api/user/{admin['id']['id']}/activationLink"), 400, 31)
        error(await Client(api, None).post("/api/noauth/activate", {"activateToken": "forged", "password": "xxxxxxxx"}), 404, 32)
        # an access token is no activation token
        error(await Client(api, None).post("/api/noauth/activate", {"activateToken": s["tenant"].token,
                                                                    "password": "xxxxxxxx"}), 404, 32)

        # a tenant administrator: customer users of its tenant's customers
        status, cu = await s["tenant"].post("/api/user?sendActivationMail=false", {
            "email": "cu@example.com", "authority": "CUSTOMER_USER", "customerId": ref("CUSTOMER", world.c1),
            "tenantId": ref("TENANT", world.t2)})  # the body's tenant is ignored
        assert status == 200 and cu["tenantId"] == ref("TENANT", world.t1) and cu["customerId"] == ref("CUSTOMER", world.c1)
        assert (await s["tenant"].get(f"/api/user/{cu['id']['id']}/activationLink"))[0] == 200
        # another tenant's customer is not found; roles it may not create are 403
        error(await s["tenant"].post("/api/user?sendActivationMail=false", {
            "email": "cu2@example.com", "authority": "CUSTOMER_USER", "customerId": ref("CUSTOMER", world.c3)}), 404, 32)
        error(await s["tenant"].post("/api/user?sendActivationMail=false",
                                     {"email": "sa2@example.com", "authority": "SYS_ADMIN"}), 403, 20)
        error(await s["sysadmin"].post("/api/user?sendActivationMail=false", {
            "email": "cu3@example.com", "authority": "CUSTOMER_USER", "tenantId": ref("TENANT", world.t1),
            "customerId": ref("CUSTOMER", world.c1)}), 403, 20)
        error(await s["customer"].post("/api/user?sendActivationMail=false",
                                       {"email": "cu4@example.com", "authority": "CUSTOMER_USER"}), 403, 20)
        error(await s["sysadmin"].post("/api/user?sendActivationMail=true",
                                       {"email": "x@example.com", "authority": "SYS_ADMIN"}), 400, 31)
        error(await s["tenant"].post("/api/user?sendActivationMail=false",
                                     {"email": world.customer.email, "authority": "TENANT_ADMIN"}), 400, 31)
        # reading and activating users: the caller's tenant only
        error(await s["tenant2"].get(f"/api/user/{cu['id']['id']}/activationLink"), 404, 32)
        error(await s["tenant2"].get(f"/api/user/{world.customer.id}"), 404, 32)
        error(await s["tenant"].get(f"/api/user/{world.sysadmin.id}"), 404, 32)
        error(await s["customer"].get(f"/api/user/{cu['id']['id']}/activationLink"), 403, 20)
        error(await s["sysadmin"].get(f"/api/user/{cu['id']['id']}/activationLink"), 403, 20)
        assert (await s["tenant"].get(f"/api/user/{world.customer.id}"))[1]["email"] == world.customer.email
        assert (await s["customer"].get(f"/api/user/{world.customer.id}"))[1]["email"] == world.customer.email
        error(await s["customer"].get(f"/api/user/{world.customer2.id}"), 403, 20)
        # updates: names only, within reach
        status, renamed = await s["tenant"].post("/api/user", {
            "id": ref("USER", world.customer.id), "email": world.customer.email, "authority": "CUSTOMER_USER",
            "firstName": "Ann"})
        assert (status, renamed["firstName"]) == (200, "Ann")
        error(await s["tenant2"].post("/api/user", {"id": ref("USER", world.customer.id), "email": world.customer.email,
                                                    "authority": "CUSTOMER_USER", "firstName": "Eve"}), 404, 32)
        assert (await s["tenant"].get(f"/api/user/{world.customer.id}"))[1]["firstName"] == "Ann"


# -- devices --------------------------------------------------------------------------------


async def test_devices_and_credentials(start_server, world):
    async with start_server() as (server, api):
        s = await sessions(api, world)
        tenant, tenant2, customer, customer2 = s["tenant"], s["tenant2"], s["customer"], s["customer2"]
        status, d = await tenant.post("/api/device?accessToken=TOKEN_ONE", {"name": "Pump 1", "type": "pump",
                                                                           "label": "north"})
        assert status == 200
        assert list(d) == ["id", "createdTime", "tenantId", "customerId", "name", "type", "label", "deviceProfileId",
                           "deviceData", "firmwareId", "softwareId", "externalId", "version", "additionalInfo"]
        assert (d["tenantId"], d["customerId"], d["type"], d["label"]) == (
            ref("TENANT", world.t1), ref("CUSTOMER", NULL_UUID), "pump", "north")
        dev = d["id"]["id"]
        status, creds = await tenant.get(f"/api/device/{dev}/credentials")
        assert (status, creds["credentialsType"], creds["credentialsId"], creds["deviceId"]) == (
            200, "ACCESS_TOKEN", "TOKEN_ONE", ref("DEVICE", dev))
        assert set(creds["id"]) == {"id"}
        # a random token when none is given
        status, d2 = await tenant.post("/api/device", {"name": "Pump 2"})
        token2 = (await tenant.get(f"/api/device/{d2['id']['id']}/credentials"))[1]["credentialsId"]
        assert len(token2) == 20 and token2.isalnum()
        # names are unique per tenant, tokens everywhere
        e = await tenant.post("/api/device", {"name": "Pump 1"})
        error(e, 400, 31)
        assert e[1]["message"] == "Device with such name already exists!"
        assert (await tenant2.post("/api/device", {"name": "Pump 1"}))[0] == 200
        error(await tenant2.post("/api/device?accessToken=TOKEN_ONE", {"name": "Pump X"}), 400, 31)
        # with credentials
        status, d3 = await tenant.post("/api/device-with-credentials", {
            "device": {"name": "Pump 3", "customerId": ref("CUSTOMER", world.c1)},
            "credentials": {"credentialsType": "ACCESS_TOKEN", "credentialsId": "TOKEN_THREE"}})
        assert status == 200 and d3["customerId"] == ref("CUSTOMER", world.c1)
        assert (await customer.get(f"/api/device/{d3['id']['id']}/credentials"))[1]["credentialsId"] == "TOKEN_THREE"
        error(await tenant.post("/api/device-with-credentials", {"device": {"name": "Pump 4"},
              "credentials": {"credentialsType": "X509_CERTIFICATE", "credentialsId": "x"}}), 400, 31)
        error(await tenant.post("/api/device-with-credentials", {"device": {"name": "Pump 4"}}), 400, 31)
        # a customer of another tenant cannot own a device here
        error(await tenant.post("/api/device", {"name": "Pump 5", "customerId": ref("CUSTOMER", world.c3)}), 404, 32)
        # changing the token
        status, changed = await tenant.post("/api/device/credentials", {**creds, "credentialsId": "TOKEN_ONE_B"})
        assert (status, changed["credentialsId"], changed["version"]) == (200, "TOKEN_ONE_B", 2)
        assert (await server.ctx.devices.by_token("TOKEN_ONE_B")).id == dev
        error(await tenant.post("/api/device/credentials", {"credentialsId": "TOKEN_X"}), 400, 31)
        # updates: name, label; a customer user may rename its customer's device
        status, upd = await tenant.post("/api/device", {**d, "label": "south"})
        assert (status, upd["label"], upd["version"]) == (200, "south", 2)
        status, upd = await customer.post("/api/device", {**d3, "label": "mine"})
        assert (status, upd["label"]) == (200, "mine")
        error(await customer.post("/api/device", {"name": "Customer's own"}), 403, 20)  # no CREATE
        error(await customer.post("/api/device", {**d3, "customerId": ref("CUSTOMER", NULL_UUID)}), 403, 20)
        # read and delete
        assert (await customer.get(f"/api/device/{world.dev_c1.id}"))[1]["name"] == world.dev_c1.name
        error(await customer.delete(f"/api/device/{world.dev_c1.id}"), 403, 20)
        assert (await tenant.delete(f"/api/device/{d2['id']['id']}"))[0] == 200
        error(await tenant.get(f"/api/device/{d2['id']['id']}"), 404, 32)
        error(await tenant.delete(f"/api/device/{d2['id']['id']}"), 404, 32)
        assert await server.ctx.devices.by_token(token2) is None
        error(await tenant.get("/api/device/not-a-uuid"), 400, 31)
        error(await s["sysadmin"].get(f"/api/device/{dev}"), 403, 20)


async def test_listings_and_assignment(start_server, world):
    async with start_server() as (server, api):
        s = await sessions(api, world)
        tenant, tenant2, customer, customer2 = s["tenant"], s["tenant2"], s["customer"], s["customer2"]
        for i in range(5):
            await tenant.post("/api/device", {"name": f"Meter {i}", "type": "meter", "label": f"floor {i % 2}"})
        status, page = await tenant.get("/api/tenant/devices?pageSize=3&page=0&type=meter&sortProperty=name&sortOrder=DESC")
        assert status == 200 and (page["totalElements"], page["totalPages"], page["hasNext"]) == (5, 2, True)
        assert [d["name"] for d in page["data"]] == ["Meter 4", "Meter 3", "Meter 2"]
        status, page = await tenant.get("/api/tenant/devices?pageSize=10&page=0&textSearch=FLOOR 1")
        assert sorted(d["name"] for d in page["data"]) == ["Meter 1", "Meter 3"]
        status, page = await tenant.get("/api/tenant/devices?pageSize=100&page=0")
        assert page["totalElements"] == 8 and {d["tenantId"]["id"] for d in page["data"]} == {world.t1}
        status, page = await tenant2.get("/api/tenant/devices?pageSize=100&page=0")
        assert [d["name"] for d in page["data"]] == [world.dev_t2.name]
        assert (await tenant.get(f"/api/tenant/devices?deviceName={world.dev_t1.name}"))[1]["id"]["id"] == world.dev_t1.id
        error(await tenant.get(f"/api/tenant/devices?deviceName={world.dev_t2.name}"), 404, 32)
        error(await customer.get("/api/tenant/devices?pageSize=10&page=0"), 403, 20)
        error(await tenant.get("/api/tenant/devices?page=0"), 400, 31)
        error(await tenant.get("/api/tenant/devices?pageSize=10&page=0&sortProperty=password"), 400, 31)
        # a customer's devices
        for who in (tenant, customer):
            status, page = await who.get(f"/api/customer/{world.c1}/devices?pageSize=10&page=0")
            assert (status, [d["id"]["id"] for d in page["data"]]) == (200, [world.dev_c1.id])
        error(await customer2.get(f"/api/customer/{world.c1}/devices?pageSize=10&page=0"), 403, 20)
        error(await tenant2.get(f"/api/customer/{world.c1}/devices?pageSize=10&page=0"), 404, 32)
        error(await s["sysadmin"].get(f"/api/customer/{world.c1}/devices?pageSize=10&page=0"), 403, 20)
        # assignment
        status, d = await tenant.post(f"/api/customer/{world.c2}/device/{world.dev_t1.id}")
        assert (status, d["customerId"]) == (200, ref("CUSTOMER", world.c2))
        status, page = await customer2.get(f"/api/customer/{world.c2}/devices?pageSize=10&page=0")
        assert sorted(d["name"] for d in page["data"]) == sorted([world.dev_c2.name, world.dev_t1.name])
        status, d = await tenant.delete(f"/api/customer/device/{world.dev_t1.id}")
        assert (status, d["customerId"]) == (200, ref("CUSTOMER", NULL_UUID))
        error(await tenant.delete(f"/api/customer/device/{world.dev_t1.id}"), 400, 31)
        error(await tenant.post(f"/api/customer/{UNKNOWN}/device/{world.dev_t1.id}"), 404, 32)
        error(await customer.post(f"/api/customer/{world.c1}/device/{world.dev_t1.id}"), 403, 20)
        error(await customer.delete(f"/api/customer/device/{world.dev_c1.id}"), 403, 20)


async def test_device_infos_online_state_and_last_activity(start_server, world, mqtt_url):
    async with start_server() as (server, api):
        s = await sessions(api, world)
        tenant, customer = s["tenant"], s["customer"]
        dev = DeviceClient(world.dev_c1.id, mqtt_url)
        dev.add_method("echo", lambda p: p)
        await dev.connect()
        try:
            await wait_until(lambda: server.ctx.dispatcher.is_online(world.dev_c1.id))
            assert (await customer.post(f"/api/rpc/twoway/{world.dev_c1.id}", {"method": "echo", "params": 1}))[0] == 200
            status, page = await tenant.get("/api/tenant/deviceInfos?pageSize=10&page=0&sortProperty=customerTitle")
            assert status == 200 and page["totalElements"] == 3
            infos = {d["id"]["id"]: d for d in page["data"]}
            c1 = infos[world.dev_c1.id]
            assert (c1["customerTitle"], c1["customerIsPublic"], c1["deviceProfileName"], c1["active"]) == (
                "Customer A", False, "default", True)
            assert c1["lastActivityTime"] > 0 and c1["name"] == world.dev_c1.name
            t1 = infos[world.dev_t1.id]
            assert (t1["customerTitle"], t1["active"], t1["lastActivityTime"]) == (None, False, None)
            assert infos[world.dev_c2.id]["customerTitle"] == "Customer B"
            status, page = await customer.get(f"/api/customer/{world.c1}/deviceInfos?pageSize=10&page=0")
            assert [(d["id"]["id"], d["active"]) for d in page["data"]] == [(world.dev_c1.id, True)]
            status, info = await customer.get(f"/api/device/info/{world.dev_c1.id}")
            assert (status, info["customerTitle"], info["active"]) == (200, "Customer A", True)
        finally:
            await dev.close()
        await wait_until(lambda: not server.ctx.dispatcher.is_online(world.dev_c1.id))
        status, info = await tenant.get(f"/api/device/info/{world.dev_c1.id}")
        assert (info["active"], info["lastActivityTime"] > 0) == (False, True)
        error(await s["customer2"].get(f"/api/device/info/{world.dev_c1.id}"), 403, 20)
        error(await s["tenant2"].get(f"/api/device/info/{world.dev_c1.id}"), 404, 32)
        error(await s["customer2"].get(f"/api/customer/{world.c1}/deviceInfos?pageSize=10&page=0"), 403, 20)
        error(await s["tenant2"].get(f"/api/customer/{world.c1}/deviceInfos?pageSize=10&page=0"), 404, 32)
        error(await customer.get("/api/tenant/deviceInfos?pageSize=10&page=0"), 403, 20)
        seen = info["lastActivityTime"]
    # the last activity is written to the database (at the latest when the
    # server stops): a restarted server still knows it
    async with start_server() as (server, api):
        tenant = Client(api, await api.login(world.tenant.email))
        status, info = await tenant.get(f"/api/device/info/{world.dev_c1.id}")
        assert (status, info["active"]) == (200, False) and info["lastActivityTime"] >= seen
        status, page = await tenant.get("/api/tenant/deviceInfos?pageSize=10&page=0&sortProperty=name")
        assert [d["lastActivityTime"] for d in page["data"]] == [info["lastActivityTime"], None, None]


# -- isolation, endpoint by endpoint ------------------------------------------------------------

#: (role, method, path, body, status): tenant 2's administrator with tenant
#: 1's ids, customer 2's user with customer 1's; none may reach them.
def _isolation_cases(w) -> list[tuple]:
    c1_dev, t1_dev = w.dev_c1.id, w.dev_t1.id
    creds = {"deviceId": ref("DEVICE", c1_dev), "credentialsType": "ACCESS_TOKEN", "credentialsId": "STOLEN"}
    dev_body = {"id": ref("DEVICE", c1_dev), "name": "stolen", "customerId": ref("CUSTOMER", w.c1)}
    rows = []
    for role, other, status in (("tenant2", "tenant", 404), ("customer2", "customer", 403)):
        rows += [
            (role, "GET", f"/api/device/{c1_dev}", None, status),
            (role, "GET", f"/api/device/info/{c1_dev}", None, status),
            (role, "GET", f"/api/device/{c1_dev}/credentials", None, status),
            (role, "GET", f"/api/customer/{w.c1}", None, status),
            (role, "GET", f"/api/customer/{w.c1}/devices?pageSize=10&page=0", None, status),
            (role, "GET", f"/api/customer/{w.c1}/deviceInfos?pageSize=10&page=0", None, status),
            (role, "POST", "/api/device", dev_body, status),
            (role, "POST", "/api/device-with-credentials", {"device": dev_body, "credentials": creds},
             403 if role == "customer2" else 404),
            (role, "GET", f"/api/plugins/telemetry/DEVICE/{c1_dev}/values/attributes/SERVER_SCOPE", None, status),
        ]
    rows += [
        ("tenant2", "DELETE", f"/api/device/{c1_dev}", None, 404),
        ("tenant2", "POST", "/api/device/credentials", creds, 404),
        ("tenant2", "POST", f"/api/customer/{w.c3}/device/{t1_dev}", None, 404),
        ("tenant2", "POST", f"/api/customer/{w.c1}/device/{w.dev_t2.id}", None, 404),
        ("tenant2", "DELETE", f"/api/customer/device/{c1_dev}", None, 404),
        ("tenant2", "POST", "/api/customer", {"id": ref("CUSTOMER", w.c1), "title": "stolen"}, 404),
        ("tenant2", "GET", f"/api/tenant/{w.t1}", None, 403),
        ("tenant2", "GET", f"/api/user/{w.customer.id}", None, 404),
        ("tenant2", "GET", f"/api/user/{w.customer.id}/activationLink", None, 404),
        ("tenant2", "POST", "/api/user", {"id": ref("USER", w.customer.id), "email": w.customer.email,
                                          "authority": "CUSTOMER_USER", "firstName": "stolen"}, 404),
        ("tenant2", "POST", "/api/user?sendActivationMail=false",
         {"email": "mole@example.com", "authority": "CUSTOMER_USER", "customerId": ref("CUSTOMER", w.c1)}, 404),
        ("customer2", "DELETE", f"/api/device/{c1_dev}", None, 403),
        ("customer2", "POST", "/api/device/credentials", creds, 403),
        ("customer2", "POST", f"/api/customer/{w.c2}/device/{c1_dev}", None, 403),
        ("customer2", "DELETE", f"/api/customer/device/{c1_dev}", None, 403),
        ("customer2", "GET", f"/api/user/{w.customer.id}", None, 403),
        ("customer2", "GET", f"/api/user/{w.customer.id}/activationLink", None, 403),
        ("customer2", "GET", f"/api/tenant/{w.t1}", None, 403),
    ]
    return rows


async def _snapshot(ctx, world) -> tuple:
    devices = await ctx.devices.list(world.t1, 100, 0)
    creds = [await ctx.devices.credentials(world.t1, d.id) for d in devices.data]
    customers = await ctx.customers.list(world.t1, 100, 0)
    users = await ctx.users.list(world.t1, None, 100, 0)
    return (devices.data, [c.credentials_id for c in creds], customers.data,
            [(u.id, u.first_name) for u in users.data], await ctx.users.count())


async def test_no_request_reaches_another_tenant_or_customer(start_server, world):
    async with start_server() as (server, api):
        s = await sessions(api, world)
        before = await _snapshot(server.ctx, world)
        for role, method, path, body, status in _isolation_cases(world):
            got, answer = await s[role].call(method, path, body)
            assert got == status, (role, method, path, got, answer)
            if isinstance(answer, dict) and got != 200:
                assert answer["errorCode"] == (32 if status == 404 else 20)
            # nothing of tenant 1 in any answer
            text = json.dumps(answer)
            for secret in (world.dev_c1.name, "Customer A", world.customer.email):
                assert secret not in text, (path, text)
        assert await _snapshot(server.ctx, world) == before
        # and the same requests by the owners do work (the table tests something)
        assert (await s["tenant"].get(f"/api/device/{world.dev_c1.id}"))[0] == 200
        assert (await s["customer"].get(f"/api/device/{world.dev_c1.id}/credentials"))[0] == 200


async def test_first_start_needs_a_system_administrator(start_server, world, tmp_path, store_url, capsys):
    from fleetrpc.server.identity import NoUsersError

    if store_url.startswith("postgresql"):
        # A shared database with nobody in it and nothing configured: refused.
        with pytest.raises(NoUsersError, match="fleetrpc admin create-sysadmin"):
            async with start_server(seed=False):
                pass
    secret = tmp_path / "admin-password"
    secret.write_text("correct horse battery\n")
    auth = {"sysadmin_email": "root@example.com", "sysadmin_password_file": str(secret)}
    async with start_server(seed=False, auth=auth) as (server, api):
        token = await api.login("root@example.com", "correct horse battery")
        status, body, _ = await api.request("GET", "/api/auth/user", token)
        assert json.loads(body)["authority"] == "SYS_ADMIN"
        assert await server.ctx.users.count() == 1  # nothing generated beside it
    # the next start finds one and creates nothing (the setting may stay)
    async with start_server(seed=False, auth=auth) as (server, api):
        assert await server.ctx.users.count("SYS_ADMIN") == 1
    assert "password" not in capsys.readouterr().err


@pytest.mark.parametrize("store_url", ["(embedded)"])  # store.url unset below: one run is enough
async def test_first_embedded_start_generates_the_system_administrator(start_server, tmp_path, capsys):
    """No users and nothing configured on the embedded database: a system
    administrator with a random password in a 0600 file, printed once."""
    from fleetrpc.server.identity import GENERATED_SYSADMIN_EMAIL, SYSADMIN_PASSWORD_FILE

    embedded = {"store": {"url": None}}  # SQLite in server.data_dir
    async with start_server(seed=False, **embedded) as (server, api):
        path = server.ctx.settings.data_dir / SYSADMIN_PASSWORD_FILE
        password = path.read_text().strip()
        assert len(password) >= 20
        assert path.stat().st_mode & 0o777 == 0o600
        err = capsys.readouterr().err
        assert GENERATED_SYSADMIN_EMAIL in err and password in err and str(path.resolve()) in err
        token = await api.login(GENERATED_SYSADMIN_EMAIL, password)
        status, body, _ = await api.request("GET", "/api/auth/user", token)
        assert status == 200 and json.loads(body)["authority"] == "SYS_ADMIN"
    # the next start: the same administrator, nothing printed, the password unchanged
    async with start_server(seed=False, **embedded) as (server, api):
        assert await server.ctx.users.count() == 1
        assert path.read_text().strip() == password
        assert await api.login(GENERATED_SYSADMIN_EMAIL, password)
    assert password not in capsys.readouterr().err


async def test_demo_accounts_and_devices(start_server):
    """``fleetrpc serve --demo``: ThingsBoard's demo logins and devices."""
    async with start_server(seed=False, demo=True) as (server, api):
        tenant = Client(api, await api.login("tenant@thingsboard.org", "tenant"))
        status, page = await tenant.get("/api/tenant/devices?pageSize=100&page=0")
        names = {d["name"] for d in page["data"]}
        assert {"Test Device A1", "DHT11 Demo Device", "Thermostat T1"} <= names
        customer = Client(api, await api.login("customerA@thingsboard.org", "customer"))
        me = (await customer.get("/api/auth/user"))[1]
        status, page = await customer.get(f"/api/customer/{me['customerId']['id']}/devices?pageSize=10&page=0")
        assert sorted(d["name"] for d in page["data"]) == ["Test Device A1", "Test Device A2", "Test Device A3"]
        a1 = next(d for d in page["data"] if d["name"] == "Test Device A1")
        assert (await customer.get(f"/api/device/{a1['id']['id']}/credentials"))[1]["credentialsId"] == "A1_TEST_TOKEN"
        assert await api.login("sysadmin@thingsboard.org", "sysadmin")


@pytest.mark.pg
def test_serve_without_users_on_postgresql_says_how(tmp_path, mqtt_url, fresh_pg_db):
    from click.testing import CliRunner

    from fleetrpc.cli import main

    env = {"FLEETRPC_MQTT_URL": mqtt_url, "FLEETRPC_SERVER_DATA_DIR": str(tmp_path / "data"),
           "FLEETRPC_HTTP_PORT": "0", "FLEETRPC_JWT_SECRET": "k" * 64, "FLEETRPC_STORE_URL": fresh_pg_db}
    result = CliRunner().invoke(main, ["serve"], env=env)
    assert result.exit_code == 1
    assert "could not start: the database has no users" in result.output
    assert "auth.sysadmin_email" in result.output and "fleetrpc admin create-sysadmin" in result.output
    assert not (tmp_path / "data" / "sysadmin-password").exists()