"""ThingsBoard's persistent-RPC endpoints (RpcV2Controller).

- ``GET /api/rpc/persistent/{rpcId}`` (TENANT_ADMIN, CUSTOMER_USER): the
  ``Rpc`` JSON.  As in ThingsBoard a customer user may read any call of its
  tenant (its permission checker compares the tenant only).
- ``GET /api/rpc/persistent/device/{deviceId}?pageSize&page[&rpcStatus]
  [&textSearch][&sortProperty][&sortOrder]``: one page of a device's calls,
  for whoever may call the device (bare-text 403/404 as on the RPC path).
- ``DELETE /api/rpc/persistent/{rpcId}`` (TENANT_ADMIN): stops a queued or
  in-flight call, removes it, emits ``RPC_DELETED``; 200 with an empty body.

Another tenant's call is "not found" (404, errorCode 32), never shown.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from ...errors import RpcNotFoundError, ValidationError
from ...rpc.status import RpcStatus
from ..auth import CUSTOMER_USER, TENANT_ADMIN
from ..errors import ApiError
from ..keys import CTX, PRINCIPAL
from ..openapi import Param, operation
from .access import check_uuid, device_for_rpc, require
from .paging import page_args, sort_order

__all__ = ["setup"]

#: Statuses a listing may filter on (ThingsBoard rejects DELETED; with a 500
#: through its own bug, a 400 here).
LISTABLE = tuple(s.value for s in RpcStatus if s is not RpcStatus.DELETED)
SORT_PROPERTIES = ("createdTime", "expirationTime", "request", "response")


def _not_found(rpc_id: str) -> ApiError:
    return ApiError.not_found(f"Rpc with id [{rpc_id}] is not found")


async def get_rpc(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    require(p, TENANT_ADMIN, CUSTOMER_USER)
    rpc_id = check_uuid(request.match_info["rpcId"])
    try:
        record = await ctx.engine.get(rpc_id, tenant_id=p.tenant_id)
    except RpcNotFoundError:
        raise _not_found(rpc_id) from None
    return web.json_response(record.to_thingsboard())


async def list_device_rpcs(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    require(p, TENANT_ADMIN, CUSTOMER_USER)
    device_id = check_uuid(request.match_info["deviceId"])
    page_size, page = page_args(request)
    q = request.query
    status = q.get("rpcStatus") or None
    if status is not None and status not in LISTABLE:
        raise ApiError.bad_request(f"rpcStatus must be one of {', '.join(LISTABLE)}")
    sort_property = q.get("sortProperty") or "createdTime"
    if sort_property not in SORT_PROPERTIES:
        raise ApiError.bad_request(f"sortProperty must be one of {', '.join(SORT_PROPERTIES)}")
    order = sort_order(request)
    device = await device_for_rpc(ctx, p, device_id)
    try:
        result = await ctx.engine.list_by_device(
            str(device.id), tenant_id=p.tenant_id, page_size=page_size, page=page, status=status,
            # "response" has no column of its own: calls sort by status there.
            sort_property="status" if sort_property == "response" else sort_property,
            sort_order=order, text_search=q.get("textSearch") or None,
        )
    except ValidationError as exc:
        raise ApiError.bad_request(str(exc)) from None
    return web.json_response(result.to_thingsboard())


async def delete_rpc(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    require(p, TENANT_ADMIN)
    rpc_id = check_uuid(request.match_info["rpcId"])
    try:
        await ctx.engine.delete(rpc_id, tenant_id=p.tenant_id)
    except RpcNotFoundError:
        raise _not_found(rpc_id) from None
    return web.Response(status=200)


class RpcEntity(msgspec.Struct, rename="camel"):
    """ThingsBoard's ``Rpc`` JSON (RpcRecord.to_thingsboard())."""

    id: dict
    created_time: int
    tenant_id: dict
    device_id: dict
    expiration_time: int
    request: dict
    response: Any
    status: str
    additional_info: Any


class RpcPage(msgspec.Struct, rename="camel"):
    """ThingsBoard's ``PageData<Rpc>``."""

    data: list[RpcEntity]
    total_pages: int
    total_elements: int
    has_next: bool


def setup(app: web.Application, ctx: Any) -> None:
    r = app.router
    operation(app, r.add_get("/api/rpc/persistent/{rpcId}", get_rpc), tag="rpc-persistent",
              summary="A persistent RPC", response=RpcEntity, statuses={404: "No such RPC in the tenant"})
    operation(app, r.add_delete("/api/rpc/persistent/{rpcId}", delete_rpc), tag="rpc-persistent",
              summary="Delete a persistent RPC (stops it; RPC_DELETED)", statuses={404: "No such RPC in the tenant"})
    operation(
        app, r.add_get("/api/rpc/persistent/device/{deviceId}", list_device_rpcs), tag="rpc-persistent",
        summary="A device's persistent RPCs, one page", response=RpcPage,
        query=(
            Param("pageSize", int, True, "Page size (1-10000)"),
            Param("page", int, True, "Page number, from 0"),
            Param("rpcStatus", str, False, "Only calls in this status", LISTABLE),
            Param("textSearch", str, False, "Substring of the method, case-insensitive"),
            Param("sortProperty", str, False, "Sort key", SORT_PROPERTIES),
            Param("sortOrder", str, False, "ASC or DESC", ("ASC", "DESC")),
        ),
        statuses={403: "Another customer's device (bare text); a system administrator (errorCode 20)",
                  404: "Device with requested id wasn't found! (bare text)"},
    )
