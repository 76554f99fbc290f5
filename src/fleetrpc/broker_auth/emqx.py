"""EMQX 5's HTTP authentication and authorisation hooks, served by fleetrpc.

EMQX asks ``POST /api/emqx/authn`` when a client connects and
``POST /api/emqx/authz`` before it publishes or subscribes (the request
bodies are templates configured in EMQX; docs/emqx.md has them):

- authn ``{"username", "password", "clientid"}`` -> ``{"result": "allow",
  "is_superuser": false, "client_attrs": {"device_id": ..., "tenant_id":
  ...}}`` for a device whose access token is the username (password empty,
  as ThingsBoard firmware sends it, or the token itself); ``{"result":
  "allow", "is_superuser": true}`` for the server's own account;
  ``{"result": "deny"}`` otherwise.  ``client_attrs.device_id`` feeds the
  per-device mountpoint that lets unchanged ThingsBoard firmware through
  (docs/emqx.md).
- authz ``{"username", "topic", "action", "mountpoint"}`` -> ``{"result":
  "allow" | "deny"}`` by :class:`~fleetrpc.broker_auth.acl.DeviceAcl`:
  fleetrpc's own layout, or ThingsBoard's ``v1/devices/me/...`` on a
  listener with a mountpoint.

Both hooks are public to fleetrpc's JWT middleware (``fleetrpc_public``)
and protected instead by a shared secret that EMQX sends in a header; a
wrong or missing secret answers 401 and EMQX then ignores the hook.  Bad
bodies answer 400 ``{"result": "ignore"}``; nothing raises past the handler.

(EMQX itself is not installable on the build machine: the hooks are tested
over HTTP with EMQX's request and response formats, checked in EMQX
v5.8's source, ``apps/emqx_auth_http/src/emqx_authn_http.erl`` and
``emqx_authz_http.erl``.)
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated, Any

import msgspec
from aiohttp import web
from msgspec import Meta

from .._core.constants import DEFAULT_PREFIX
from .acl import DeviceAcl

__all__ = ["EmqxSection", "EmqxHooks", "setup", "AUTHN_PATH", "AUTHZ_PATH"]

log = logging.getLogger("fleetrpc.broker_auth.emqx")

AUTHN_PATH = "/api/emqx/authn"
AUTHZ_PATH = "/api/emqx/authz"
MAX_BODY = 16 * 1024


class EmqxSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[emqx]``: the HTTP hooks EMQX calls to authenticate and authorise clients."""

    enabled: Annotated[bool, Meta(description=(
        f"Serve EMQX's HTTP authentication ({AUTHN_PATH}) and authorisation ({AUTHZ_PATH}) "
        "hooks.")) ] = False
    secret: Annotated[str | None, Meta(description=(
        "Shared secret EMQX sends in secret_header; required when enabled (at least 16 "
        "characters)."), extra={"secret": True})] = None
    secret_header: Annotated[str, Meta(description="The header carrying the secret.")] = "X-Fleetrpc-Hook-Secret"


class _AuthnBody(msgspec.Struct):
    username: str | None = None
    password: str | None = None
    clientid: str | None = None


class _AuthzBody(msgspec.Struct):
    username: str | None = None
    topic: str | None = None
    action: str | None = None
    mountpoint: str | None = None
    clientid: str | None = None


_ALLOW = {"result": "allow"}
_DENY = {"result": "deny"}


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and hmac.compare_digest(a.encode(), b.encode())


class EmqxHooks:
    """The two handlers.  ``devices``: a DeviceRepository (``by_token``);
    ``server_username`` / ``server_password``: the server's own broker
    account, a superuser for EMQX."""

    def __init__(
        self,
        devices: Any,
        *,
        secret: str,
        secret_header: str = "X-Fleetrpc-Hook-Secret",
        prefix: str = DEFAULT_PREFIX,
        server_username: str | None = None,
        server_password: str | None = None,
    ) -> None:
        if not secret or len(secret) < 16:
            raise ValueError("the EMQX hook secret must have at least 16 characters")
        self.devices = devices
        self.secret = secret
        self.secret_header = secret_header
        self.prefix = prefix
        self.server_username = server_username
        self.server_password = server_password
        self._authn_decode = msgspec.json.Decoder(_AuthnBody).decode
        self._authz_decode = msgspec.json.Decoder(_AuthzBody).decode

    async def _read(self, request: web.Request, decode: Any) -> Any:
        """The body, or a web.Response to answer instead."""
        if not _same(request.headers.get(self.secret_header), self.secret):
            return web.json_response({"result": "ignore", "error": "bad or missing hook secret"}, status=401)
        if request.content_length is not None and request.content_length > MAX_BODY:
            return web.json_response({"result": "ignore", "error": "body too large"}, status=413)
        raw = await request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            return web.json_response({"result": "ignore", "error": "body too large"}, status=413)
        try:
            return decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            return web.json_response({"result": "ignore", "error": f"bad body: {e}"}, status=400)

    def _is_server(self, username: str | None) -> bool:
        return self.server_username is not None and _same(username, self.server_username)

    async def authn(self, request: web.Request) -> web.Response:
        body = await self._read(request, self._authn_decode)
        if isinstance(body, web.Response):
            return body
        if self._is_server(body.username):
            if _same(body.password, self.server_password):
                return web.json_response({"result": "allow", "is_superuser": True})
            return web.json_response(_DENY)
        device = await self.devices.by_token(body.username) if body.username else None
        if device is None or body.password not in (None, "", body.username):
            return web.json_response(_DENY)
        return web.json_response({
            "result": "allow",
            "is_superuser": False,
            "client_attrs": {"device_id": device.id, "tenant_id": device.tenant_id},
        })

    async def authz(self, request: web.Request) -> web.Response:
        body = await self._read(request, self._authz_decode)
        if isinstance(body, web.Response):
            return body
        if self._is_server(body.username):
            return web.json_response(_ALLOW)
        if not body.username or not body.topic or body.action not in ("publish", "subscribe"):
            return web.json_response(_DENY)
        device = await self.devices.by_token(body.username)
        if device is None:
            return web.json_response(_DENY)
        acl = DeviceAcl.thingsboard() if body.mountpoint else DeviceAcl.fleetrpc(self.prefix, device.id)
        ok = acl.may_publish(body.topic) if body.action == "publish" else acl.may_subscribe(body.topic)
        return web.json_response(_ALLOW if ok else _DENY)


# EMQX has no JWT: the shared secret guards these instead.
EmqxHooks.authn.fleetrpc_public = True  # type: ignore[attr-defined]
EmqxHooks.authz.fleetrpc_public = True  # type: ignore[attr-defined]


def setup(app: web.Application, ctx: Any) -> None:
    """Add the hooks to the server's app when ``[emqx] enabled``."""
    section = getattr(ctx.settings, "emqx", None)
    if section is None or not section.enabled:
        return
    if not section.secret:
        raise ValueError("emqx.secret is required when emqx.enabled is true")
    mqtt = getattr(ctx.settings, "mqtt", None)
    dispatch = getattr(ctx.settings, "dispatch", None)
    hooks = EmqxHooks(
        ctx.devices,
        secret=section.secret,
        secret_header=section.secret_header,
        prefix=getattr(dispatch, "prefix", DEFAULT_PREFIX),
        server_username=getattr(mqtt, "username", None),
        server_password=getattr(mqtt, "password", None),
    )
    app.router.add_post(AUTHN_PATH, hooks.authn)
    app.router.add_post(AUTHZ_PATH, hooks.authz)
