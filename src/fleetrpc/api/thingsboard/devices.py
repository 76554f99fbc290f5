"""Devices, their credentials, assignment and online state (ThingsBoard's
DeviceController and the server-scope attributes ``active`` /
``lastActivityTime``).

==============================================================  ============================  ======================
endpoint                                                        who                           answer
==============================================================  ============================  ======================
``POST /api/device[?accessToken=]``                             TENANT_ADMIN creates and      Device
                                                                updates; CUSTOMER_USER
                                                                updates its customer's
``POST /api/device-with-credentials``                           TENANT_ADMIN                  Device
``GET /api/device/{deviceId}``                                  read rule (below)             Device
``DELETE /api/device/{deviceId}``                               TENANT_ADMIN                  empty 200
``GET /api/device/info/{deviceId}``                             read rule                     DeviceInfo
``GET /api/tenant/devices?pageSize&page[&type]...``             TENANT_ADMIN                  PageData<Device>
``GET /api/tenant/devices?deviceName=``                         TENANT_ADMIN                  Device
``GET /api/tenant/device?deviceName=``                          TENANT_ADMIN                  Device
``GET /api/tenant/deviceInfos?pageSize&page[&type]...``         TENANT_ADMIN                  PageData<DeviceInfo>
``GET /api/deviceInfos/all?pageSize&page[&includeCustomers]``   TENANT_ADMIN, CUSTOMER_USER   PageData<DeviceInfo>
``GET /api/customer/{customerId}/devices?...``                  customer read rule            PageData<Device>
``GET /api/customer/{customerId}/deviceInfos?...``              customer read rule            PageData<DeviceInfo>
``GET /api/devices?deviceIds=a,b``                              TENANT_ADMIN, CUSTOMER_USER   [Device] (readable only)
``GET /api/device/types``                                       TENANT_ADMIN, CUSTOMER_USER   [EntitySubtype]
``POST /api/customer/{customerId}/device/{deviceId}``           TENANT_ADMIN                  Device
``DELETE /api/customer/device/{deviceId}``                      TENANT_ADMIN                  Device
``POST /api/owner/CUSTOMER/{customerId}/DEVICE/{deviceId}``     TENANT_ADMIN                  empty 200
``POST /api/owner/TENANT/{tenantId}/DEVICE/{deviceId}``         TENANT_ADMIN                  empty 200
``GET /api/device/{deviceId}/credentials``                      read rule                     DeviceCredentials
``POST /api/device/credentials``                                TENANT_ADMIN                  DeviceCredentials
``GET /api/plugins/telemetry/DEVICE/{id}/values/attributes/``   read rule                     ``[{lastUpdateTs,
``SERVER_SCOPE[?keys=active,lastActivityTime]``                                               key, value}]``
==============================================================  ============================  ======================

Read rule: a tenant administrator reads its tenant's devices, a customer
user its customer's (another customer's: 403); another tenant's device is
404 as an unknown one (:mod:`.access`).

The DeviceInfo pages take ThingsBoard's filters ``active`` (online now or
not: the ids online are handed to the query, so counts and pages stay
right), ``deviceProfileId`` (profiles are one per type here: the type whose
derived profile id it is; ignored when ``type`` is given, as there) and, on
``/api/deviceInfos/all`` (Professional Edition's, which tb-rest-client
calls), ``includeCustomers``: a tenant administrator sees the devices the
tenant holds itself, or with it true every device; a customer user its
customer's.  ``/api/owner/...`` (also Professional Edition's, tb-rest-client's
``assign_device_to_customer`` / ``unassign_device_from_customer``) does
what the assignment routes do for DEVICE and answers 400 for other entity
types; moving a device to the owner it has already is a no-op.

A device's ``active`` is the dispatcher's presence now; its
``lastActivityTime`` the later of what the server saw since it started
(``ctx.activity``) and what the database kept (written by the server's
activity flush).  DeviceInfo has one field ThingsBoard's has not:
``connectedVia``, where an online device is connected (see
:func:`connected_via`).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from aiohttp import web

from ...store.entities import NULL_UUID, CredentialsInput, DeviceInput, is_gateway_info
from ...store.entities.model import device_profile_id
from ...wire import node_id_of
from ..auth import CUSTOMER_USER, TENANT_ADMIN
from ..errors import ApiError, EntitiesLimitBody
from ..keys import CTX, PRINCIPAL
from ..openapi import Answer, Param, operation
from .access import (
    check_uuid,
    customer_for_read,
    device_for_read,
    device_for_tenant_admin,
    device_for_write,
    require,
)
from .entities import (
    CredentialsBody,
    DeviceBody,
    DeviceCredentialsJson,
    DeviceInfoJson,
    DeviceInfoPage,
    DeviceJson,
    DevicePage,
    DeviceWithCredentialsBody,
    EntitySubtypeJson,
    json_reply,
    read_body,
)
from .paging import PageQuery, bool_param, page_params, page_query, required_param

__all__ = ["setup", "device_info"]

SORT = ("createdTime", "name", "type", "deviceProfileName", "label", "customerTitle")
ACTIVITY_KEYS = ("active", "lastActivityTime")
NOT_ASSIGNED = "Device isn't assigned to any customer!"


# -- DeviceInfo ---------------------------------------------------------------------------


def _last_activity(ctx: Any, device: Any) -> int | None:
    seen = ctx.activity.last(str(device.id))
    stored = device.last_activity_time
    if seen is None or (stored is not None and stored > seen):
        return stored
    return seen


def _online(ctx: Any, device_id: str) -> bool:
    d = ctx.dispatcher
    return bool(d is not None and d.is_online(device_id))


def connected_via(ctx: Any, device_id: str) -> str | None:
    """Where ``device_id`` is connected, as this node knows it: ``"broker"``,
    or the id of the node whose device endpoint has it (this one's or
    another's, from the presence that node publishes); None while offline."""
    d = ctx.dispatcher
    if d is None or not d.is_online(device_id):
        return None
    if ctx.endpoint is not None and ctx.endpoint.reaches(device_id):
        return d.node_id
    state = d.device_info(device_id)
    via = state.via if state is not None else None
    return "broker" if via is None else node_id_of(via)


def device_info(ctx: Any, device: Any, customer_title: str | None) -> dict[str, Any]:
    """ThingsBoard's DeviceInfo of ``device``: its Device JSON plus its
    customer's title, profile name (profiles are named after types here),
    ``active`` (connected now) and ``lastActivityTime``."""
    out = device.to_thingsboard()
    out["customerTitle"] = customer_title
    out["customerIsPublic"] = False
    out["deviceProfileName"] = device.type
    out["active"] = _online(ctx, str(device.id))
    out["lastActivityTime"] = _last_activity(ctx, device)
    out["connectedVia"] = connected_via(ctx, str(device.id))
    return out


async def _infos(ctx: Any, tenant_id: str, page: Any) -> dict[str, Any]:
    owners = {d.customer_id for d in page.data if d.customer_id != NULL_UUID}
    titles = await ctx.customers.titles(tenant_id, owners) if owners else {}
    out = page.to_thingsboard()
    out["data"] = [device_info(ctx, d, titles.get(d.customer_id)) for d in page.data]
    return out


# -- create, update -----------------------------------------------------------------------


async def _save(ctx: Any, p: Any, inp: DeviceInput, token: str | None) -> Any:
    """Create (tenant administrator) or update (``inp.id``) a device; a new
    ``token`` replaces the device's access token."""
    if inp.id is None:
        require(p, TENANT_ADMIN)
        return await ctx.devices.create(
            p.tenant_id, inp.name, type=inp.type, label=inp.label,
            customer_id=None if inp.customer_id == NULL_UUID else inp.customer_id,
            access_token=token, additional_info=inp.additional_info)
    device = await device_for_write(ctx, p, inp.id)
    if (inp.customer_id != device.customer_id or token is not None
            or is_gateway_info(inp.additional_info) != device.is_gateway):
        # Assignment, credentials and the gateway flag (which lets a device
        # answer for any device of the tenant): the tenant administrator's.
        require(p, TENANT_ADMIN)
    device = await ctx.devices.update(p.tenant_id, device.id, name=inp.name, type=inp.type, label=inp.label,
                                      additional_info=inp.additional_info)
    if inp.customer_id != device.customer_id:
        device = await ctx.devices.assign(p.tenant_id, device.id, inp.customer_id)
    if token is not None:
        await ctx.devices.set_credentials(p.tenant_id, device.id, token)
    return device


async def save_device(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    token = request.query.get("accessToken") or None
    device = await _save(ctx, p, DeviceInput.parse(await read_body(request)), token)
    return json_reply(device.to_thingsboard())


async def save_device_with_credentials(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    require(p, TENANT_ADMIN)
    body = await read_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("device"), dict) \
            or not isinstance(body.get("credentials"), dict):
        raise ApiError.bad_request("Invalid request body: expected {\"device\": {...}, \"credentials\": {...}}")
    inp = DeviceInput.parse(body["device"])
    creds = CredentialsInput.parse(body["credentials"])
    if creds.device_id is not None and inp.id is not None and creds.device_id != inp.id:
        raise ApiError.bad_request("credentials.deviceId is not the device's id")
    device = await _save(ctx, p, inp, creds.token)
    return json_reply(device.to_thingsboard())


# -- read, delete ---------------------------------------------------------------------------


async def get_device(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    device = await device_for_read(ctx, request[PRINCIPAL], check_uuid(request.match_info["deviceId"]))
    return json_reply(device.to_thingsboard())


async def get_device_info(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    device = await device_for_read(ctx, p, check_uuid(request.match_info["deviceId"]))
    title = None
    if device.customer_id != NULL_UUID:
        title = (await ctx.customers.titles(p.tenant_id, {device.customer_id})).get(device.customer_id)
    return json_reply(device_info(ctx, device, title))


async def delete_device(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    device = await device_for_tenant_admin(ctx, p, check_uuid(request.match_info["deviceId"]))
    await ctx.devices.delete(p.tenant_id, device.id)
    return web.Response(status=200)


# -- listings -------------------------------------------------------------------------------


def _type(request: web.Request) -> str | None:
    return request.query.get("type") or None


async def _list(ctx: Any, tenant_id: str, q: PageQuery, customer_id: str | None, type_: str | None,
                **filters: Any) -> Any:
    return await ctx.devices.list(tenant_id, q.page_size, q.page, customer_id=customer_id, type=type_,
                                  text_search=q.text_search, sort_property=q.sort_property,
                                  sort_order=q.sort_order, **filters)


def _online_ids(ctx: Any) -> frozenset[str] | None:
    """The ids online now, as ``active`` in DeviceInfo says; None when
    every device counts as online (presence is off: the dispatcher then
    calls every device)."""
    d = ctx.dispatcher
    if d is None:
        return frozenset()
    if not d.settings.presence:
        return None
    return d.online_devices


async def _info_filters(ctx: Any, request: web.Request, tenant_id: str) -> tuple[str | None, dict[str, Any]]:
    """A DeviceInfo page's ``type`` and the repository filters of its
    ``deviceProfileId`` and ``active`` (ThingsBoard's DeviceInfoFilter).
    Everything is checked before anything is read."""
    type_ = _type(request)
    if type_ is not None and not type_.strip():
        type_ = None
    raw_profile = request.query.get("deviceProfileId") or None
    profile = check_uuid(raw_profile) if raw_profile is not None and type_ is None else None
    active = bool_param(request, "active")
    filters: dict[str, Any] = {}
    if profile is not None:
        # No profile table: the profile is the type whose derived id it is
        # (none: an unknown profile, an empty page).
        type_ = next((t for t in await ctx.devices.types(tenant_id) if device_profile_id(tenant_id, t) == profile),
                     None)
        if type_ is None:
            filters["among"] = ()
    if active is not None:
        online = _online_ids(ctx)
        if online is None:
            if not active:
                filters["among"] = ()
        elif active:
            filters["among"] = online if "among" not in filters else ()
        else:
            filters["not_among"] = online
    return type_, filters


async def _tenant_device_by_name(ctx: Any, p: Any, name: str) -> web.Response:
    device = await ctx.devices.by_name(p.tenant_id, name)
    if device is None:
        raise ApiError.not_found("Requested item wasn't found!")
    return json_reply(device.to_thingsboard())


async def tenant_devices(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    require(p, TENANT_ADMIN)
    name = request.query.get("deviceName")
    if name is not None:
        return await _tenant_device_by_name(ctx, p, name)
    page = await _list(ctx, p.tenant_id, page_query(request, SORT), None, _type(request))
    return json_reply(page.to_thingsboard())


async def tenant_device(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    require(p, TENANT_ADMIN)
    return await _tenant_device_by_name(ctx, p, required_param(request, "deviceName"))


async def tenant_device_infos(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    require(p, TENANT_ADMIN)
    q = page_query(request, SORT)
    type_, filters = await _info_filters(ctx, request, p.tenant_id)
    page = await _list(ctx, p.tenant_id, q, None, type_, **filters)
    return json_reply(await _infos(ctx, p.tenant_id, page))


async def all_device_infos(request: web.Request) -> web.Response:
    """Professional Edition's ``/api/deviceInfos/all``: a tenant
    administrator's own devices (every device with ``includeCustomers``),
    a customer user's customer's."""
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    require(p, TENANT_ADMIN, CUSTOMER_USER)
    q = page_query(request, SORT)
    include_customers = bool_param(request, "includeCustomers")
    type_, filters = await _info_filters(ctx, request, p.tenant_id)
    if p.is_customer_user:
        customer_id: str | None = p.customer_id
    else:
        customer_id = None if include_customers else NULL_UUID
    page = await _list(ctx, p.tenant_id, q, customer_id, type_, **filters)
    return json_reply(await _infos(ctx, p.tenant_id, page))


async def devices_by_ids(request: web.Request) -> web.Response:
    """The devices of ``deviceIds`` the caller may read; the others
    (another customer's, another tenant's, unknown) are left out."""
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    require(p, TENANT_ADMIN, CUSTOMER_USER)
    if "deviceIds" not in request.query:
        required_param(request, "deviceIds", "String[]")
    ids = [part.strip() for raw in request.query.getall("deviceIds") for part in raw.split(",")]
    if not any(ids):
        raise ApiError.bad_request("Parameter 'deviceIds' can't be empty!")
    ids = [check_uuid(i) for i in ids]
    devices = await ctx.devices.by_ids(p.tenant_id, ids, customer_id=p.customer_id if p.is_customer_user else None)
    return json_reply([d.to_thingsboard() for d in devices])


async def device_types(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    require(p, TENANT_ADMIN, CUSTOMER_USER)
    tenant = {"entityType": "TENANT", "id": p.tenant_id}
    return json_reply([{"tenantId": tenant, "entityType": "DEVICE", "type": t}
                       for t in await ctx.devices.types(p.tenant_id)])


async def customer_devices(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    customer = await customer_for_read(ctx, p, check_uuid(request.match_info["customerId"]))
    page = await _list(ctx, p.tenant_id, page_query(request, SORT), customer.id, _type(request))
    return json_reply(page.to_thingsboard())


async def customer_device_infos(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    customer = await customer_for_read(ctx, p, check_uuid(request.match_info["customerId"]))
    q = page_query(request, SORT)
    type_, filters = await _info_filters(ctx, request, p.tenant_id)
    page = await _list(ctx, p.tenant_id, q, customer.id, type_, **filters)
    return json_reply(await _infos(ctx, p.tenant_id, page))


# -- assignment -----------------------------------------------------------------------------


async def assign_device(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    customer_id = check_uuid(request.match_info["customerId"])
    device = await device_for_tenant_admin(ctx, p, check_uuid(request.match_info["deviceId"]))
    if await ctx.customers.get(p.tenant_id, customer_id) is None:
        raise ApiError.not_found(f"Customer with id [{customer_id}] is not found")
    device = await ctx.devices.assign(p.tenant_id, device.id, customer_id)
    return json_reply(device.to_thingsboard())


async def unassign_device(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    device = await device_for_tenant_admin(ctx, p, check_uuid(request.match_info["deviceId"]))
    if device.customer_id == NULL_UUID:
        raise ApiError.bad_request(NOT_ASSIGNED)
    device = await ctx.devices.assign(p.tenant_id, device.id, None)
    return json_reply(device.to_thingsboard())


#: The one entity type whose owner ``/api/owner/...`` changes here.
OWNER_ENTITY = "DEVICE"


def _owned_entity(request: web.Request) -> str:
    """The entity id of an ``/api/owner/...`` path; 400 unless it names a
    DEVICE."""
    entity_type = request.match_info["entityType"]
    if entity_type != OWNER_ENTITY:
        raise ApiError.bad_request(
            f"Changing the owner of entity type '{entity_type[:32]}' is not supported: only DEVICE")
    return check_uuid(request.match_info["entityId"])


async def owner_to_customer(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    require(p, TENANT_ADMIN)
    customer_id = check_uuid(request.match_info["ownerId"])
    device = await device_for_tenant_admin(ctx, p, _owned_entity(request))
    if await ctx.customers.get(p.tenant_id, customer_id) is None:
        raise ApiError.not_found(f"Customer with id [{customer_id}] is not found")
    if device.customer_id != customer_id:
        await ctx.devices.assign(p.tenant_id, device.id, customer_id)
    return web.Response(status=200)


async def owner_to_tenant(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    require(p, TENANT_ADMIN)
    tenant_id = check_uuid(request.match_info["ownerId"])
    device_id = _owned_entity(request)
    if tenant_id != p.tenant_id:
        # Another tenant (ThingsBoard: no permission on it, whether it exists or not).
        raise ApiError.forbidden()
    device = await device_for_tenant_admin(ctx, p, device_id)
    if device.customer_id != NULL_UUID:
        await ctx.devices.assign(p.tenant_id, device.id, None)
    return web.Response(status=200)


# -- credentials ----------------------------------------------------------------------------


async def get_credentials(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    device = await device_for_read(ctx, p, check_uuid(request.match_info["deviceId"]))
    creds = await ctx.devices.credentials(p.tenant_id, device.id)
    if creds is None:
        raise ApiError.not_found(f"Device credentials of device [{device.id}] are not found")
    return json_reply(creds.to_thingsboard())


async def save_credentials(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    require(p, TENANT_ADMIN)
    creds = CredentialsInput.parse(await read_body(request))
    if creds.device_id is None:
        raise ApiError.bad_request("Device credentials should be assigned to device!")
    device = await device_for_tenant_admin(ctx, p, creds.device_id)
    saved = await ctx.devices.set_credentials(p.tenant_id, device.id, creds.token)
    return json_reply(saved.to_thingsboard())


# -- online state as server-scope attributes ------------------------------------------------


class AttributeKv(msgspec.Struct):
    """One attribute as ThingsBoard lists it."""

    lastUpdateTs: int
    key: str
    value: Any


async def device_activity(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    device = await device_for_read(ctx, request[PRINCIPAL], check_uuid(request.match_info["deviceId"]))
    device_id = str(device.id)
    wanted = request.query.get("keys")
    keys = [k for k in wanted.split(",") if k in ACTIVITY_KEYS] if wanted else list(ACTIVITY_KEYS)
    last = _last_activity(ctx, device)
    info = ctx.dispatcher.device_info(device_id)
    since = int(info.since * 1000) if info is not None else (last or 0)
    online = ctx.dispatcher.is_online(device_id) if info is not None else False
    values = {"active": (online, since), "lastActivityTime": (last or 0, last or 0)}
    now = int(time.time() * 1000)
    return json_reply([{"lastUpdateTs": values[k][1] or now, "key": k, "value": values[k][0]} for k in keys])


# -- routes ---------------------------------------------------------------------------------


def setup(app: web.Application, ctx: Any) -> None:
    r = app.router
    nf = {404: "No such device (or customer) in the caller's tenant"}
    listing = (*page_params(SORT, "Substring of the name or label, case-insensitive"),
               Param("type", str, False, "Only devices of this type"))
    # the routes that create devices: DeviceRepository.create's limit
    creating = {**nf, 403: Answer("Devices limit reached: the tenant has store.max_devices_per_tenant "
                                  "devices already (errorCode 41, with entityType and limit)", EntitiesLimitBody)}
    operation(app, r.add_post("/api/device", save_device), tag="devices", body=DeviceBody, response=DeviceJson,
              summary="Create a device (a random access token unless accessToken), or update the one named by id",
              query=(Param("accessToken", str, False, "The new device's access token"),), statuses=creating)
    operation(app, r.add_post("/api/device-with-credentials", save_device_with_credentials), tag="devices",
              body=DeviceWithCredentialsBody, response=DeviceJson, statuses=creating,
              summary="Create (or update) a device with the given access token")
    operation(app, r.add_get("/api/device/{deviceId}", get_device), tag="devices", response=DeviceJson,
              summary="A device", statuses=nf)
    operation(app, r.add_delete("/api/device/{deviceId}", delete_device), tag="devices",
              summary="Delete a device and its credentials", statuses=nf)
    operation(app, r.add_get("/api/device/info/{deviceId}", get_device_info), tag="devices",
              response=DeviceInfoJson, summary="A device with its customer, online state and last activity",
              statuses=nf)
    operation(app, r.add_get("/api/tenant/devices", tenant_devices), tag="devices",
              response=(DevicePage, DeviceJson),
              summary="The tenant's devices, one page (or the one named deviceName)",
              query=(*listing, Param("deviceName", str, False, "Answer this one device instead of a page")),
              statuses={404: "No device of this name in the tenant (deviceName)"})
    operation(app, r.add_get("/api/tenant/device", tenant_device), tag="devices", response=DeviceJson,
              summary="The tenant's device of this name",
              query=(Param("deviceName", str, True, "The device's name"),),
              statuses={404: "No device of this name in the tenant"})
    info_listing = (*listing,
                    Param("deviceProfileId", str, False, "Only devices of this profile (ignored with type)"),
                    Param("active", bool, False, "Only devices online now (true) or not (false)"))
    operation(app, r.add_get("/api/tenant/deviceInfos", tenant_device_infos), tag="devices",
              response=DeviceInfoPage, summary="The tenant's devices with customer, online state, last activity",
              query=info_listing)
    operation(app, r.add_get("/api/deviceInfos/all", all_device_infos), tag="devices", response=DeviceInfoPage,
              summary="The tenant's own devices (every device with includeCustomers), or a customer user's "
                      "customer's, with online state and last activity",
              query=(*info_listing, Param("includeCustomers", bool, False,
                                          "A tenant administrator: also the devices assigned to customers")))
    operation(app, r.add_get("/api/customer/{customerId}/devices", customer_devices), tag="devices",
              response=DevicePage, summary="A customer's devices, one page", query=listing, statuses=nf)
    operation(app, r.add_get("/api/customer/{customerId}/deviceInfos", customer_device_infos), tag="devices",
              response=DeviceInfoPage, query=info_listing, statuses=nf,
              summary="A customer's devices with online state and last activity")
    operation(app, r.add_get("/api/devices", devices_by_ids), tag="devices", response=list[DeviceJson],
              summary="The devices of these ids the caller may read (the others are left out)",
              query=(Param("deviceIds", str, True, "Device ids, comma-separated"),))
    operation(app, r.add_get("/api/device/types", device_types), tag="devices", response=list[EntitySubtypeJson],
              summary="The distinct types of the tenant's devices")
    operation(app, r.add_post("/api/customer/{customerId}/device/{deviceId}", assign_device), tag="devices",
              response=DeviceJson, summary="Assign a device to a customer", statuses=nf)
    operation(app, r.add_delete("/api/customer/device/{deviceId}", unassign_device), tag="devices",
              response=DeviceJson, summary="Unassign a device from its customer", statuses=nf)
    operation(app, r.add_post("/api/owner/CUSTOMER/{ownerId}/{entityType}/{entityId}", owner_to_customer),
              tag="devices", summary="Make a customer the owner of a device (entityType DEVICE only): assign it",
              statuses=nf)
    operation(app, r.add_post("/api/owner/TENANT/{ownerId}/{entityType}/{entityId}", owner_to_tenant),
              tag="devices", statuses=nf,
              summary="Make the caller's tenant the owner of a device (entityType DEVICE only): unassign it")
    operation(app, r.add_get("/api/device/{deviceId}/credentials", get_credentials), tag="devices",
              response=DeviceCredentialsJson, summary="A device's credentials (its access token)", statuses=nf)
    operation(app, r.add_post("/api/device/credentials", save_credentials), tag="devices", body=CredentialsBody,
              response=DeviceCredentialsJson, summary="Replace a device's access token", statuses=nf)
    operation(
        app, r.add_get("/api/plugins/telemetry/DEVICE/{deviceId}/values/attributes/SERVER_SCOPE", device_activity),
        tag="devices", summary="A device's online state and last activity (server-scope attributes)",
        response=list[AttributeKv], query=(Param("keys", str, False, "Comma-separated: active,lastActivityTime"),),
        statuses=nf,
    )
