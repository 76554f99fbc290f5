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
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from yarl import URL

from ...store.entities import UserInput
from ..auth import JwtPair, public
from ..errors import ApiError
from ..keys import CTX, PRINCIPAL
from ..openapi import Param, operation
from .access import check_uuid, new_user_owner, user_for_admin
from .entities import ActivateBody, UserBody, UserJson, json_reply, read_body

__all__ = ["setup", "MIN_PASSWORD"]

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
    return json_reply(ctx.tokens.issue(user))


def setup(app: web.Application, ctx: Any) -> None:
    r = app.router
    not_found = {404: "No such user in the caller's reach"}
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
