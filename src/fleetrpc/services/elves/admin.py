"""App keys and grants over HTTP, for the tenant's administrators.

The supervisor's library API (:class:`~.supervisor.Supervisor`) as REST
routes under the server's JWT auth; only ``TENANT_ADMIN`` (403 otherwise),
always within the principal's tenant::

    GET    /api/elves/apps                      the tenant's apps, with their grants (no keys)
    POST   /api/elves/apps                      {app, callback_ip?, callback_port?, ips?, main_cats?, sub_cats?}
                                                -> the app with its auth_id and auth_key
    GET    /api/elves/apps/{app}                one app (no key)
    DELETE /api/elves/apps/{app}                the app and its grants
    POST   /api/elves/apps/{app}/grants         {ips?, main_cats?, sub_cats?}: grant more
    DELETE /api/elves/apps/{app}/grants         {ips?, main_cats?, sub_cats?}: revoke those
    POST   /api/elves/apps/{app}/key            a new auth key (the old one stops working)
    POST   /api/elves/apps/{app}/callback       {callback_ip, callback_port}: the processor (null: none)

The auth key is a secret: it is shown when it is made (create, new key) and
never listed.  Errors are ThingsBoard's JSON errors: 400 (errorCode 31) for
a bad body, a bad IP or a taken name, 404 (32) for an app that is not the
tenant's.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from ...api.keys import PRINCIPAL
from ...errors import ValidationError
from .errors import ElvesError
from .store import AppKey

__all__ = ["setup_admin", "AppBody", "GrantsBody", "CallbackBody", "AppJson", "AppList"]

#: Longest CMDB category name accepted in a grant.
MAX_CATEGORY = 128
#: Most values one grant or revoke may carry.
MAX_VALUES = 10_000


class GrantsBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What an app may act on: agent IPs (or ``"all"``), CMDB main / sub categories (or ``"all"``)."""

    ips: list[str] = []
    main_cats: list[str] = []
    sub_cats: list[str] = []


class AppBody(GrantsBody, kw_only=True, forbid_unknown_fields=True):
    """A new app: its name, its processor's address (mode P) and its first grants."""

    app: str
    callback_ip: str | None = None
    callback_port: int | None = None


class CallbackBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The address the worker results of mode P are POSTed to (``http://ip:port/``); null: none."""

    callback_ip: str | None = None
    callback_port: int | None = None


class Grants(msgspec.Struct):
    ips: list[str]
    main_cats: list[str]
    sub_cats: list[str]


class AppJson(msgspec.Struct, omit_defaults=True):
    """An app of the tenant; ``auth_key`` only when it was just made."""

    app: str
    auth_id: str
    callback_ip: str | None
    callback_port: int | None
    created_time: int
    grants: Grants
    auth_key: str | None = None


class AppList(msgspec.Struct):
    data: list[AppJson]


_encode = msgspec.json.Encoder().encode


def _json(value: Any) -> web.Response:
    return web.Response(body=_encode(value), content_type="application/json")


def _principal(request: web.Request) -> Any:
    from ...api.errors import ApiError

    p = request.get(PRINCIPAL)
    if p is None or getattr(p, "authority", None) != "TENANT_ADMIN":
        raise ApiError.forbidden("Elves apps are managed by the tenant's administrators")
    return p


async def _body(request: web.Request, cls: type) -> Any:
    from ...api.errors import ApiError

    raw = await request.read()
    try:
        return msgspec.json.decode(raw or b"{}", type=cls)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ApiError.bad_request(f"Invalid request body: {exc}") from None


def _check_callback(ip: str | None, port: int | None) -> tuple[str, int] | None:
    from .envelope import check_ip

    if ip is None and port is None:
        return None
    if ip is None or port is None:
        raise ValidationError("callback_ip and callback_port go together")
    if not 0 < port < 65536:
        raise ValidationError(f"callback_port must be 1-65535, not {port}")
    try:
        return check_ip(ip), port
    except ElvesError as err:
        raise ValidationError(f"callback_ip: {err.message}") from None


def _check_grants(body: GrantsBody) -> GrantsBody:
    """Every value checked before anything is written (a bad IP must not
    leave an app half made)."""
    from .envelope import check_ip

    for ip in body.ips:
        if ip != "all":
            try:
                check_ip(ip)
            except ElvesError as err:
                raise ValidationError(f"ips: {err.message}") from None
    for name in ("ips", "main_cats", "sub_cats"):
        values = getattr(body, name)
        if len(values) > MAX_VALUES:
            raise ValidationError(f"{name}: at most {MAX_VALUES} values at once")
        for v in values:
            if not v or len(v) > MAX_CATEGORY or "\x00" in v:
                raise ValidationError(f"{name}: {v[:40]!r} is not a valid value")
    return body


class _Admin:
    def __init__(self, service: Any) -> None:
        self.supervisor = service.supervisor
        self.repo = service.supervisor.repo

    async def _app(self, tenant_id: str, name: str) -> AppKey:
        from ...api.errors import ApiError

        key = await self.repo.get_app(tenant_id, name)
        if key is None:
            raise ApiError.not_found(f"Elves app [{name}] is not found")
        return key

    async def _render(self, key: AppKey, *, with_key: bool = False) -> AppJson:
        g = await self.repo.grants(key.tenant_id, key.app)
        return AppJson(
            app=key.app, auth_id=key.auth_id, callback_ip=key.callback_ip, callback_port=key.callback_port,
            created_time=key.created_ms,
            grants=Grants(g.get("ip", []), g.get("main_cat", []), g.get("sub_cat", [])),
            auth_key=key.auth_key if with_key else None,
        )

    async def _grant(self, tenant_id: str, app: str, body: GrantsBody, *, revoke: bool = False) -> None:
        from ...api.errors import ApiError

        _check_grants(body)
        op = self.supervisor.revoke if revoke else self.supervisor.grant
        try:
            await op(tenant_id, app, ips=body.ips, main_cats=body.main_cats, sub_cats=body.sub_cats)
        except ElvesError as err:  # a bad IP
            raise ApiError.bad_request(str(err)) from None

    # -- handlers --

    async def list_apps(self, request: web.Request) -> web.Response:
        p = _principal(request)
        return _json(AppList([await self._render(k) for k in await self.repo.list_apps(p.tenant_id)]))

    async def create_app(self, request: web.Request) -> web.Response:
        from ...api.errors import ApiError

        p = _principal(request)
        body = await _body(request, AppBody)
        callback = _check_callback(body.callback_ip, body.callback_port)
        _check_grants(body)
        if await self.repo.get_app(p.tenant_id, body.app) is not None:
            raise ApiError.bad_request(f"Elves app [{body.app}] already exists")
        key = await self.supervisor.create_app(p.tenant_id, body.app, callback=callback)
        await self._grant(p.tenant_id, key.app, body)
        return _json(await self._render(key, with_key=True))

    async def get_app(self, request: web.Request) -> web.Response:
        p = _principal(request)
        return _json(await self._render(await self._app(p.tenant_id, request.match_info["app"])))

    async def delete_app(self, request: web.Request) -> web.Response:
        p = _principal(request)
        key = await self._app(p.tenant_id, request.match_info["app"])
        await self.repo.delete_app(p.tenant_id, key.app)
        return web.Response(status=200)

    async def add_grants(self, request: web.Request) -> web.Response:
        p = _principal(request)
        key = await self._app(p.tenant_id, request.match_info["app"])
        await self._grant(p.tenant_id, key.app, await _body(request, GrantsBody))
        return _json(await self._render(key))

    async def revoke_grants(self, request: web.Request) -> web.Response:
        p = _principal(request)
        key = await self._app(p.tenant_id, request.match_info["app"])
        await self._grant(p.tenant_id, key.app, await _body(request, GrantsBody), revoke=True)
        return _json(await self._render(key))

    async def new_key(self, request: web.Request) -> web.Response:
        p = _principal(request)
        key = await self._app(p.tenant_id, request.match_info["app"])
        key = await self.supervisor.new_key(p.tenant_id, key.app)
        return _json(await self._render(key, with_key=True))

    async def set_callback(self, request: web.Request) -> web.Response:
        p = _principal(request)
        key = await self._app(p.tenant_id, request.match_info["app"])
        body = await _body(request, CallbackBody)
        callback = _check_callback(body.callback_ip, body.callback_port)
        await self.repo.set_callback(p.tenant_id, key.app, *(callback or (None, None)))
        return _json(await self._render(await self._app(p.tenant_id, key.app)))


def setup_admin(app: web.Application, service: Any) -> None:
    """Add the routes of the module docstring (described in the server's
    OpenAPI document when the application has one)."""
    from ...api.keys import OPERATIONS
    from ...api.openapi import operation

    a = _Admin(service)
    r = app.router

    def op(route: web.AbstractRoute, summary: str, **kw: Any) -> None:
        if OPERATIONS in app:
            operation(app, route, tag="elves", summary=summary, **kw)

    op(r.add_get("/api/elves/apps", a.list_apps), "The tenant's Elves apps and their grants", response=AppList)
    op(r.add_post("/api/elves/apps", a.create_app), "Create an Elves app: its auth id and auth key",
       body=AppBody, response=AppJson)
    op(r.add_get("/api/elves/apps/{app}", a.get_app), "One Elves app", response=AppJson,
       statuses={404: "No such app in the tenant"})
    op(r.add_delete("/api/elves/apps/{app}", a.delete_app), "Delete an Elves app and its grants",
       response_kind="empty", statuses={404: "No such app in the tenant"})
    op(r.add_post("/api/elves/apps/{app}/grants", a.add_grants), "Grant agent IPs or CMDB categories",
       body=GrantsBody, response=AppJson, statuses={404: "No such app in the tenant"})
    op(r.add_delete("/api/elves/apps/{app}/grants", a.revoke_grants), "Revoke agent IPs or CMDB categories",
       body=GrantsBody, response=AppJson, statuses={404: "No such app in the tenant"})
    op(r.add_post("/api/elves/apps/{app}/key", a.new_key), "A new auth key (the old one stops working)",
       response=AppJson, statuses={404: "No such app in the tenant"})
    op(r.add_post("/api/elves/apps/{app}/callback", a.set_callback), "Set the app's processor address",
       body=CallbackBody, response=AppJson, statuses={404: "No such app in the tenant"})
