"""ThingsBoard's server-side RPC endpoints, v1 and v2.

``POST /api/plugins/rpc/{oneway|twoway}/{deviceId}`` (v1, deprecated in
ThingsBoard) and ``POST /api/rpc/{oneway|twoway}/{deviceId}`` (v2) differ in
two statuses only (RpcV1Controller / RpcV2Controller):

=====================================  ======  ======  =================================
outcome                                v1      v2      body
=====================================  ======  ======  =================================
two-way reply                          200     200     the reply (empty reply: empty)
one-way sent                           200     200     empty
persistent stored (QUEUED)             200     200     ``{"rpcId": "<uuid>"}``
sent, no reply in time                 408     504     empty
device not connected until timeout     409     504     empty
reply not JSON                         406     406     empty
unknown / other tenant's device        404     404     Device with requested id wasn't found!
other customer's device                403     403     You don't have permission ...
system administrator                   403     403     System administrator is not allowed ...
body not JSON / no ``method`` / bad    400     400     JSON error, errorCode 31
device's queue full                    429     429     JSON error, errorCode 33
never sent: the node's window full     429     429     JSON error, errorCode 33
broker connection down                 503     503     JSON error, errorCode 2
server shutting down                   503     503     JSON error, errorCode 2
persistent call, database unavailable  503     503     JSON error, errorCode 2
=====================================  ======  ======  =================================

A device that is not connected: as in ThingsBoard, the call waits for it
until its timeout (and is delivered if it connects meanwhile), then answers
409 / 504; with ``rpc.offline_fail_fast`` it answers that at once.
(ThingsBoard answers 500 for a body without ``method``, a bug; 400 here.)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import msgspec
from aiohttp import hdrs, web
from multidict import CIMultiDict

from ...dispatch import CallObserver
from ...errors import (
    BrokerUnavailableError,
    DeviceOfflineError,
    DispatcherClosedError,
    DuplicateRpcError,
    QueueFullError,
    ReplyNotJsonError,
    RpcTimeoutError,
    StoreUnavailableError,
    ValidationError,
    WindowFullError,
)
from ..errors import ApiError, ErrorCode, empty, error_response
from ..metrics import RpcStats
from ..openapi import operation
from .access import check_uuid, device_for_rpc
from ...dispatch.options import CallOptions, effective_timeout_ms, parse_rpc_body
from ...rpc.status import RPC_CALL_FROM_SERVER_TO_DEVICE
from ...wire import BAD_JSON, check_json_depth
from ..keys import PRINCIPAL

__all__ = ["setup", "RpcRequest", "RpcId"]

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode
#: A reply's headers, copied by each response (cheaper than content_type=).
_JSON = CIMultiDict({hdrs.CONTENT_TYPE: "application/json"})


class RpcRequest(msgspec.Struct, kw_only=True):
    """ThingsBoard's RPC request body (the OpenAPI schema)."""

    method: str
    params: Any = None
    timeout: int | None = None
    expirationTime: int | None = None
    persistent: bool = False
    retries: int | None = None
    additionalInfo: Any = None
    requestUUID: str | None = None


class RpcId(msgspec.Struct):
    """The answer to a persistent call: its id."""

    rpcId: str


class _HeldCall(CallObserver):
    """A lightweight call to a device that is not connected, held by the
    dispatcher until the device connects or the deadline passes; remembers
    whether it was ever sent, which decides "timeout" vs "not connected"."""

    __slots__ = ("future", "was_sent", "oneway", "dispatcher")

    def __init__(self, future: asyncio.Future, oneway: bool, dispatcher: Any) -> None:
        self.future = future
        self.was_sent = False
        self.oneway = oneway
        self.dispatcher = dispatcher

    def sent(self, rid: int, device: str) -> None:
        self.was_sent = True
        if self.oneway and not self.future.done():
            # ThingsBoard answers a one-way call once it is sent to a session.
            self.future.set_result(None)
            # Not from inside the dispatcher's send path: release the entry soon.
            self.future.get_loop().call_soon(self.dispatcher.cancel, rid)

    def acked(self, rid: int, device: str) -> bool:
        return self.oneway

    def __call__(self, rid: int, device: str, result: Any, error: BaseException | None) -> None:
        fut = self.future
        if fut.done():
            return
        if error is None:
            fut.set_result(result)
        else:
            fut.set_exception(error)


def _deadline(ctx: Any, opts: CallOptions, loop: asyncio.AbstractEventLoop) -> float:
    s = ctx.settings.dispatch
    if opts.expiration_time is not None:
        return loop.time() + (opts.expiration_time / 1000.0 - time.time())
    t = opts.timeout_ms if opts.timeout_ms is not None else s.default_timeout_ms
    return loop.time() + max(t, s.min_timeout_ms) / 1000.0


async def _held(ctx: Any, device_id: str, opts: CallOptions) -> tuple[Any, bool]:
    """Call a device that is not connected: (result, was_sent); raises the
    dispatcher's errors."""
    d = ctx.dispatcher
    loop = asyncio.get_running_loop()
    held = _HeldCall(loop.create_future(), opts.oneway, d)
    rid = d.submit(device_id, opts.method, opts.params, held, deadline=_deadline(ctx, opts, loop),
                   oneway=opts.oneway, hold_offline=True)
    try:
        return await held.future, held.was_sent
    except RpcTimeoutError as exc:
        if held.was_sent or isinstance(exc, (BrokerUnavailableError, WindowFullError)):
            raise
        raise DeviceOfflineError(f"device {device_id!r} did not connect before the call's deadline") from None
    except asyncio.CancelledError:
        d.cancel(rid)
        raise


async def _lightweight(ctx: Any, device_id: str, opts: CallOptions, timeout_status: int,
                       offline_status: int, stats: RpcStats) -> web.Response:
    d = ctx.dispatcher
    started = time.perf_counter()
    try:
        if d.is_online(device_id):
            if opts.timeout_ms is None:
                timeout = None
            else:
                timeout = opts.timeout_ms / 1000.0
            try:
                result = await d.call(device_id, opts.method, opts.params, timeout=timeout,
                                      expiration_time=opts.expiration_time, oneway=opts.oneway)
            except DeviceOfflineError:  # went away between the check and the call
                if ctx.settings.rpc.offline_fail_fast:
                    raise
                result, _ = await _held(ctx, device_id, opts)
        elif ctx.settings.rpc.offline_fail_fast:
            raise DeviceOfflineError(device_id)
        else:
            result, _ = await _held(ctx, device_id, opts)
    except BrokerUnavailableError as exc:
        # Not the device's fault: say so (the fault suite's broker probe).
        stats.done("broker_unavailable", started)
        return error_response(503, f"The MQTT broker is unavailable: {exc}", ErrorCode.GENERAL)
    except WindowFullError as exc:
        stats.done("window_full", started)
        return error_response(429, f"Too many calls in flight on this server: {exc}", ErrorCode.TOO_MANY_REQUESTS)
    except RpcTimeoutError:
        stats.done("timeout", started)
        return empty(timeout_status)
    except DeviceOfflineError:
        stats.done("offline", started)
        return empty(offline_status)
    except ReplyNotJsonError as exc:
        # ThingsBoard answers an empty reply with an empty 200.
        if exc.empty:
            stats.done("ok", started)
            ctx.activity.touch(device_id)
            return web.Response(status=200)
        stats.done("not_json", started)
        return empty(406)
    except QueueFullError:
        stats.done("queue_full", started)
        return error_response(429, "Too many requests for the device: its queue is full",
                              ErrorCode.TOO_MANY_REQUESTS)
    except DispatcherClosedError:
        stats.done("shutdown", started)
        return error_response(503, "Server is shutting down", ErrorCode.GENERAL)
    except ValidationError as exc:
        stats.done("invalid", started)
        raise ApiError.bad_request(str(exc)) from None
    stats.done("ok", started)
    ctx.activity.touch(device_id)
    if opts.oneway:
        return web.Response(status=200)
    # The reply as the device sent it: the codec has already parsed it (a
    # reply that is not JSON is a 406 above); encoding a small one costs
    # well under a microsecond.
    return web.Response(body=_encode(result), headers=_JSON)


def _announce(ctx: Any, device_id: str, tenant_id: str, opts: CallOptions, request_uuid: str) -> None:
    """RPC_CALL_FROM_SERVER_TO_DEVICE for a call the REST API accepted (a
    persistent one once it is stored), as ThingsBoard's rule engine gets it:
    lightweight calls leave no other trace for the sinks."""
    expiration = opts.expiration_time
    if expiration is None:
        expiration = int(time.time() * 1000) + effective_timeout_ms(opts.timeout_ms, ctx.library)
    ctx.bus.emit(RPC_CALL_FROM_SERVER_TO_DEVICE, {
        "deviceId": {"entityType": "DEVICE", "id": device_id},
        "tenantId": {"entityType": "TENANT", "id": tenant_id},
        "requestUUID": request_uuid,
        "method": opts.method,
        "params": opts.params,
        "oneway": opts.oneway,
        "persistent": opts.persistent,
        "expirationTime": expiration,
        "additionalInfo": opts.additional_info,
    })


async def _persistent(ctx: Any, device: Any, opts: CallOptions, tenant_id: str) -> web.Response:
    started = time.perf_counter()
    try:
        rpc_id = await ctx.engine.call(
            str(device.id), opts.method, opts.params, timeout_ms=opts.timeout_ms,
            expiration_time=opts.expiration_time, oneway=opts.oneway, retries=opts.retries,
            additional_info=opts.additional_info, request_uuid=opts.request_uuid, tenant_id=tenant_id,
        )
    except DuplicateRpcError:
        ctx.metrics.rpc_done("persistent", "duplicate", started, tenant_id)
        raise ApiError(409, f"Rpc with id [{opts.request_uuid}] already exists", ErrorCode.VERSION_CONFLICT) from None
    except ValidationError as exc:
        ctx.metrics.rpc_done("persistent", "invalid", started, tenant_id)
        raise ApiError.bad_request(str(exc)) from None
    except DispatcherClosedError:
        ctx.metrics.rpc_done("persistent", "shutdown", started, tenant_id)
        return error_response(503, "Server is shutting down", ErrorCode.GENERAL)
    except StoreUnavailableError:
        # The database is down (the fault probes kill it): nothing was stored.
        ctx.metrics.rpc_done("persistent", "store_unavailable", started, tenant_id)
        return error_response(503, "The database is unavailable: the call was not stored", ErrorCode.GENERAL)
    ctx.metrics.rpc_done("persistent", "queued", started, tenant_id)
    if ctx.bus is not None and ctx.bus.sinks:
        _announce(ctx, str(device.id), tenant_id, opts, rpc_id)
    return web.Response(status=200, body=b'{"rpcId":"' + rpc_id.encode() + b'"}', content_type="application/json")


def _handler(ctx: Any, oneway: bool, timeout_status: int, offline_status: int):
    kind = "oneway" if oneway else "twoway"
    rpc_stats = ctx.metrics.rpc_stats

    async def handle(request: web.Request) -> web.Response:
        p = request[PRINCIPAL]
        raw = await request.read()
        try:
            check_json_depth(raw)
            body = _decode(raw)
        except BAD_JSON:
            raise ApiError.bad_request("Invalid request body") from None
        try:
            opts = parse_rpc_body(body, oneway=oneway)
        except ValidationError as exc:
            raise ApiError.bad_request(str(exc)) from None
        device = await device_for_rpc(ctx, p, check_uuid(request.match_info["deviceId"]))
        if opts.persistent:
            return await _persistent(ctx, device, opts, p.tenant_id)
        if ctx.bus is not None and ctx.bus.sinks:
            _announce(ctx, str(device.id), p.tenant_id, opts, opts.request_uuid or str(uuid.uuid4()))
        return await _lightweight(ctx, str(device.id), opts, timeout_status, offline_status,
                                  rpc_stats(kind, p.tenant_id))

    return handle


def setup(app: web.Application, ctx: Any) -> None:
    r = app.router
    for version, prefix, timeout_status, offline_status in (
        ("v1", "/api/plugins/rpc", 408, 409),
        ("v2", "/api/rpc", 504, 504),
    ):
        for kind in ("oneway", "twoway"):
            statuses = {
                403: "Another customer's device, or a system administrator (bare text)",
                404: "Device with requested id wasn't found! (bare text)",
                406: "The device's reply is not JSON (empty)",
                413: "Request body over http.max_body_bytes",
                503: "Server shutting down, the database (persistent) or the MQTT broker unavailable",
            }
            if timeout_status == offline_status:
                statuses[504] = "Timeout, or the device was not connected (empty)"
            else:
                statuses[408] = "Timeout (empty)"
                statuses[409] = "The device was not connected (empty)"
            operation(
                app, r.add_post(f"{prefix}/{kind}/{{deviceId}}",
                                _handler(ctx, kind == "oneway", timeout_status, offline_status)),
                tag=f"rpc-{version}", summary=f"Send a {kind} RPC to a device ({version})",
                body=RpcRequest, response_kind="rpc", statuses=statuses,
            )
