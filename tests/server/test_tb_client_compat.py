"""The routes ThingsBoard's own Python client (tb-rest-client) calls that an
audit found missing, driven through that client where it has the method and
through plain HTTP for the error bodies: device by name (singular path),
owner changes (assign / unassign), DeviceInfo pages with ``active``,
``deviceProfileId`` and ``includeCustomers``, device types, devices by ids,
customer by title / short info / title / delete, tenant info, tenant infos
and tenant delete.  Each on SQLite and PostgreSQL; for each route, tenant
2's administrator and customer 2's user reach nothing of theirs to reach."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from tb_rest_client.models.tenant import Tenant
from tb_rest_client.rest import ApiException
from tb_rest_client.rest_client import RestClient

from fleetrpc.device import DeviceClient
from fleetrpc.errors import RpcNotFoundError
from fleetrpc.store.entities import NULL_UUID
from fleetrpc.store.entities.model import device_profile_id
from tests.helpers.rest import Client as Http
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.mqtt

UNKNOWN = "8a7e4f10-0000-4000-8000-000000000000"
PAGE = "pageSize=10&page=0"


# -- helpers ----------------------------------------------------------------------------------



async def sessions(api, world) -> dict[str, Http]:
    names = {"sysadmin": world.sysadmin, "tenant": world.tenant, "customer": world.customer,
             "customer2": world.customer2, "tenant2": world.tenant2, "customer3": world.customer3}
    return {name: Http(api, await api.login(a.email)) for name, a in names.items()}


def error(result, status: int, code: int) -> dict:
    """ThingsBoard's error JSON with this status and errorCode."""
    got, body = result
    assert isinstance(body, dict), result
    assert (got, body["status"], body["errorCode"]) == (status, status, code), result
    assert set(body) == {"status", "message", "errorCode", "timestamp"}, body
    return body


@contextlib.contextmanager
def tb_client(url: str, email: str):
    """tb-rest-client logged in as ``email`` (it runs a refresh thread: stopped after)."""
    client = RestClient(base_url=url)
    client.login(username=email, password="secret")
    try:
        yield client
    finally:
        client.stop()


def status_of(fn, *args, **kwargs) -> int:
    """The HTTP status the client's call raised (ApiException), or 200."""
    try:
        fn(*args, **kwargs)
    except ApiException as exc:
        return exc.status
    return 200


async def in_thread(fn, *args):
    return await asyncio.to_thread(fn, *args)


# -- 1. GET /api/tenant/device?deviceName= -------------------------------------------------------


async def test_tenant_device_by_name(start_server, world):
    async with start_server() as (server, api):
        url = server.ctx.url

        def session() -> dict:
            with tb_client(url, world.tenant.email) as c:
                return {"found": c.get_tenant_device(world.dev_c1.name),
                        "unknown": status_of(c.get_tenant_device, "No such device"),
                        "other_tenant": status_of(c.get_tenant_device, world.dev_t2.name)}

        out = await in_thread(session)
        assert out["found"].id.id == world.dev_c1.id and out["found"].name == world.dev_c1.name
        assert (out["unknown"], out["other_tenant"]) == (404, 404)
        s = await sessions(api, world)
        body = error(await s["tenant"].get("/api/tenant/device?deviceName=No%20such"), 404, 32)
        assert body["message"] == "Requested item wasn't found!"
        error(await s["tenant"].get("/api/tenant/device"), 400, 31)
        error(await s["tenant"].get("/api/tenant/device?deviceName=a%00b"), 404, 32)
        error(await s["tenant2"].get(f"/api/tenant/device?deviceName={world.dev_t1.name}"), 404, 32)
        error(await s["customer"].get(f"/api/tenant/device?deviceName={world.dev_c1.name}"), 403, 20)
        error(await s["sysadmin"].get(f"/api/tenant/device?deviceName={world.dev_c1.name}"), 403, 20)
        # the plural path still answers one device too
        status, device = await s["tenant"].get(f"/api/tenant/devices?deviceName={world.dev_t1.name}")
        assert (status, device["id"]["id"]) == (200, world.dev_t1.id)


# -- 2. POST /api/owner/{CUSTOMER|TENANT}/{ownerId}/DEVICE/{deviceId} -----------------------------


async def test_owner_routes_assign_and_unassign(start_server, world):
    async with start_server() as (server, api):
        ctx, url = server.ctx, server.ctx.url

        def session() -> dict:
            with tb_client(url, world.tenant.email) as c:
                assigned = c.assign_device_to_customer(world.c1, world.dev_t1.id)
                again = c.assign_device_to_customer(world.c1, world.dev_t1.id)  # already its owner
                moved = c.assign_device_to_customer(world.c2, world.dev_t1.id)
                unassigned = c.unassign_device_from_customer(world.dev_t1.id)
                unassigned_again = c.unassign_device_from_customer(world.dev_t1.id)
                return {"assigned": assigned, "again": again, "moved": moved, "unassigned": unassigned,
                        "unassigned_again": unassigned_again,
                        "unknown_customer": status_of(c.assign_device_to_customer, UNKNOWN, world.dev_t1.id),
                        "other_tenants_customer": status_of(c.assign_device_to_customer, world.c3, world.dev_t1.id),
                        "other_tenants_device": status_of(c.assign_device_to_customer, world.c1, world.dev_t2.id)}

        out = await in_thread(session)
        assert out["assigned"].customer_id.id == world.c1 and out["again"].customer_id.id == world.c1
        assert out["moved"].customer_id.id == world.c2
        assert out["unassigned"].customer_id.id == NULL_UUID == out["unassigned_again"].customer_id.id
        assert (out["unknown_customer"], out["other_tenants_customer"], out["other_tenants_device"]) == (404, 404, 404)

        s = await sessions(api, world)
        t1_dev, t2_dev, c1_dev = world.dev_t1.id, world.dev_t2.id, world.dev_c1.id
        assert await s["tenant"].call("POST", f"/api/owner/CUSTOMER/{world.c1}/DEVICE/{t1_dev}") == (200, "")
        assert (await ctx.devices.get(world.t1, t1_dev)).customer_id == world.c1
        assert await s["tenant"].call("POST", f"/api/owner/TENANT/{world.t1}/DEVICE/{t1_dev}") == (200, "")
        assert (await ctx.devices.get(world.t1, t1_dev)).customer_id == NULL_UUID
        # other entity types, bad ids, unknown owners
        body = error(await s["tenant"].call("POST", f"/api/owner/CUSTOMER/{world.c1}/ASSET/{t1_dev}"), 400, 31)
        assert "DEVICE" in body["message"]
        error(await s["tenant"].call("POST", f"/api/owner/TENANT/{world.t1}/DASHBOARD/{t1_dev}"), 400, 31)
        error(await s["tenant"].call("POST", f"/api/owner/CUSTOMER/{world.c1}/DEVICE/not-a-uuid"), 400, 31)
        error(await s["tenant"].call("POST", f"/api/owner/CUSTOMER/nope/DEVICE/{t1_dev}"), 400, 31)
        error(await s["tenant"].call("POST", f"/api/owner/CUSTOMER/{UNKNOWN}/DEVICE/{t1_dev}"), 404, 32)
        error(await s["tenant"].call("POST", f"/api/owner/CUSTOMER/{world.c1}/DEVICE/{UNKNOWN}"), 404, 32)
        assert (await s["tenant"].call("POST", f"/api/owner/USER/{world.t1}/DEVICE/{t1_dev}"))[0] in (404, 405)
        # nobody else moves tenant 1's devices, nor moves theirs to tenant 1's owners
        before = [(d.id, d.customer_id) for d in (await ctx.devices.list(world.t1, 100, 0)).data]
        before2 = [(d.id, d.customer_id) for d in (await ctx.devices.list(world.t2, 100, 0)).data]
        for role, path, status, code in (
            ("tenant2", f"/api/owner/CUSTOMER/{world.c3}/DEVICE/{c1_dev}", 404, 32),
            ("tenant2", f"/api/owner/CUSTOMER/{world.c1}/DEVICE/{t2_dev}", 404, 32),
            ("tenant2", f"/api/owner/TENANT/{world.t2}/DEVICE/{c1_dev}", 404, 32),
            ("tenant2", f"/api/owner/TENANT/{world.t1}/DEVICE/{c1_dev}", 403, 20),
            ("tenant2", f"/api/owner/TENANT/{world.t1}/DEVICE/{t2_dev}", 403, 20),
            ("customer", f"/api/owner/CUSTOMER/{world.c1}/DEVICE/{t1_dev}", 403, 20),
            ("customer2", f"/api/owner/CUSTOMER/{world.c2}/DEVICE/{c1_dev}", 403, 20),
            ("customer2", f"/api/owner/TENANT/{world.t1}/DEVICE/{c1_dev}", 403, 20),
            ("customer3", f"/api/owner/TENANT/{world.t2}/DEVICE/{t2_dev}", 403, 20),
            ("sysadmin", f"/api/owner/CUSTOMER/{world.c1}/DEVICE/{t1_dev}", 403, 20),
            ("sysadmin", f"/api/owner/TENANT/{world.t1}/DEVICE/{c1_dev}", 403, 20),
        ):
            answer = await s[role].call("POST", path)
            error(answer, status, code)
            assert world.dev_c1.name not in json.dumps(answer[1]) and "Customer A" not in json.dumps(answer[1])
        assert [(d.id, d.customer_id) for d in (await ctx.devices.list(world.t1, 100, 0)).data] == before
        assert [(d.id, d.customer_id) for d in (await ctx.devices.list(world.t2, 100, 0)).data] == before2


# -- 3. DeviceInfo pages: /api/deviceInfos/all, active, deviceProfileId, includeCustomers --------------


async def test_device_infos_all_and_filters(start_server, world, mqtt_url):
    async with start_server() as (server, api):
        ctx, url = server.ctx, server.ctx.url
        # tenant 1: three more unassigned devices, two of them online below
        extra = [await ctx.devices.create(world.t1, f"Extra {i}", type="sensor") for i in range(3)]
        online = [world.dev_c1.id, extra[0].id, extra[1].id]
        clients = [DeviceClient(d, mqtt_url) for d in online + [world.dev_t2.id]]
        for c in clients:
            await c.connect()
        try:
            await wait_until(lambda: all(ctx.dispatcher.is_online(c.device_id) for c in clients))

            def session() -> dict:
                out: dict = {}
                with tb_client(url, world.tenant.email) as c:
                    out["own"] = c.get_tenant_device_infos(page_size=10, page=0, sort_property="name")
                    out["all"] = c.get_all_device_infos(page_size=10, page=0, include_customers=True,
                                                        sort_property="name")
                    out["own_active"] = c.get_tenant_device_infos(page_size=10, page=0, active=True,
                                                                  sort_property="name")
                    out["all_active"] = c.get_all_device_infos(page_size=10, page=0, include_customers=True,
                                                               active=True, sort_property="name")
                    out["inactive_pages"] = [
                        c.get_all_device_infos(page_size=1, page=n, include_customers=True, active=False,
                                               sort_property="name") for n in range(3)]
                    out["sensors"] = c.get_all_device_infos(
                        page_size=10, page=0, include_customers=True,
                        device_profile_id=device_profile_id(world.t1, "sensor"), sort_property="name")
                    out["customer_active"] = c.get_customer_device_infos(world.c1, page_size=10, page=0, active=True)
                    out["customer_inactive"] = c.get_customer_device_infos(world.c1, page_size=10, page=0,
                                                                           active=False)
                with tb_client(url, world.customer.email) as c:
                    out["as_customer"] = c.get_all_device_infos(page_size=10, page=0, include_customers=True)
                    out["as_customer_inactive"] = c.get_all_device_infos(page_size=10, page=0, active=False)
                return out

            out = await in_thread(session)
        finally:
            for c in clients:
                await c.close()

        def names(page) -> list[str]:
            return [d.name for d in page.data]

        own = sorted([world.dev_t1.name] + [d.name for d in extra])
        assert names(out["own"]) == own and out["own"].total_elements == 4
        assert out["all"].total_elements == 6 and world.dev_t2.name not in names(out["all"])
        assert names(out["own_active"]) == ["Extra 0", "Extra 1"] and out["own_active"].total_elements == 2
        assert [d.active for d in out["own_active"].data] == [True, True]
        assert names(out["all_active"]) == sorted([world.dev_c1.name, "Extra 0", "Extra 1"])
        # paging by the filter: one per page, three inactive, the last page says no more
        pages = out["inactive_pages"]
        assert [names(p) for p in pages] == [[world.dev_c2.name], [world.dev_t1.name], ["Extra 2"]]
        assert [(p.total_elements, p.total_pages, p.has_next) for p in pages] == [(3, 3, True), (3, 3, True),
                                                                                   (3, 3, False)]
        assert all(not d.active for p in pages for d in p.data)
        assert names(out["sensors"]) == ["Extra 0", "Extra 1", "Extra 2"]
        assert names(out["customer_active"]) == [world.dev_c1.name] and out["customer_inactive"].total_elements == 0
        assert names(out["as_customer"]) == [world.dev_c1.name]
        assert out["as_customer_inactive"].total_elements == 0

        # the same by plain HTTP, with ThingsBoard's error bodies
        s = await sessions(api, world)
        await wait_until(lambda: not ctx.dispatcher.is_online(world.dev_c1.id))
        status, page = await s["tenant"].get(f"/api/tenant/deviceInfos?{PAGE}&active=true")
        assert (status, page["totalElements"], page["data"]) == (200, 0, [])
        status, page = await s["tenant"].get(f"/api/tenant/deviceInfos?{PAGE}&active=false")
        assert page["totalElements"] == 6 and page["hasNext"] is False
        status, page = await s["tenant"].get(f"/api/tenant/deviceInfos?{PAGE}&deviceProfileId={UNKNOWN}")
        assert (status, page["totalElements"]) == (200, 0)
        # type wins over deviceProfileId, as in ThingsBoard
        status, page = await s["tenant"].get(
            f"/api/tenant/deviceInfos?{PAGE}&type=default&deviceProfileId={device_profile_id(world.t1, 'sensor')}")
        assert page["totalElements"] == 3 and {d["type"] for d in page["data"]} == {"default"}
        # a profile id of tenant 2's type names nothing of tenant 1's
        other_profile = device_profile_id(world.t2, "default")
        status, page = await s["tenant"].get(
            f"/api/deviceInfos/all?{PAGE}&includeCustomers=true&deviceProfileId={other_profile}")
        assert (status, page["totalElements"]) == (200, 0)
        for path in (f"/api/tenant/deviceInfos?{PAGE}&active=maybe", f"/api/deviceInfos/all?{PAGE}&active=2",
                     f"/api/deviceInfos/all?{PAGE}&includeCustomers=sure",
                     f"/api/customer/{world.c1}/deviceInfos?{PAGE}&deviceProfileId=nope",
                     "/api/deviceInfos/all?page=0", "/api/deviceInfos/all?pageSize=0&page=0",
                     f"/api/deviceInfos/all?{PAGE}&sortProperty=secret"):
            error(await s["tenant"].get(path), 400, 31)
        # isolation: tenant 2 sees only its device; customer 2 only its own, whatever it asks
        status, page = await s["tenant2"].get(f"/api/deviceInfos/all?{PAGE}&includeCustomers=true")
        assert [d["name"] for d in page["data"]] == [world.dev_t2.name]
        status, page = await s["tenant2"].get(f"/api/deviceInfos/all?{PAGE}&includeCustomers=true&active=false")
        assert [d["name"] for d in page["data"]] == [world.dev_t2.name]
        status, page = await s["customer2"].get(f"/api/deviceInfos/all?{PAGE}&includeCustomers=true&active=false")
        assert [d["name"] for d in page["data"]] == [world.dev_c2.name]
        status, page = await s["customer3"].get(f"/api/deviceInfos/all?{PAGE}&includeCustomers=true")
        assert (status, page["data"]) == (200, [])
        error(await s["customer2"].get(f"/api/customer/{world.c1}/deviceInfos?{PAGE}&active=false"), 403, 20)
        error(await s["tenant2"].get(f"/api/customer/{world.c1}/deviceInfos?{PAGE}&active=false"), 404, 32)
        error(await s["sysadmin"].get(f"/api/deviceInfos/all?{PAGE}"), 403, 20)


# -- 4. GET /api/device/types -------------------------------------------------------------------


async def test_device_types(start_server, world):
    async with start_server() as (server, api):
        ctx, url = server.ctx, server.ctx.url
        await ctx.devices.create(world.t1, "Thermo", type="thermostat")
        await ctx.devices.create(world.t1, "Thermo 2", type="thermostat")
        await ctx.devices.create(world.t2, "Secret", type="tenant2-only")

        def session(email: str) -> list:
            with tb_client(url, email) as c:
                return c.get_device_types()

        types = await in_thread(session, world.tenant.email)
        assert [(t.type, t.entity_type, t.tenant_id.id) for t in types] == [
            ("default", "DEVICE", world.t1), ("thermostat", "DEVICE", world.t1)]
        assert [t.type for t in await in_thread(session, world.customer.email)] == ["default", "thermostat"]
        assert [t.type for t in await in_thread(session, world.tenant2.email)] == ["default", "tenant2-only"]
        s = await sessions(api, world)
        status, body = await s["tenant"].get("/api/device/types")
        assert body[0] == {"tenantId": {"entityType": "TENANT", "id": world.t1}, "entityType": "DEVICE",
                           "type": "default"}
        status, body = await s["customer3"].get("/api/device/types")
        assert "thermostat" not in json.dumps(body)
        error(await s["sysadmin"].get("/api/device/types"), 403, 20)


# -- 5. GET /api/devices?deviceIds= -------------------------------------------------------------


async def test_devices_by_ids(start_server, world):
    async with start_server() as (server, api):
        url = server.ctx.url
        every = [world.dev_c1.id, world.dev_c2.id, world.dev_t1.id, world.dev_t2.id, UNKNOWN]

        def session(email: str) -> list[str]:
            with tb_client(url, email) as c:
                return [d.id.id for d in c.get_devices_by_ids(every)]

        assert await in_thread(session, world.tenant.email) == [world.dev_c1.id, world.dev_c2.id, world.dev_t1.id]
        assert await in_thread(session, world.customer.email) == [world.dev_c1.id]
        assert await in_thread(session, world.customer2.email) == [world.dev_c2.id]
        assert await in_thread(session, world.tenant2.email) == [world.dev_t2.id]
        assert await in_thread(session, world.customer3.email) == []
        s = await sessions(api, world)
        status, body = await s["tenant"].get(
            f"/api/devices?deviceIds={world.dev_t1.id.upper()},%20{world.dev_t1.id}&deviceIds={world.dev_c1.id}")
        assert (status, [d["id"]["id"] for d in body]) == (200, [world.dev_t1.id, world.dev_c1.id])
        assert body[0]["name"] == world.dev_t1.name
        error(await s["tenant"].get("/api/devices"), 400, 31)
        error(await s["tenant"].get("/api/devices?deviceIds="), 400, 31)
        error(await s["tenant"].get(f"/api/devices?deviceIds={world.dev_t1.id},nope"), 400, 31)
        error(await s["tenant"].get(f"/api/devices?deviceIds={world.dev_t1.id},,"), 400, 31)
        error(await s["sysadmin"].get(f"/api/devices?deviceIds={world.dev_t1.id}"), 403, 20)
        status, body = await s["tenant2"].get(f"/api/devices?deviceIds={world.dev_c1.id},{world.dev_t1.id}")
        assert (status, body) == (200, [])


# -- 6. customers: by title, short info, title, delete ------------------------------------------------


async def test_customer_by_title_info_title_and_delete(start_server, world):
    async with start_server() as (server, api):
        ctx, url = server.ctx, server.ctx.url
        # customer 1's user calls its device (a persistent call: answered at
        # once), so the RPC path has that device in its cache
        old_token = await api.login(world.customer.email)
        call = {"method": "x", "persistent": True}
        assert (await api.request("POST", f"/api/rpc/oneway/{world.dev_c1.id}", old_token, json=call))[0] == 200

        def session() -> dict:
            out: dict = {}
            with tb_client(url, world.tenant.email) as c:
                out["by_title"] = c.get_tenant_customer("Customer A")
                out["unknown_title"] = status_of(c.get_tenant_customer, "Nobody")
                out["other_tenants_title"] = status_of(c.get_tenant_customer, "Customer C")
                out["short"] = c.get_short_customer_info_by_id(world.c2)
                out["title"] = c.get_customer_title_by_id(world.c2)
                out["other_tenants_short"] = status_of(c.get_short_customer_info_by_id, world.c3)
                out["other_tenants_delete"] = status_of(c.delete_customer, world.c3)
            with tb_client(url, world.customer.email) as c:
                out["own_title"] = c.get_customer_title_by_id(world.c1)
                out["other_title"] = status_of(c.get_customer_title_by_id, world.c2)
                out["delete_own"] = status_of(c.delete_customer, world.c1)
            with tb_client(url, world.tenant.email) as c:
                c.delete_customer(world.c1)
                out["after"] = status_of(c.get_customer_by_id, world.c1)
                out["device_after"] = c.get_device_by_id(world.dev_c1.id)
            return out

        out = await in_thread(session)
        assert out["by_title"].id.id == world.c1 and out["by_title"].title == "Customer A"
        assert (out["unknown_title"], out["other_tenants_title"], out["other_tenants_short"]) == (404, 404, 404)
        assert out["short"] == {"title": "Customer B", "isPublic": False}
        assert (out["title"], out["own_title"]) == ("Customer B", "Customer A")
        assert (out["other_title"], out["delete_own"], out["other_tenants_delete"]) == (403, 403, 404)
        # deleted: its users with it, its devices stay with the tenant, unassigned
        assert out["after"] == 404 and out["device_after"].customer_id.id == NULL_UUID
        assert await ctx.users.get(world.customer.id) is None
        assert await ctx.users.get(world.customer2.id) is not None
        assert (await ctx.customers.get(world.t2, world.c3)) is not None

        # the customer's user is gone: the others log in
        tenant = Http(api, await api.login(world.tenant.email))
        tenant2 = Http(api, await api.login(world.tenant2.email))
        customer2 = Http(api, await api.login(world.customer2.email))
        sysadmin = Http(api, await api.login(world.sysadmin.email))
        body = error(await tenant.get("/api/tenant/customers?customerTitle=Nobody"), 404, 32)
        assert body["message"] == "Customer with title [Nobody] is not found"
        error(await tenant.get("/api/tenant/customers"), 400, 31)
        error(await tenant.get("/api/tenant/customers?customerTitle=a%00b"), 404, 32)
        status, raw, r = await api.request("GET", f"/api/customer/{world.c2}/title", tenant.token)
        assert (status, raw, r.content_type) == (200, b"Customer B", "application/text")
        for who, path, status, code in (
            (tenant2, "/api/tenant/customers?customerTitle=Customer%20B", 404, 32),
            (tenant2, f"/api/customer/{world.c2}/shortInfo", 404, 32),
            (tenant2, f"/api/customer/{world.c2}/title", 404, 32),
            (customer2, "/api/tenant/customers?customerTitle=Customer%20B", 403, 20),
            (customer2, f"/api/customer/{world.c3}/shortInfo", 403, 20),
            (sysadmin, f"/api/customer/{world.c2}/title", 403, 20),
            (sysadmin, "/api/tenant/customers?customerTitle=Customer%20B", 403, 20),
        ):
            answer = await who.get(path)
            error(answer, status, code)
            assert "entityType" not in json.dumps(answer[1]) and "isPublic" not in json.dumps(answer[1])
        for who, status, code in ((tenant2, 404, 32), (customer2, 403, 20), (sysadmin, 403, 20)):
            error(await who.call("DELETE", f"/api/customer/{world.c2}"), status, code)
        assert (await ctx.customers.get(world.t1, world.c2)) is not None
        assert (await ctx.devices.get(world.t1, world.dev_c2.id)).customer_id == world.c2
        error(await tenant.call("DELETE", f"/api/customer/{UNKNOWN}"), 404, 32)
        error(await tenant.call("DELETE", f"/api/customer/{world.c1}"), 404, 32)  # already gone
        error(await tenant.call("DELETE", "/api/customer/nope"), 400, 31)
        # the deleted customer's user (its token unexpired) calls its old device no more: its
        # tokens were revoked with it, on this node at once (not at the next cluster.poll_interval_s)
        status, raw, _ = await api.request("POST", f"/api/rpc/oneway/{world.dev_c1.id}", old_token, json=call)
        assert status == 401, raw
        assert json.loads(raw)["errorCode"] == 11, raw


# -- 7. tenants: info, infos, delete ---------------------------------------------------------------


async def test_tenant_info_infos_and_delete(start_server, world):
    async with start_server() as (server, api):
        ctx, url = server.ctx, server.ctx.url
        s = await sessions(api, world)
        # tenant 2 has a queued persistent call (its device is offline)
        status, body = await s["tenant2"].call("POST", f"/api/rpc/twoway/{world.dev_t2.id}",
                                               {"method": "later", "persistent": True})
        assert status == 200
        rpc_id = body["rpcId"]

        def sysadmin_session() -> dict:
            out: dict = {}
            with tb_client(url, world.sysadmin.email) as c:
                out["info"] = c.get_tenant_info_by_id(world.t1)
                out["infos"] = c.get_tenant_infos(page_size=10, page=0, sort_property="title")
                out["infos_by_profile"] = c.get_tenant_infos(page_size=1, page=1, sort_property="tenantProfileName")
                spare = c.save_tenant(Tenant(title="Spare tenant"))
                out["spare"] = spare
                c.delete_tenant(spare.id)
                out["spare_after"] = status_of(c.get_tenant_by_id, spare.id)
                out["unknown"] = status_of(c.delete_tenant, UNKNOWN)
            with tb_client(url, world.tenant.email) as c:
                out["own_info"] = c.get_tenant_info_by_id(world.t1)
                out["other_info"] = status_of(c.get_tenant_info_by_id, world.t2)
                out["other_delete"] = status_of(c.delete_tenant, world.t2)
                out["infos_as_tenant"] = status_of(c.get_tenant_infos, page_size=10, page=0)
            return out

        out = await in_thread(sysadmin_session)
        info = out["info"]
        assert (info.id.id, info.title, info.tenant_profile_name) == (world.t1, "Tenant 1", "Default")
        assert [t.title for t in out["infos"].data] == ["Tenant 1", "Tenant 2"]
        assert {t.tenant_profile_name for t in out["infos"].data} == {"Default"}
        assert out["infos_by_profile"].total_elements == 2 and len(out["infos_by_profile"].data) == 1
        assert out["spare"].title == "Spare tenant" and out["spare_after"] == 404 and out["unknown"] == 404
        assert out["own_info"].tenant_profile_name == "Default"
        assert (out["other_info"], out["other_delete"], out["infos_as_tenant"]) == (403, 403, 403)
        for who in ("customer", "customer3"):
            error(await s[who].call("DELETE", f"/api/tenant/{world.t2}"), 403, 20)
            error(await s[who].get(f"/api/tenant/info/{world.t2}"), 403, 20)
            error(await s[who].get(f"/api/tenantInfos?{PAGE}"), 403, 20)
        error(await s["tenant2"].call("DELETE", f"/api/tenant/{world.t1}"), 403, 20)
        error(await s["sysadmin"].call("DELETE", "/api/tenant/nope"), 400, 31)
        error(await s["sysadmin"].get(f"/api/tenantInfos?{PAGE}&sortProperty=secret"), 400, 31)
        status, body = await s["sysadmin"].get(f"/api/tenant/info/{world.t1}")
        assert body["tenantProfileName"] == "Default" and body["tenantProfileId"]["entityType"] == "TENANT_PROFILE"
        assert await ctx.tenants.get(world.t2) is not None and await ctx.tenants.get(world.t1) is not None

        # not even its own tenant's administrator deletes a tenant (ThingsBoard 4.3 would)
        error(await s["tenant2"].call("DELETE", f"/api/tenant/{world.t2}"), 403, 20)
        assert await ctx.tenants.get(world.t2) is not None
        # the system administrator does: everything of it goes
        assert await s["sysadmin"].call("DELETE", f"/api/tenant/{world.t2}") == (200, "")
        assert await ctx.tenants.get(world.t2) is None
        assert (await ctx.devices.list(world.t2, 10, 0)).total_elements == 0
        assert await ctx.devices.get_by_id(world.dev_t2.id) is None
        assert await ctx.customers.get(world.t2, world.c3) is None
        assert await ctx.users.get(world.tenant2.id) is None and await ctx.users.get(world.customer3.id) is None
        with pytest.raises(RpcNotFoundError):
            await ctx.engine.get(rpc_id, tenant_id=world.t2)
        assert await ctx.db.fetchval("SELECT count(*) FROM rpc WHERE tenant_id = $1", world.t2) == 0
        # tenant 1 untouched
        assert (await ctx.devices.list(world.t1, 10, 0)).total_elements == 3
        assert (await ctx.customers.list(world.t1, 10, 0)).total_elements == 2
        assert await ctx.users.get(world.customer.id) is not None
        error(await s["sysadmin"].call("DELETE", f"/api/tenant/{world.t2}"), 404, 32)
