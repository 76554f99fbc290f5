"""supervisor: which app may act on which agents, and where its processor is.

An app of a tenant has an *auth id* (public: it names the app in
signatures and MQTT topics) and an *auth key* (secret: it proves the app).
Grants say which agent IPs the app may run instructions on: single IPs,
``all``, or CMDB categories (``main_cat`` / ``sub_cat``, matched through the
``categories_of`` function the CMDB service provides).

Functions (Elves' names): ``checkIpAuthByKey(agentip, token, key)`` ->
``status``; ``getAppCallbackInfo(appname)`` -> ``appip``, ``appport``;
``getAuthByKey(key)`` -> ``auth_id`` and the grants per app.

For other services (:meth:`Supervisor.authorize` is what scheduler, cron and
queue call before sending anything to an agent)::

    app = await supervisor.authorize(call, ["10.0.0.5"], app="deploy")
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Awaitable, Callable

import msgspec

from ...wire import validate_id
from .envelope import FLAG_FALSE, FLAG_TRUE, Envelope, check_ip
from .errors import Code, ElvesError
from .router import Alias, ElvesCall, ElvesRouter
from .store import AppKey, SupervisorRepository

__all__ = ["Supervisor", "AppKey", "GRANT_KINDS"]

GRANT_KINDS = ("ip", "main_cat", "sub_cat")
ALL = "all"

#: ``categories_of(tenant_id, ips) -> {ip: (main_cat, sub_cat)}`` (CMDB).
CategoriesOf = Callable[[str, list[str]], Awaitable[dict[str, tuple[str | None, str | None]]]]


class _CheckArgs(msgspec.Struct):
    agentip: str
    key: str
    token: str = ""


class _CallbackArgs(msgspec.Struct):
    appname: str


class _KeyArgs(msgspec.Struct):
    key: str


class Supervisor:
    """App keys, grants and the supervisor's Elves functions."""

    def __init__(self, repo: SupervisorRepository, *, categories_of: CategoriesOf | None = None) -> None:
        self.repo = repo
        #: Set by the CMDB service so that category grants match.
        self.categories_of = categories_of

    # -- administration (library API; HTTP admin routes may wrap these) -----

    async def create_app(
        self,
        tenant_id: str,
        app: str,
        *,
        callback: tuple[str, int] | None = None,
        auth_id: str | None = None,
        auth_key: str | None = None,
    ) -> AppKey:
        """A new app with a fresh auth id (16 hex) and key (32 hex).  The
        name is one MQTT topic level (``{p}/elves/{app}/call``):
        ValidationError otherwise."""
        validate_id("app", app)
        key = AppKey(
            tenant_id=tenant_id,
            app=app,
            auth_id=auth_id or secrets.token_hex(8),
            auth_key=auth_key or secrets.token_hex(16),
            callback_ip=callback[0] if callback else None,
            callback_port=callback[1] if callback else None,
            created_ms=int(time.time() * 1000),
        )
        await self.repo.create_app(key)
        return key

    async def new_key(self, tenant_id: str, app: str) -> AppKey:
        """Give ``app`` a fresh auth key (the old one stops working at
        once); ElvesError 413.2 when there is no such app."""
        if not await self.repo.set_key(tenant_id, app, secrets.token_hex(16)):
            raise ElvesError(Code.APP_NOT_FOUND, f"App Not Found: {app!r}")
        key = await self.repo.get_app(tenant_id, app)
        assert key is not None
        return key

    async def grant(self, tenant_id: str, app: str, *, ips=(), main_cats=(), sub_cats=()) -> None:
        """Let ``app`` act on these agent IPs / CMDB categories (``"all"``
        for every one)."""
        if await self.repo.get_app(tenant_id, app) is None:
            raise ElvesError(Code.APP_NOT_FOUND, f"App Not Found: {app!r}")
        ips = [ip if ip == ALL else check_ip(ip) for ip in ips]
        for kind, values in (("ip", ips), ("main_cat", main_cats), ("sub_cat", sub_cats)):
            if values:
                await self.repo.grant(tenant_id, app, kind, list(values))

    async def revoke(self, tenant_id: str, app: str, *, ips=(), main_cats=(), sub_cats=()) -> None:
        for kind, values in (("ip", ips), ("main_cat", main_cats), ("sub_cat", sub_cats)):
            if values:
                await self.repo.revoke(tenant_id, app, kind, list(values))

    # -- authentication and authorisation -----------------------------------

    async def app_by_key_any_tenant(self, auth_key: str) -> AppKey | None:
        return await self.repo.find_by_key_any_tenant(auth_key)

    async def app_by_auth_id_any_tenant(self, auth_id: str) -> AppKey | None:
        return await self.repo.find_by_auth_id_any_tenant(auth_id)

    async def allowed(self, key: AppKey, ips: list[str]) -> dict[str, bool]:
        """``{ip: may key's app act on it}``."""
        grants = await self.repo.grants(key.tenant_id, key.app)
        ip_grants = set(grants.get("ip", ()))
        if ALL in ip_grants:
            return {ip: True for ip in ips}
        out = {ip: ip in ip_grants for ip in ips}
        mains = set(grants.get("main_cat", ()))
        subs = set(grants.get("sub_cat", ()))
        rest = [ip for ip, ok in out.items() if not ok]
        if rest and (mains or subs) and self.categories_of is not None:
            cats = await self.categories_of(key.tenant_id, rest)
            for ip in rest:
                main, sub = cats.get(ip, (None, None))
                if main is not None and (ALL in mains or main in mains):
                    out[ip] = True
                elif sub is not None and (ALL in subs or sub in subs):
                    out[ip] = True
        return out

    async def authorize(self, call: ElvesCall, ips: list[str], app: str | None = None) -> AppKey:
        """The calling app, once it is known that it may run ``app`` (its
        own; ``None`` skips that check) on every one of ``ips``.

        Raises ElvesError: 401.1 no app authenticated, 413.2 ``app`` is not
        the caller's, 401.6 an IP not granted (the message names them)."""
        key: AppKey | None = call.caller
        if key is None:
            raise ElvesError(Code.MISSING_AUTH, "Missing Parameter: key (the calling app's auth key)")
        if app is not None and app != key.app:
            raise ElvesError(Code.APP_NOT_FOUND, f"App Not Found: {app!r} is not the app of this key ({key.app!r})")
        allowed = await self.allowed(key, ips)
        denied = [ip for ip, ok in allowed.items() if not ok]
        if denied:
            shown = ", ".join(denied[:5]) + (f" and {len(denied) - 5} more" if len(denied) > 5 else "")
            raise ElvesError(Code.DENIED, f"Permission Denied: app {key.app!r} may not act on agent {shown}")
        return key

    async def callback_of(self, tenant_id: str, app: str) -> tuple[str, int] | None:
        """The processor address of ``app``: ``(ip, port)``, or None."""
        key = await self.repo.get_app(tenant_id, app)
        if key is None or not key.callback_ip or not key.callback_port:
            return None
        return key.callback_ip, key.callback_port

    # -- Elves functions ----------------------------------------------------

    def register(self, router: ElvesRouter) -> None:
        router.register("supervisor", "checkIpAuthByKey", self.check_ip_auth_by_key)
        # The seed writes checkipauthbykey for getAppCallbackInfo too: the
        # one with an appname argument is the callback lookup.
        router.register(
            "supervisor", "getAppCallbackInfo", self.get_app_callback_info,
            aliases=[Alias("checkipauthbykey", when=lambda env: env.has("appname"))],
        )
        router.register("supervisor", "getAuthByKey", self.get_auth_by_key)

    async def _key_of_tenant(self, call: ElvesCall, auth_key: str) -> AppKey | None:
        return await self.repo.get_by_key(call.tenant_id, auth_key)

    async def check_ip_auth_by_key(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        """``status`` ``"true"`` when ``key`` (of the caller's tenant, and
        whose auth id is ``token`` when a token is given) may act on
        ``agentip``."""
        args = env.args(_CheckArgs)
        ip = check_ip(args.agentip)
        key = await self._key_of_tenant(call, args.key)
        if key is None or (args.token and args.token != key.auth_id):
            return {"status": FLAG_FALSE}
        ok = (await self.allowed(key, [ip]))[ip]
        return {"status": FLAG_TRUE if ok else FLAG_FALSE}

    async def get_app_callback_info(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        args = env.args(_CallbackArgs)
        key = await self.repo.get_app(call.tenant_id, args.appname)
        if key is None:
            raise ElvesError(Code.APP_NOT_FOUND, f"App Not Found: {args.appname!r}")
        return {"appip": key.callback_ip or "", "appport": "" if key.callback_port is None else str(key.callback_port)}

    async def get_auth_by_key(self, env: Envelope, call: ElvesCall) -> dict[str, Any]:
        """``auth_id`` and ``{app: {main_id_list, sub_id_list, agent_ip_list}}``
        (Elves' old shape; one app per key)."""
        args = env.args(_KeyArgs)
        key = await self._key_of_tenant(call, args.key)
        if key is None:
            raise ElvesError(Code.BAD_KEY, "Auth Key Not Valid")
        grants = await self.repo.grants(key.tenant_id, key.app)
        return {
            "auth_id": key.auth_id,
            key.app: {
                "main_id_list": grants.get("main_cat", []),
                "sub_id_list": grants.get("sub_cat", []),
                "agent_ip_list": grants.get("ip", []),
            },
        }
