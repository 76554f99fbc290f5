"""Users and their activation (ThingsBoard's UserController, AuthController).

- ``POST /api/user?sendActivationMail=false``: a system administrator
  creates system and tenant administrators, a tenant administrator tenant
  administrators and customer users of its tenant (:func:`.access.new_user_owner`).
  A new user has no password; it cannot log in until activated.  With an
  ``id`` the user's names, phone and additional info are updated.  No mail
  is ever sent: ``sendActivationMail=true`` is refused (400) rather than
  silently ignored; the link comes from the next endpoint.
- ``GET /api/user/{userId}``: a user the caller administers, or the caller.
- ``GET /api/user/{userId}/activationLink`` (text/plain):
  ``{base}/api/noauth/activate?activateToken=...``; 400 when the user has a
  password already ("User is already activated!").
- ``POST /api/noauth/activate`` ``{"activateToken", "password"}`` (no
  token): sets the first password and logs the user in (a JwtPair).
- ``DELETE /api/user/{userId}``: a user the caller administers (the
  system administrator: system and tenant administrators; a tenant
  administrator: its tenant's users), never the caller itself (403), nor a
  tenant's last tenant administrator (400, "At least one tenant
  administrator must remain!").
- ``GET /api/users`` (tenant administrator: every user of its tenant;
  customer user: its customer's users; also served as ``/api/user/users``,
  where tb-rest-client's ``get_users`` looks), ``GET /api/customer/{customerId}/users``
  (tenant administrator), ``GET /api/tenant/{tenantId}/users`` (system
  administrator: the tenant's administrators): pages of users.
- ``POST /api/user/{userId}/userCredentialsEnabled?userCredentialsEnabled=true|false``:
  enable or disable a user the caller administers.
- ``POST /api/auth/changePassword`` ``{"currentPassword", "newPassword"}``:
  the caller's own password; returns a new JwtPair.

Deleting, disabling and a new password void every token the user had
(``api/auth.py``, "Revocation"), on every node.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from aiohttp import web
from yarl import URL

from ...store.entities import UserInput
from ...store.entities.users import MAX_PASSWORD
from ..auth import BAD_CREDENTIALS, CUSTOMER_USER, SYS_ADMIN, TENANT_ADMIN, JwtPair, LoginRefused, public
from ..errors import ApiError, ErrorCode
from ..keys import CTX, PRINCIPAL
from ..openapi import Param, operation
from .access import check_uuid, new_user_owner, require, user_for_admin
from .entities import ActivateBody, UserBody, UserJson, _Page, json_reply, read_body
from .paging import page_params, page_query

__all__ = ["setup", "MIN_PASSWORD"]

SORT = ("createdTime", "email", "firstName", "lastName")
SEARCH = "Substring of the email, first or last name, case-insensitive"

#: ThingsBoard's default password policy: at least 6 characters.
MIN_PASSWORD = 6
ALREADY_ACTIVE = "User is already activated!"


async def save_user(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    if request.query.get("sendActivationMail", "false").lower() != "false":
        raise ApiError.bad_request(
            "Activation mail is not supported: create the user with sendActivationMail=false and "
            "give them GET /api/user/{userId}/activationLink")
    inp = UserInput.parse(await read_body(request))
    if inp.id is not None:
        user = await user_for_admin(ctx, p, inp.id)
        if (inp.email, inp.authority) != (user.email, user.authority):
            raise ApiError.bad_request("A user's email and authority cannot be changed")
        user = await ctx.users.update(user.id, first_name=inp.first_name, last_name=inp.last_name,
                                      phone=inp.phone, additional_info=inp.additional_info)
        return json_reply(user.to_thingsboard())
    tenant_id, customer_id = new_user_owner(p, inp.authority, inp.tenant_id, inp.customer_id)
    user = await ctx.users.create(tenant_id, customer_id, inp.email, inp.authority, inp.first_name,
                                  inp.last_name, phone=inp.phone, additional_info=inp.additional_info)
    return json_reply(user.to_thingsboard())


async def get_user(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    user_id = check_uuid(request.match_info["userId"])
    if user_id == p.user_id:
        user = await ctx.users.by_id(user_id)
        if user is None:
            raise ApiError.not_found(f"User with id [{user_id}] is not found")
    else:
        user = await user_for_admin(ctx, p, user_id)
    return json_reply(user.to_thingsboard())


async def activation_link(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    user = await user_for_admin(ctx, request[PRINCIPAL], check_uuid(request.match_info["userId"]))
    if user.has_password:
        raise ApiError.bad_request(ALREADY_ACTIVE)
    link = request.url.origin().join(URL("/api/noauth/activate")).with_query(
        activateToken=ctx.tokens.activation_token(user.id))
    return web.Response(text=str(link), content_type="text/plain")


@public
async def activate(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    body = await read_body(request)
    token = body.get("activateToken") if isinstance(body, dict) else None
    password = body.get("password") if isinstance(body, dict) else None
    if not isinstance(token, str) or not isinstance(password, str):
        raise ApiError.bad_request("activateToken and password should be specified!")
    user_id = ctx.tokens.activation_subject(token)
    user = await ctx.users.by_id(user_id) if user_id is not None else None
    if user is None:
        raise ApiError.not_found("Unable to find user credentials by activateToken")
    if user.has_password:
        raise ApiError.bad_request(ALREADY_ACTIVE)
    if len(password) < MIN_PASSWORD:
        raise ApiError.bad_request(f"Password must be {MIN_PASSWORD} or more characters in length.")
    await ctx.users.set_password(user.id, password)
    return await _pair_after_new_password(ctx, user.id)


async def _pair_after_new_password(ctx: Any, user_id: str) -> web.Response:
    """The token pair a new password is answered with: the issue time taken
    after that password's revocation and before the user is read again (as
    it is now), so a disabling or deletion committed meanwhile shows in the
    claims or voids the pair (TokenService.issue)."""
    issued_at = ctx.tokens.issue_time()
    user = await ctx.users.by_id(user_id)
    if user is None:  # deleted meanwhile
        raise ApiError.unauthorized()
    return json_reply(ctx.tokens.issue(user, issued_at))


class UserPage(_Page):
    data: list[UserJson]


class ChangePasswordBody(msgspec.Struct):
    """``POST /api/auth/changePassword``."""

    currentPassword: str
    newPassword: str


def check_new_password(password: object) -> str:
    """ThingsBoard's default policy (at least :data:`MIN_PASSWORD`
    characters), and fleetrpc's ceiling; 400 otherwise."""
    if not isinstance(password, str) or not password:
        raise ApiError.bad_request("Password should be specified!")
    if len(password) < MIN_PASSWORD:
        raise ApiError.bad_request(f"Password must be {MIN_PASSWORD} or more characters in length.")
    if len(password) > MAX_PASSWORD:
        raise ApiError.bad_request(f"Password must be no more than {MAX_PASSWORD} characters in length.")
    return password


async def delete_user(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    user = await user_for_admin(ctx, p, check_uuid(request.match_info["userId"]))
    if user.id == p.user_id:
        # ThingsBoard refuses this to a system administrator; a tenant
        # administrator deleting itself would lose its session halfway too.
        raise ApiError(403, "Sysadmin is not allowed to delete himself" if p.is_sysadmin
                       else "User is not allowed to delete himself", ErrorCode.PERMISSION_DENIED)
    if user.authority == TENANT_ADMIN and await ctx.users.count_tenant_admins(user.tenant_id) <= 1:
        raise ApiError.bad_request("At least one tenant administrator must remain!")
    await ctx.users.delete(user.id, tenant_id=None if p.is_sysadmin else p.tenant_id)
    return web.Response(status=200)


async def _page(ctx: Any, request: web.Request, tenant_id: str, customer_id: str | None,
                authority: str | None = None) -> web.Response:
    q = page_query(request, SORT)
    page = await ctx.users.list(tenant_id, customer_id, q.page_size, q.page, authority=authority,
                                text_search=q.text_search, sort_property=q.sort_property, sort_order=q.sort_order)
    return json_reply(page.to_thingsboard())


async def list_users(request: web.Request) -> web.Response:
    """The users the caller sees: a tenant administrator's whole tenant, a
    customer user's own customer."""
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    require(p, TENANT_ADMIN, CUSTOMER_USER)
    return await _page(ctx, request, p.tenant_id, p.customer_id if p.is_customer_user else None)


async def list_customer_users(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    require(p, TENANT_ADMIN)
    customer_id = check_uuid(request.match_info["customerId"])
    if await ctx.customers.get(p.tenant_id, customer_id) is None:  # another tenant's too
        raise ApiError.not_found(f"Customer with id [{customer_id}] is not found")
    return await _page(ctx, request, p.tenant_id, customer_id)


async def list_tenant_admins(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    require(p, SYS_ADMIN)
    # As ThingsBoard: an unknown tenant has an empty page.
    return await _page(ctx, request, check_uuid(request.match_info["tenantId"]), None, TENANT_ADMIN)


#: What Spring's String -> boolean conversion reads (any case).
_TRUE = frozenset({"true", "on", "yes", "1"})
_FALSE = frozenset({"false", "off", "no", "0"})


async def set_credentials_enabled(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    user = await user_for_admin(ctx, p, check_uuid(request.match_info["userId"]))
    raw = request.query.get("userCredentialsEnabled", "")
    value = raw.strip().lower() or "true"  # absent or empty: Spring's defaultValue
    if value not in _TRUE and value not in _FALSE:
        raise ApiError.bad_request(
            f"Failed to convert value of type 'java.lang.String' to required type 'boolean'; "
            f"Invalid boolean value [{raw[:32]}]")
    enabled = value in _TRUE
    await ctx.users.set_enabled(user.id, enabled)
    return web.Response(status=200)


async def change_password(request: web.Request) -> web.Response:
    """ThingsBoard 3.x+: the caller's password; every token it had is void
    from now on, and a new pair is returned (the caller stays logged in)."""
    ctx = request.app[CTX]
    p = request[PRINCIPAL]
    body = await read_body(request)
    current = body.get("currentPassword") if isinstance(body, dict) else None
    new = body.get("newPassword") if isinstance(body, dict) else None
    if not isinstance(current, str) or not isinstance(new, str):
        raise ApiError.bad_request("currentPassword and newPassword should be specified!")
    try:
        # As a login: a wrong current password counts towards the lockout and
        # is answered late, so a stolen access token cannot guess the password.
        user = await ctx.users.authenticate(p.email, current)
    except LoginRefused as exc:
        if exc.delay:
            await asyncio.sleep(exc.delay)
        raise ApiError.bad_request("Current password doesn't match!" if str(exc) == BAD_CREDENTIALS
                                   else str(exc)) from None
    if user.id != p.user_id:
        # The token's email is another user's than its id: that user's
        # password must not set this one's.
        raise ApiError.unauthorized()
    check_new_password(new)
    if new == current:
        raise ApiError.bad_request("New password should be different from existing!")
    await ctx.users.set_password(p.user_id, new)
    return await _pair_after_new_password(ctx, p.user_id)


def setup(app: web.Application, ctx: Any) -> None:
    r = app.router
    not_found = {404: "No such user in the caller's reach"}
    page_q = page_params(SORT, SEARCH)
    # tb-rest-client's get_users() asks for /api/user/users (the path of
    # ThingsBoard PE's getUserUsers); CE's is /api/users.  Both are served,
    # the alias before /api/user/{userId}, which would take it for an id.
    operation(app, r.add_get("/api/user/users", list_users), tag="users", response=UserPage,
              summary="As GET /api/users (the path tb-rest-client's get_users asks for)", query=page_q)
    operation(app, r.add_post("/api/user", save_user), tag="users", body=UserBody, response=UserJson,
              summary="Create a user (no password until activated), or update the one named by id",
              query=(Param("sendActivationMail", str, False, "Only false: no mail is sent", ("false",)),),
              statuses=not_found)
    operation(app, r.add_get("/api/user/{userId}", get_user), tag="users", response=UserJson,
              summary="A user the caller administers, or the caller", statuses=not_found)
    operation(app, r.add_get("/api/user/{userId}/activationLink", activation_link), tag="users",
              response_kind="text", summary="The link that sets a new user's first password (text/plain)",
              statuses=not_found)
    operation(app, r.add_post("/api/noauth/activate", activate), tag="users", body=ActivateBody,
              response=JwtPair, summary="Set a new user's first password; logs the user in",
              statuses={404: "Unknown or expired activateToken"})
    operation(app, r.add_delete("/api/user/{userId}", delete_user), tag="users",
              summary="Delete a user the caller administers (not itself, not a tenant's last administrator); "
                      "its tokens stop working",
              statuses={**not_found, 400: "The tenant's last tenant administrator"})
    operation(app, r.add_get("/api/users", list_users), tag="users", response=UserPage,
              summary="The users the caller sees, one page (a tenant administrator's tenant, a customer "
                      "user's customer)", query=page_q)
    operation(app, r.add_get("/api/customer/{customerId}/users", list_customer_users), tag="users",
              response=UserPage, summary="A customer's users, one page (tenant administrator)", query=page_q,
              statuses={404: "No such customer in the tenant"})
    operation(app, r.add_get("/api/tenant/{tenantId}/users", list_tenant_admins), tag="users",
              response=UserPage, summary="A tenant's administrators, one page (system administrator)",
              query=page_q)
    operation(app, r.add_post("/api/user/{userId}/userCredentialsEnabled", set_credentials_enabled),
              tag="users", summary="Enable or disable a user; disabling stops its tokens at once",
              query=(Param("userCredentialsEnabled", bool, False, "true (default) or false"),),
              statuses=not_found)
    operation(app, r.add_post("/api/auth/changePassword", change_password), tag="auth",
              body=ChangePasswordBody, response=JwtPair,
              summary="Change the caller's password; its other tokens stop working, a new pair is returned",
              statuses={400: "Current password doesn't match, or the new one is refused"})
