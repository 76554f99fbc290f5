"""Tenants and customers (ThingsBoard's TenantController, CustomerController).

=======================================  =====================================  ==================
endpoint                                 who                                    answer
=======================================  =====================================  ==================
``POST /api/tenant``                     SYS_ADMIN                              Tenant (created or
                                                                                updated by ``id``)
``GET /api/tenants?pageSize&page...``    SYS_ADMIN                              PageData<Tenant>
``GET /api/tenant/{tenantId}``           SYS_ADMIN; TENANT_ADMIN its own        Tenant
``POST /api/customer``                   TENANT_ADMIN (its tenant, whatever     Customer
                                         the body says)
``GET /api/customers?pageSize&page...``  TENANT_ADMIN                           PageData<Customer>
``GET /api/customer/{customerId}``       TENANT_ADMIN; CUSTOMER_USER its own    Customer
=======================================  =====================================  ==================
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...store.entities import CustomerInput, TenantInput
from ..auth import SYS_ADMIN, TENANT_ADMIN
from ..keys import CTX, PRINCIPAL
from ..openapi import operation
from .access import check_uuid, customer_for_read, require, tenant_for_read
from .entities import (
    CustomerBody,
    CustomerJson,
    CustomerPage,
    TenantBody,
    TenantJson,
    TenantPage,
    json_reply,
    read_body,
)
from .paging import page_params, page_query

__all__ = ["setup"]

SORT = ("createdTime", "title", "email", "country", "city")


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


async def get_tenant(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    tenant = await tenant_for_read(ctx, request[PRINCIPAL], check_uuid(request.match_info["tenantId"]))
    return json_reply(tenant.to_thingsboard())


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


def setup(app: web.Application, ctx: Any) -> None:
    r = app.router
    not_found = {404: "Not found (or another tenant's)"}
    operation(app, r.add_post("/api/tenant", save_tenant), tag="tenants", body=TenantBody, response=TenantJson,
              summary="Create a tenant, or update the one named by id (system administrator)", statuses=not_found)
    operation(app, r.add_get("/api/tenants", list_tenants), tag="tenants", response=TenantPage,
              summary="Tenants, one page (system administrator)",
              query=page_params(SORT, "Substring of the title, case-insensitive"))
    operation(app, r.add_get("/api/tenant/{tenantId}", get_tenant), tag="tenants", response=TenantJson,
              summary="A tenant (a tenant administrator: its own)", statuses=not_found)
    operation(app, r.add_post("/api/customer", save_customer), tag="customers", body=CustomerBody,
              response=CustomerJson, statuses=not_found,
              summary="Create a customer of the caller's tenant, or update the one named by id")
    operation(app, r.add_get("/api/customers", list_customers), tag="customers", response=CustomerPage,
              summary="The tenant's customers, one page",
              query=page_params(SORT, "Substring of the title, case-insensitive"))
    operation(app, r.add_get("/api/customer/{customerId}", get_customer), tag="customers", response=CustomerJson,
              summary="A customer of the tenant (a customer user: its own)", statuses=not_found)
