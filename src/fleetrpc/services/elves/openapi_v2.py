"""Elves' own HTTP OpenAPI (v2), for apps written against the real product.

Every endpoint takes GET or POST (query and form parameters, as Elves'
servlets read them) plus the signature parameters, and answers HTTP 200 with
``{"flag": "true"|"false", "error": "" | "[code]Message", "result": ...}``::

    /api/v2/rt/exec            ip, app, func, param (JSON), timeout (90), proxy
    /api/v2/cron/add           ip, app, func, param, timeout, proxy, mode (NP), rule
    /api/v2/cron/start|stop|delete|detail      cron_id
    /api/v2/queue/create       app
    /api/v2/queue/addtask      queue_id, ip, func, param, timeout, proxy, mode, depend_task_id
    /api/v2/queue/commit|stop|result           queue_id
    /api/v2/info/app           -
    /api/v2/info/agents        -

The signature (Elves' ``SecurityFilter``): ``auth_id``, ``timestamp`` (epoch
seconds), ``sign_type`` = ``md5`` and ``sign`` = the hex MD5 of the request
path, ``?``, every other parameter as ``k=v`` (decoded values, keys sorted,
joined by ``&``; ``auth_id`` and ``timestamp`` included), and the app's auth
key.  Checked in Elves' order: a signature parameter missing ``[401.1]``,
``sign_type`` not md5 ``[401.3]``, ``sign`` not 32 characters ``[401.4]``,
``timestamp`` not digits ``[401.8]``, more than 180 s away ``[401.7]``, an
unknown auth id ``[413.1]``, a wrong signature ``[401.5]``, then, when the
request names an ``app`` or an ``ip``, an app that is not the auth id's or an
IP it may not act on ``[401.6]``.  The auth id tells the tenant.

The handlers are public (``fleetrpc_public``): the signature, not a JWT,
authenticates them.  Behind them are the same Elves functions as over MQTT.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any, Awaitable, Callable

import msgspec
from aiohttp import web

from .envelope import check_ip
from .errors import Code, ElvesError
from .router import ElvesCall

__all__ = ["setup", "setup_http", "signature", "TIMESTAMP_WINDOW_S", "ROUTES"]

#: How far ``timestamp`` may be from the server's clock, seconds.
TIMESTAMP_WINDOW_S = 180
#: Elves' own messages for its OpenAPI's errors.
MESSAGES = {
    "401.1": "Unauthorized Missing Sign Param",
    "401.3": "Unauthorized SignType Is Illegal",
    "401.4": "Unauthorized Sign Length Is Illegal",
    "401.5": "Unauthorized Sign Error",
    "401.6": "Unauthorized AuthId Permission Denied",
    "401.7": "Unauthorized Sign Timeout",
    "401.8": "Unauthorized Timestamp Is Illegal",
    "403.1": "Request Params (ip) Illegal",
    "403.2": "Request Params (param) Illegal",
    "403.3": "Request Params (app) Illegal",
    "403.4": "Request Params (mode) Illegal",
    "403.5": "Request Params (cron-rule) Illegal",
    "403.6": "Request Params (queue_id) Illegal",
    "403.7": "Request Params (func) Illegal",
    "403.8": "Request Params (timeout) Illegal",
    "403.9": "Request Params (cron_id) Illegal",
}
_SIGN_PARAMS = ("timestamp", "sign_type", "sign", "auth_id")
_INSTALLED = web.AppKey("elves_openapi_v2_installed", bool)


def signature(path: str, params: dict[str, str], auth_key: str) -> str:
    """Elves' signature of a request: hex MD5 of ``path?k=v&...`` (sorted,
    without ``sign``/``sign_type``) followed by the auth key."""
    if path.startswith("//"):
        path = path.replace("//", "/", 1)
    pairs = "&".join(f"{k}={params[k]}" for k in sorted(params) if k not in ("sign", "sign_type"))
    text = f"{path}?{pairs}" if pairs else path
    return hashlib.md5((text + auth_key).strip().encode("utf-8")).hexdigest()


def _fail(code: str, detail: str = "") -> dict[str, Any]:
    message = MESSAGES.get(code, "")
    if detail:
        message = f"{message}: {detail}" if message else detail
    return {"flag": "false", "error": f"[{code}]{message}", "result": ""}


class _Api:
    def __init__(self, service: Any, clock: Callable[[], float]) -> None:
        self.service = service
        self.clock = clock

    async def params(self, request: web.Request) -> dict[str, str]:
        """Query and form parameters, the first value of each (Elves reads
        ``getParameter``)."""
        out: dict[str, str] = {}
        if request.method == "POST" and request.content_type in (
            "application/x-www-form-urlencoded", "multipart/form-data"
        ):
            form = await request.post()
            for k in form:
                v = form.get(k)
                if isinstance(v, str):
                    out.setdefault(k, v)
        for k in request.query:
            out.setdefault(k, request.query.get(k, ""))
        return out

    async def authenticate(self, request: web.Request, p: dict[str, str]) -> Any:
        """The app key of a correctly signed request; raises _Refused."""
        if any(not (p.get(k) or "").strip() for k in _SIGN_PARAMS):
            raise _Refused("401.1")
        if p["sign_type"].lower() != "md5":
            raise _Refused("401.3")
        if len(p["sign"]) != 32:
            raise _Refused("401.4")
        ts = p["timestamp"].strip()
        if not ts.isdigit() or len(ts) > 12:
            raise _Refused("401.8")
        now = self.clock()
        if not now - TIMESTAMP_WINDOW_S < int(ts) < now + TIMESTAMP_WINDOW_S:
            raise _Refused("401.7")
        # (no auth id holds U+0000, and PostgreSQL would refuse the lookup)
        key = None if "\x00" in p["auth_id"] else await self.service.supervisor.app_by_auth_id_any_tenant(p["auth_id"])
        if key is None:
            raise _Refused(Code.AUTH_ID_NOT_FOUND, raw=f"[{Code.AUTH_ID_NOT_FOUND}]AuthId Not Found")
        expected = signature(request.raw_path.split("?", 1)[0], p, key.auth_key)
        if not hmac.compare_digest(expected, p["sign"].lower()):
            raise _Refused("401.5")
        app, ip = (p.get("app") or "").strip(), (p.get("ip") or "").strip()
        if app and app != key.app:
            raise _Refused("401.6", f"app {app!r} is not the app of this auth id")
        if ip:
            try:
                ip = check_ip(ip)
            except ElvesError:
                raise _Refused("403.1") from None
            if not (await self.service.supervisor.allowed(key, [ip]))[ip]:
                raise _Refused("401.6", f"agent {ip}")
        return key

    def route(self, fn: Callable[[dict[str, str], Any], Awaitable[dict[str, Any]]]) -> Callable:
        async def handler(request: web.Request) -> web.Response:
            try:
                p = await self.params(request)
                key = await self.authenticate(request, p)
                body = await fn(p, key)
            except _Refused as r:
                body = r.body
            return web.json_response(body)

        handler.fleetrpc_public = True  # type: ignore[attr-defined]
        return handler

    async def call(self, key: Any, mqs: str, mqf: str, **args: Any) -> dict[str, Any]:
        """Run an Elves function as the app of ``key``."""
        envelope = {"mqt": "call", "mqs": mqs, "mqf": mqf, "auth_id": key.auth_id, **args}
        call = ElvesCall(tenant_id=key.tenant_id, caller=key, via="http")
        reply = await self.service.handle(envelope, call)
        if reply.get("flag") != "true":
            raise _Refused("", raw=reply.get("error") or f"[{Code.INTERNAL}]Internal Error")
        return reply


class _Refused(Exception):
    def __init__(self, code: str, detail: str = "", *, raw: str | None = None) -> None:
        super().__init__(raw or code)
        self.body = {"flag": "false", "error": raw, "result": ""} if raw is not None else _fail(code, detail)


# -- argument checks, Elves' order ---------------------------------------------------------


def _required(p: dict[str, str], name: str, code: str) -> str:
    value = (p.get(name) or "").strip()
    if not value:
        raise _Refused(code)
    return value


def _ip(p: dict[str, str]) -> str:
    try:
        return check_ip((p.get("ip") or "").strip())
    except ElvesError:
        raise _Refused("403.1") from None


def _json_param(p: dict[str, str]) -> str:
    param = p.get("param") or ""
    if param.strip():
        try:
            msgspec.json.decode(param)
        except msgspec.DecodeError:
            raise _Refused("403.2") from None
    return param


def _timeout(p: dict[str, str]) -> int:
    value = (p.get("timeout") or "").strip()
    if not value:
        return 90
    if not value.isdigit() or len(value) > 8:
        raise _Refused("403.8")
    return int(value)


def _mode(p: dict[str, str]) -> str:
    mode = (p.get("mode") or "").strip()
    if mode and mode.lower() not in ("p", "np"):
        raise _Refused("403.4")
    return mode.upper() or "NP"


def _cron_id(p: dict[str, str]) -> str:
    value = (p.get("cron_id") or "").strip()
    if len(value) != 16:
        raise _Refused("403.9")
    return value


def _queue_id(p: dict[str, str]) -> str:
    return _required(p, "queue_id", "403.6")


def setup_http(app: web.Application, service: Any, *, clock: Callable[[], float] = time.time) -> None:
    """Add the OpenAPI v2 routes (called by ``services/elves/http.setup``
    for every installed part)."""
    if app.get(_INSTALLED):
        return
    app[_INSTALLED] = True
    api = _Api(service, clock)

    async def rt_exec(p, key):
        app_name, func, ip = _required(p, "app", "403.3"), _required(p, "func", "403.7"), _ip(p)
        ins = {"mode": "NP", "app": app_name, "func": func, "param": _json_param(p), "timeout": _timeout(p),
               "proxy": p.get("proxy") or ""}
        reply = await api.call(key, "scheduler", "sendSync", agentip=ip, ins=ins)
        info = reply["info"]
        return {"flag": "true", "error": "", "result": {
            "id": info["id"], "worker_flag": str(info["worker_flag"]), "worker_message": info["worker_result"],
            "worker_costtime": info["worker_costtime"]}}

    async def cron_add(p, key):
        app_name, func, ip = _required(p, "app", "403.3"), _required(p, "func", "403.7"), _ip(p)
        param, timeout, mode = _json_param(p), _timeout(p), _mode(p)
        rule = _required(p, "rule", "403.5")
        reply = await api.call(key, "cron", "createCron", ip=ip, app=app_name, func=func, param=param,
                               timeout=timeout, proxy=p.get("proxy") or "", mode=mode, rule=rule)
        return {"flag": "true", "error": "", "id": reply["id"], "result": {"id": reply["id"]}}

    def cron_op(mqf):
        async def op(p, key):
            reply = await api.call(key, "cron", mqf, id=_cron_id(p))
            return {"flag": "true", "error": "", "result": reply.get("result", "")}
        return op

    async def queue_create(p, key):
        reply = await api.call(key, "queue", "createQueue", app=_required(p, "app", "403.3"))
        return {"flag": "true", "error": "", "id": reply["id"], "result": {"id": reply["id"]}}

    async def queue_addtask(p, key):
        qid, func, ip = _queue_id(p), _required(p, "func", "403.7"), _ip(p)
        param, timeout, mode = _json_param(p), _timeout(p), _mode(p)
        args = {"queue_id": qid, "ip": ip, "func": func, "param": param, "timeout": timeout,
                "proxy": p.get("proxy") or "", "mode": mode}
        if (p.get("depend_task_id") or "").strip():
            args["depend_task_id"] = p["depend_task_id"].strip()
        reply = await api.call(key, "queue", "addTask", **args)
        return {"flag": "true", "error": "", "id": reply["id"], "result": {"id": reply["id"]}}

    def queue_op(mqf):
        async def op(p, key):
            reply = await api.call(key, "queue", mqf, queue_id=_queue_id(p))
            out = {"flag": "true", "error": "", "result": reply.get("result", "")}
            if "status" in reply:
                out["status"] = reply["status"]
            return out
        return op

    async def info_app(p, key):
        return {"flag": "true", "error": "", "result": {
            "app": key.app, "app_name": key.app, "app_ver": "",
            "last_update_time": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(key.created_ms / 1000))}}

    async def info_agents(p, key):
        grants = await service.supervisor.repo.grants(key.tenant_id, key.app)
        return {"flag": "true", "error": "", "result": [ip for ip in grants.get("ip", []) if ip != "all"]}

    routes = {
        "/api/v2/rt/exec": rt_exec,
        "/api/v2/cron/add": cron_add,
        "/api/v2/cron/start": cron_op("startCron"),
        "/api/v2/cron/stop": cron_op("stopCron"),
        "/api/v2/cron/delete": cron_op("deleteCron"),
        "/api/v2/cron/detail": cron_op("cronDetail"),
        "/api/v2/queue/create": queue_create,
        "/api/v2/queue/addtask": queue_addtask,
        "/api/v2/queue/commit": queue_op("commitQueue"),
        "/api/v2/queue/stop": queue_op("stopQueue"),
        "/api/v2/queue/result": queue_op("queueResult"),
        "/api/v2/info/app": info_app,
        "/api/v2/info/agents": info_agents,
    }
    for path, fn in routes.items():
        handler = api.route(fn)
        app.router.add_get(path, handler, allow_head=False)
        app.router.add_post(path, handler)


ROUTES = (
    "/api/v2/rt/exec", "/api/v2/cron/add", "/api/v2/cron/start", "/api/v2/cron/stop", "/api/v2/cron/delete",
    "/api/v2/cron/detail", "/api/v2/queue/create", "/api/v2/queue/addtask", "/api/v2/queue/commit",
    "/api/v2/queue/stop", "/api/v2/queue/result", "/api/v2/info/app", "/api/v2/info/agents",
)


def install(service: Any) -> None:
    """A part of the Elves service (its routes come with ``setup_http``)."""


def setup(app: web.Application, ctx: Any) -> None:
    """The server's convention (``setup(app, ctx)``): the OpenAPI v2 on the
    Elves service that ``services/elves/http.setup`` put on ``app``.  Only
    needed where that setup does not already call :func:`setup_http`."""
    from .http import ELVES_SERVICE

    service = app.get(ELVES_SERVICE)
    if service is None:
        raise RuntimeError("the Elves OpenAPI v2 needs services/elves/http.setup(app, ctx) first")
    setup_http(app, service)
