"""Tenants and customers (ThingsBoard's TenantController, CustomerController).

==========================================  =====================================  ==================
endpoint                                    who                                    answer
==========================================  =====================================  ==================
``POST /api/tenant``                        SYS_ADMIN                              Tenant (created or
                                                                                   updated by ``id``)
``GET /api/tenants?pageSize&page...``       SYS_ADMIN                              PageData<Tenant>
``GET /api/tenantInfos?pageSize&page...``   SYS_ADMIN                              PageData<TenantInfo>
``GET /api/tenant/{tenantId}``              SYS_ADMIN; TENANT_ADMIN its own        Tenant
``GET /api/tenant/info/{tenantId}``         SYS_ADMIN; TENANT_ADMIN its own        TenantInfo
``DELETE /api/tenant/{tenantId}``           SYS_ADMIN                              empty 200
``POST /api/customer``                      TENANT_ADMIN (its tenant, whatever     Customer
                                            the body says)
``GET /api/customers?pageSize&page...``     TENANT_ADMIN                           PageData<Customer>
``GET /api/tenant/customers?customerTitle`` TENANT_ADMIN                           Customer
``GET /api/customer/{customerId}``          TENANT_ADMIN; CUSTOMER_USER its own    Customer
``GET /api/customer/{customerId}/...``      TENANT_ADMIN; CUSTOMER_USER its own    ``{title, isPublic}``
``shortInfo``, ``.../title``                                                       / the bare title
``DELETE /api/customer/{customerId}``       TENANT_ADMIN                           empty 200
==========================================  =====================================  ==================

Deleting a customer deletes its users and leaves its devices with the
tenant, unassigned; deleting a tenant deletes its customers, users,
devices (with their credentials) and persistent calls, the unfinished ones
stopped first (each an ``RPC_DELETED``); only the system administrator
deletes a tenant (ThingsBoard 4.3 lets its own administrator do it too).
A TenantInfo is the Tenant plus
``tenantProfileName`` (one profile here: "Default").
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from ...errors import RpcNotFoundError
from ...store.entities import CustomerInput, TenantInput
from ..auth import SYS_ADMIN, TENANT_ADMIN
from ..errors import ApiError
from ..keys import CTX, PRINCIPAL
from ..openapi import Param, operation
from .access import check_uuid, customer_for_read, require, tenant_for_read
from .entities import (
    CustomerBody,
    CustomerJson,
    CustomerPage,
    CustomerShortInfoJson,
    TenantBody,
    TenantInfoJson,
    TenantInfoPage,
    TenantJson,
    TenantPage,
    json_reply,
    read_body,
)
from .paging import page_params, page_query, required_param

__all__ = ["setup"]

SORT = ("createdTime", "title", "email", "country", "city")
#: TenantInfos also sort by profile name (one profile: the default order).
INFO_SORT = (*SORT, "tenantProfileName")
TENANT_PROFILE_NAME = "Default"

log = logging.getLogger("fleetrpc.api.tenants")


def tenant_info(tenant: Any) -> dict[str, Any]:
    out = tenant.to_thingsboard()
    out["tenantProfileName"] = TENANT_PROFILE_NAME
    return out


async def save_tenant(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    require(request[PRINCIPAL], SYS_ADMIN)
    inp = TenantInput.parse(await read_body(request))
    fields = {**inp.contact, "region": inp.region, "additional_info": inp.additional_info}
    if inp.id is None:
        tenant = await ctx.tenants.create(inp.title, **fields)
    else:
        tenant = await ctx.tenants.update(inp.id, inp.title, **fields)
    return json_reply(tenant.to_thingsboard())


async def list_tenants(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    require(request[PRINCIPAL], SYS_ADMIN)
    q = page_query(request, SORT)
    page = await ctx.tenants.list(q.page_size, q.page, text_search=q.text_search,
                                  sort_property=q.sort_property, sort_order=q.sort_order)
    return json_reply(page.to_thingsboard())


async def list_tenant_infos(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    require(request[PRINCIPAL], SYS_ADMIN)
    q = page_query(request, INFO_SORT)
    prop = None if q.sort_property == "tenantProfileName" else q.sort_property
    page = await ctx.tenants.list(q.page_size, q.page, text_search=q.text_search,
                                  sort_property=prop, sort_order=q.sort_order)
    out = page.to_thingsboard()
    out["data"] = [tenant_info(t) for t in page.data]
    return json_reply(out)


async def get_tenant(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    tenant = await tenant_for_read(ctx, request[PRINCIPAL], check_uuid(request.match_info["tenantId"]))
    return json_reply(tenant.to_thingsboard())


async def get_tenant_info(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    tenant = await tenant_for_read(ctx, request[PRINCIPAL], check_uuid(request.match_info["tenantId"]))
    return json_reply(tenant_info(tenant))


async def delete_tenant(request: web.Request) -> web.Response:
    """The tenant and everything it owns.  Its unfinished persistent calls
    are stopped through the RPC engine first (so none is sent after this,
    and each says RPC_DELETED); the rows go in one transaction."""
    ctx = request.app[CTX]
    # The system administrator's only. (ThingsBoard 4.3 lets a tenant
    # administrator delete its own tenant too: one click takes every user,
    # device and call of a company with it; not here.)
    p = request[PRINCIPAL]
    require(p, SYS_ADMIN)
    tenant = await tenant_for_read(ctx, p, check_uuid(request.match_info["tenantId"]))
    engine = getattr(ctx, "engine", None)
    if engine is not None:
        for rpc_id in await ctx.tenants.unfinished_rpc_ids(tenant.id):
            try:
                await engine.delete(rpc_id, tenant_id=tenant.id)
            except RpcNotFoundError:
                pass  # finished and gone meanwhile
    await ctx.tenants.delete(tenant.id)
    log.info("tenant %s deleted", tenant.id)
    return web.Response(status=200)


async def save_customer(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    require(p, TENANT_ADMIN)
    inp = CustomerInput.parse(await read_body(request))
    fields = {**inp.contact, "additional_info": inp.additional_info}
    if inp.id is None:
        customer = await ctx.customers.create(p.tenant_id, inp.title, **fields)
    else:
        customer = await ctx.customers.update(p.tenant_id, inp.id, inp.title, **fields)
    return json_reply(customer.to_thingsboard())


async def list_customers(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    require(p, TENANT_ADMIN)
    q = page_query(request, SORT)
    page = await ctx.customers.list(p.tenant_id, q.page_size, q.page, text_search=q.text_search,
                                    sort_property=q.sort_property, sort_order=q.sort_order)
    return json_reply(page.to_thingsboard())


async def get_customer(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    customer = await customer_for_read(ctx, request[PRINCIPAL], check_uuid(request.match_info["customerId"]))
    return json_reply(customer.to_thingsboard())


async def tenant_customer(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    require(p, TENANT_ADMIN)
    title = required_param(request, "customerTitle")
    customer = await ctx.customers.by_title(p.tenant_id, title)
    if customer is None:
        raise ApiError.not_found(f"Customer with title [{title[:256]}] is not found")
    return json_reply(customer.to_thingsboard())


async def customer_short_info(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    customer = await customer_for_read(ctx, request[PRINCIPAL], check_uuid(request.match_info["customerId"]))
    return json_reply({"title": customer.title, "isPublic": False})


async def customer_title(request: web.Request) -> web.Response:
    """The bare title, ``application/text`` as ThingsBoard declares it."""
    ctx = request.app[CTX]
    customer = await customer_for_read(ctx, request[PRINCIPAL], check_uuid(request.match_info["customerId"]))
    return web.Response(body=customer.title.encode(), content_type="application/text", charset="utf-8")


async def delete_customer(request: web.Request) -> web.Response:
    """The customer and its users; its devices stay, unassigned."""
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    require(p, TENANT_ADMIN)
    await ctx.customers.delete(p.tenant_id, check_uuid(request.match_info["customerId"]))
    return web.Response(status=200)


def setup(app: web.Application, ctx: Any) -> None:
    r = app.router
    not_found = {404: "Not found (or another tenant's)"}
    operation(app, r.add_post("/api/tenant", save_tenant), tag="tenants", body=TenantBody, response=TenantJson,
              summary="Create a tenant, or update the one named by id (system administrator)", statuses=not_found)
    operation(app, r.add_get("/api/tenants", list_tenants), tag="tenants", response=TenantPage,
              summary="Tenants, one page (system administrator)",
              query=page_params(SORT, "Substring of the title, case-insensitive"))
    operation(app, r.add_get("/api/tenantInfos", list_tenant_infos), tag="tenants", response=TenantInfoPage,
              summary="Tenants with their profile's name, one page (system administrator)",
              query=page_params(INFO_SORT, "Substring of the title, case-insensitive"))
    operation(app, r.add_get("/api/tenant/{tenantId}", get_tenant), tag="tenants", response=TenantJson,
              summary="A tenant (a tenant administrator: its own)", statuses=not_found)
    operation(app, r.add_get("/api/tenant/info/{tenantId}", get_tenant_info), tag="tenants",
              response=TenantInfoJson, statuses=not_found,
              summary="A tenant with its profile's name (a tenant administrator: its own)")
    operation(app, r.add_delete("/api/tenant/{tenantId}", delete_tenant), tag="tenants", statuses=not_found,
              summary="Delete a tenant with its customers, users, devices and persistent RPCs "
                      "(the system administrator)")
    operation(app, r.add_post("/api/customer", save_customer), tag="customers", body=CustomerBody,
              response=CustomerJson, statuses=not_found,
              summary="Create a customer of the caller's tenant, or update the one named by id")
    operation(app, r.add_get("/api/customers", list_customers), tag="customers", response=CustomerPage,
              summary="The tenant's customers, one page",
              query=page_params(SORT, "Substring of the title, case-insensitive"))
    operation(app, r.add_get("/api/customer/{customerId}", get_customer), tag="customers", response=CustomerJson,
              summary="A customer of the tenant (a customer user: its own)", statuses=not_found)
    operation(app, r.add_get("/api/tenant/customers", tenant_customer), tag="customers", response=CustomerJson,
              summary="The tenant's customer of this title",
              query=(Param("customerTitle", str, True, "The customer's title"),),
              statuses={404: "No customer of this title in the tenant"})
    operation(app, r.add_get("/api/customer/{customerId}/shortInfo", customer_short_info), tag="customers",
              response=CustomerShortInfoJson, statuses=not_found,
              summary="A customer's title and whether it is public (a customer user: its own)")
    operation(app, r.add_get("/api/customer/{customerId}/title", customer_title), tag="customers",
              response_kind="text", statuses=not_found,
              summary="A customer's title, as bare text (a customer user: its own)")
    operation(app, r.add_delete("/api/customer/{customerId}", delete_customer), tag="customers",
              statuses=not_found,
              summary="Delete a customer and its users; its devices stay with the tenant, unassigned")
