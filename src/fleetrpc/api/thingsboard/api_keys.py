"""API keys (ThingsBoard 4.3's ApiKeyController), for tb-rest-client's
``api_key_login`` and ApiKeyControllerApi.

- ``POST /api/apiKey`` ``ApiKeyInfo`` (``userId``, ``description``,
  ``expirationTime`` 0 = never, ``enabled``, default false as in
  ThingsBoard): a new key of that user, returned as ``ApiKey`` with its
  ``value`` -- the only time the value is ever shown (only its hash is
  stored).  With an ``id``: update that key's description and enabled
  (its user and expiration time cannot change; no value is returned).
- ``GET /api/apiKeys/{userId}?pageSize&page[&textSearch][&sortProperty][&sortOrder]``:
  a page of ``ApiKeyInfo`` (never a value).
- ``PUT /api/apiKey/{id}/description`` (the body is the new description:
  a JSON string, or plain text), ``PUT /api/apiKey/{id}/enabled/{true|false}``:
  the updated ``ApiKeyInfo``.
- ``DELETE /api/apiKey/{id}``.

Who: anyone for their own keys; a tenant administrator for the users of
its tenant; the system administrator for system and tenant administrators
(ThingsBoard's ``checkUserId(..., WRITE)``).  A customer user reaches only
its own keys (ThingsBoard also lets it list the keys of its customer's
other users).  Another tenant's key or user is "not found" (404), a user in
reach of the tenant but not of the caller is a 403.  Disabling or deleting
a key stops it at once on every node (``api/auth.py``).
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from ..auth import Principal
from ...wire import BAD_JSON
from ..errors import ApiError
from ..keys import CTX, PRINCIPAL
from ..openapi import operation
from .access import check_uuid, user_for_admin
from .entities import EntityId, _Page, json_reply, read_body
from .paging import page_params, page_query

__all__ = ["setup"]

SORT = ("createdTime", "expirationTime", "description", "enabled")
SEARCH = "Substring of the description, case-insensitive"

#: What Spring's String -> Boolean conversion reads (any case).
_TRUE = frozenset({"true", "on", "yes", "1"})
_FALSE = frozenset({"false", "off", "no", "0"})


class ApiKeyInfoBody(msgspec.Struct, kw_only=True):
    """``POST /api/apiKey``: ``id`` set updates that key."""

    id: EntityId | None = None
    userId: EntityId
    description: str
    expirationTime: int = 0
    enabled: bool = False


class ApiKeyInfoJson(msgspec.Struct):
    """ThingsBoard's ``ApiKeyInfo``."""

    id: EntityId
    createdTime: int
    tenantId: EntityId
    userId: EntityId
    expirationTime: int
    description: str
    enabled: bool
    expired: bool


class ApiKeyJson(ApiKeyInfoJson, kw_only=True):
    """ThingsBoard's ``ApiKey``: the info and, on creation only, the value."""

    value: str | None = None


class ApiKeyPage(_Page):
    data: list[ApiKeyInfoJson]


def _keys(ctx: Any) -> Any:
    keys = getattr(ctx, "api_keys", None)
    if keys is None:
        raise ApiError.not_found("API keys need the server's database")
    return keys


async def _user_in_reach(ctx: Any, p: Principal, user_id: str) -> Any:
    """The caller itself, or a user it administers (404 / 403 otherwise)."""
    if user_id == p.user_id:
        user = await ctx.users.by_id(user_id)
        if user is None:
            raise ApiError.not_found(f"User with id [{user_id}] is not found")
        return user
    return await user_for_admin(ctx, p, user_id)


async def _key_in_reach(ctx: Any, p: Principal, key_id: str) -> Any:
    key = await _keys(ctx).get(key_id)
    if key is None or (not p.is_sysadmin and key.tenant_id != p.tenant_id):
        raise ApiError.not_found(f"API key with id [{key_id}] is not found")
    if key.user_id != p.user_id:
        await user_for_admin(ctx, p, key.user_id)
    return key


def _ref_id(body: dict, name: str, entity_type: str) -> str | None:
    ref = body.get(name)
    if ref is None:
        return None
    raw = ref.get("id") if isinstance(ref, dict) else None
    if not isinstance(raw, str):
        raise ApiError.bad_request(f"{name} must be an object with an id")
    kind = ref.get("entityType")
    if kind is not None and kind != entity_type:
        raise ApiError.bad_request(f"{name} must be a {entity_type} id, not {str(kind)[:32]}")
    return check_uuid(raw)


async def save_api_key(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p: Principal = request[PRINCIPAL]
    body = await read_body(request)
    if not isinstance(body, dict):
        raise ApiError.bad_request("Invalid request body")
    user_id = _ref_id(body, "userId", "USER")
    if user_id is None:
        raise ApiError.bad_request("API key should be assigned to user!")
    enabled = body.get("enabled", False)
    if enabled is None:
        enabled = False
    if not isinstance(enabled, bool):
        raise ApiError.bad_request("enabled must be true or false")
    key_id = _ref_id(body, "id", "API_KEY")
    if key_id is not None:
        key = await _key_in_reach(ctx, p, key_id)
        if key.user_id != user_id:
            raise ApiError.bad_request("Cannot update API key user id!")
        if body.get("expirationTime", 0) != key.expiration_time:
            raise ApiError.bad_request("Cannot update API key expiration time!")
        key = await ctx.api_keys.update(key.id, description=_description(body.get("description")), enabled=enabled)
        return json_reply(key.to_thingsboard())
    user = await _user_in_reach(ctx, p, user_id)
    key, value = await _keys(ctx).create(user.tenant_id, user.id, body.get("description"),
                                         expiration_time=body.get("expirationTime", 0), enabled=enabled)
    return json_reply(key.to_thingsboard(value))


def _description(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ApiError.bad_request("description must not be blank")
    return value


async def get_user_api_keys(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p: Principal = request[PRINCIPAL]
    user_id = check_uuid(request.match_info["userId"])
    q = page_query(request, SORT)
    user = await _user_in_reach(ctx, p, user_id)
    page = await _keys(ctx).list(user.id, q.page_size, q.page, text_search=q.text_search,
                                 sort_property=q.sort_property, sort_order=q.sort_order)
    return json_reply(page.to_thingsboard())


async def update_description(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    key = await _key_in_reach(ctx, request[PRINCIPAL], check_uuid(request.match_info["id"]))
    raw = await request.read()
    # ThingsBoard binds the raw body to a String; tb-rest-client sends it as
    # a JSON string.  Take a JSON string's text, else the body as it is.
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError.bad_request("The description must be UTF-8 text") from None
    try:
        decoded = msgspec.json.decode(raw)
    except BAD_JSON:
        decoded = None
    description = decoded if isinstance(decoded, str) else text
    key = await ctx.api_keys.update(key.id, description=_description(description))
    return json_reply(key.to_thingsboard())


async def enable_api_key(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    key = await _key_in_reach(ctx, request[PRINCIPAL], check_uuid(request.match_info["id"]))
    raw = request.match_info["enabledValue"]
    value = raw.strip().lower()
    if value not in _TRUE and value not in _FALSE:
        raise ApiError.bad_request(
            f"Failed to convert value of type 'java.lang.String' to required type 'java.lang.Boolean'; "
            f"Invalid boolean value [{raw[:32]}]")
    key = await ctx.api_keys.update(key.id, enabled=value in _TRUE)
    return json_reply(key.to_thingsboard())


async def delete_api_key(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    key = await _key_in_reach(ctx, request[PRINCIPAL], check_uuid(request.match_info["id"]))
    await ctx.api_keys.delete(key.id)
    return web.Response(status=200)


def setup(app: web.Application, ctx: Any) -> None:
    r = app.router
    not_found = {404: "No such API key or user in the caller's reach"}
    operation(app, r.add_post("/api/apiKey", save_api_key), tag="api keys", body=ApiKeyInfoBody,
              response=ApiKeyJson,
              summary="Create an API key of the caller or of a user it administers; the value is returned "
                      "this once (with an id: update the description and enabled)",
              statuses={**not_found, 400: "A blank description, a bad userId or expirationTime"})
    operation(app, r.add_get("/api/apiKeys/{userId}", get_user_api_keys), tag="api keys", response=ApiKeyPage,
              summary="A user's API keys, one page (never their values)", query=page_params(SORT, SEARCH),
              statuses=not_found)
    operation(app, r.add_put("/api/apiKey/{id}/description", update_description), tag="api keys", body=str,
              response=ApiKeyInfoJson, summary="Change an API key's description", statuses=not_found)
    operation(app, r.add_put("/api/apiKey/{id}/enabled/{enabledValue}", enable_api_key), tag="api keys",
              response=ApiKeyInfoJson, summary="Enable or disable an API key (disabled: refused at once)",
              statuses=not_found)
    operation(app, r.add_delete("/api/apiKey/{id}", delete_api_key), tag="api keys",
              summary="Delete an API key (refused at once)", statuses=not_found)
