"""ThingsBoard's HTTP device API, the RPC part (DeviceApiController):
devices that speak HTTP instead of MQTT, authenticated by their access token
in the path, served by the device endpoint (``transport/endpoint/http.py``).

=====================================================  ==========================================
``GET /api/v1/{token}/rpc?timeout=ms``                 long poll: 200 ``{"id", "method", "params"}``,
                                                       408 (empty) when no call came in time
``POST /api/v1/{token}/rpc/{id}``                      the answer to request ``id``: 200
``POST /api/v1/{token}/rpc`` ``{"method","params"}``   client-side call: 200 with the answer, 408
``POST /api/v1/{token}/telemetry``, ``/attributes``    200, ignored (not fleetrpc's business)
``GET /api/v1/{token}/attributes``                     200 ``{}``: fleetrpc keeps no attributes
``GET /api/v1/{token}/attributes/updates?timeout=ms``  408 after the timeout: there are none
=====================================================  ==========================================

A wrong token is 401 with an empty body, as in ThingsBoard (checked before
the other parameters); a body over ``endpoint.max_payload`` is 413.  Without
``[endpoint] enabled`` these answer 503.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from ...transport.endpoint.http import CALL_TIMEOUT_S, POLL_DEFAULT_MS, POLL_MAX_MS
from ..auth import public
from ..errors import ApiError, ErrorCode, error_response
from ..keys import CTX
from ..openapi import Param, operation

__all__ = ["setup"]

_JSON = {"Content-Type": "application/json"}


class _NoEndpoint(Exception):
    pass


class _UnknownToken(Exception):
    pass


async def _device(request: web.Request) -> tuple[Any, str]:
    """(the endpoint, the device id of the path's token); raises
    _UnknownToken (401) for a token nobody has."""
    ep = request.app[CTX].endpoint
    if ep is None:
        raise _NoEndpoint()
    identity = ep._identity(await _maybe_await(ep._authenticate(request.match_info["token"], None, "")))
    if identity is None:
        raise _UnknownToken()
    return ep, identity.device_id


def _client_there(request: web.Request):
    """Whether the request's client is still connected (aiohttp does not
    cancel a handler whose client has gone)."""
    def alive() -> bool:
        transport = request.transport
        return transport is not None and not transport.is_closing()
    return alive


async def _maybe_await(value: Any) -> Any:
    return await value if hasattr(value, "__await__") else value


async def _body(request: web.Request, ep: Any) -> bytes:
    limit = ep.settings.max_payload
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"request body over the device payload limit of {limit} bytes", ErrorCode.BAD_REQUEST_PARAMS)
    body = bytearray()
    async for chunk in request.content.iter_any():  # (a body may come in several segments)
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body over the device payload limit of {limit} bytes",
                           ErrorCode.BAD_REQUEST_PARAMS)
    return bytes(body)


def _endpoint_needed(handler):
    async def handle(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except _NoEndpoint:
            return error_response(503, "ThingsBoard's device API is served by the device endpoint: "
                                       "set [endpoint] enabled = true", ErrorCode.GENERAL)
        except _UnknownToken:
            return web.Response(status=401)  # (ThingsBoard's DeviceApiController: no body)

    handle.__name__ = handler.__name__
    handle.__doc__ = handler.__doc__
    return public(handle)


@_endpoint_needed
async def subscribe_to_rpc(request: web.Request) -> web.Response:
    ep, device = await _device(request)
    body = await ep.http.poll(device, _poll_timeout(request), _client_there(request))
    if body is None:
        return web.Response(status=408)
    return web.Response(body=body, headers=_JSON)


@_endpoint_needed
async def reply_to_rpc(request: web.Request) -> web.Response:
    ep, device = await _device(request)
    raw = request.match_info["requestId"]
    try:
        n = int(raw)
    except ValueError:
        raise ApiError.bad_request(f"requestId must be the request's number, not {raw!r}") from None
    body = await _body(request, ep)
    if not body.strip():
        raise ApiError.bad_request("the answer is the request body: it is empty")
    ep.http.answer(device, n, body)  # (an unknown one is counted and dropped, as ThingsBoard does)
    return web.Response(status=200)


@_endpoint_needed
async def client_rpc(request: web.Request) -> web.Response:
    ep, device = await _device(request)
    body = await _body(request, ep)
    try:
        answer = await ep.http.call(device, body, CALL_TIMEOUT_S)
    except msgspec.DecodeError as exc:
        raise ApiError.bad_request(f"the body must be an object {{\"method\", \"params\"}}: {exc}") from None
    except OverflowError as exc:
        raise ApiError(429, str(exc), ErrorCode.TOO_MANY_REQUESTS) from None
    if answer is None:
        return web.Response(status=408)
    return web.Response(body=answer, headers=_JSON)


def _poll_timeout(request: web.Request) -> float:
    """A long poll's ``timeout`` query parameter, in seconds (ThingsBoard's
    default when 0 or absent, capped at its maximum)."""
    raw = request.query.get("timeout", "0")
    try:
        timeout_ms = int(raw)
    except ValueError:
        raise ApiError.bad_request(f"timeout must be a whole number of milliseconds, not {raw!r}") from None
    if timeout_ms < 0:
        raise ApiError.bad_request("timeout must be >= 0")
    return min(timeout_ms or POLL_DEFAULT_MS, POLL_MAX_MS) / 1000.0


@_endpoint_needed
async def no_attributes(request: web.Request) -> web.Response:
    """fleetrpc keeps no attributes: none, as ThingsBoard answers for a device without any."""
    ep, _ = await _device(request)
    ep.stats.attribute_requests += 1
    return web.Response(body=b"{}", headers=_JSON)


@_endpoint_needed
async def no_attribute_updates(request: web.Request) -> web.Response:
    """Nothing ever changes: the poll ends as timed out (firmware polls again)."""
    ep, device = await _device(request)
    await ep.http.idle(device, _poll_timeout(request))
    return web.Response(status=408)


@_endpoint_needed
async def ignored(request: web.Request) -> web.Response:
    ep, _ = await _device(request)
    await _body(request, ep)
    ep.stats.ignored += 1
    return web.Response(status=200)


def setup(app: web.Application, ctx: Any) -> None:
    r = app.router
    common = {401: "Unknown device access token", 503: "The device endpoint is not enabled"}
    operation(app, r.add_get("/api/v1/{token}/rpc", subscribe_to_rpc), tag="device-api",
              summary="A device waits for its next server-side RPC (long poll)",
              query=(Param("timeout", int, description="ms; 0 or absent: 60000, at most 300000"),),
              response=dict, statuses={**common, 400: "timeout not a whole number >= 0",
                                       408: "No call within the timeout (empty)"})
    operation(app, r.add_post("/api/v1/{token}/rpc/{requestId}", reply_to_rpc), tag="device-api",
              summary="A device answers server-side RPC {requestId}", body=dict,
              statuses={**common, 400: "requestId not a number", 413: "Body over endpoint.max_payload"})
    operation(app, r.add_post("/api/v1/{token}/rpc", client_rpc), tag="device-api",
              summary="A device calls the server (client-side RPC)", body=dict, response=dict,
              statuses={**common, 400: "Body not a {method, params} object", 408: "No answer in time (empty)",
                        413: "Body over endpoint.max_payload", 429: "Too many calls of this device awaiting answers"})
    operation(app, r.add_get("/api/v1/{token}/attributes", no_attributes), tag="device-api",
              summary="A device's attributes: none (fleetrpc keeps no attributes)", response=dict,
              statuses=common)
    operation(app, r.add_get("/api/v1/{token}/attributes/updates", no_attribute_updates), tag="device-api",
              summary="A device waits for attribute updates: none come (408 after the timeout)",
              query=(Param("timeout", int, description="ms; 0 or absent: 60000, at most 300000"),),
              statuses={**common, 400: "timeout not a whole number >= 0", 408: "No update (empty)"})
    for kind in ("telemetry", "attributes"):
        operation(app, r.add_post(f"/api/v1/{{token}}/{kind}", ignored), tag="device-api",
                  summary=f"A device's {kind}: accepted and ignored (fleetrpc keeps no {kind})", body=dict,
                  statuses={**common, 413: "Body over endpoint.max_payload"})
