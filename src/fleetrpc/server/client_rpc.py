"""Client-side RPC in the server: answering devices' own calls without
writing Python into the server.

ThingsBoard answers a device's calls with its rule engine; ``fleetrpc
serve`` answers them from its settings (``[client_rpc]``,
:class:`ClientRpcSection`), in three ways:

- built-in methods: ``getCurrentTime`` (epoch ms) and ``getSessionLimits``
  (ThingsBoard's answer, ``MqttTransportHandler.onGetSessionLimitsRpc``:
  ``{"maxPayloadSize", "maxInflightMessages", "rateLimits": {"messages",
  "telemetryMessages", "telemetryDataPoints"}}``; its official SDK asks on
  every connect);
- handlers named in ``handlers``: ``method = "package.module:function"``,
  or the name of an entry point in the group ``fleetrpc.client_rpc`` (a
  plug-in package declares ``[project.entry-points."fleetrpc.client_rpc"]``);
  a handler is ``fn(device_id, params)``, plain or async, and returns the
  answer;
- forwarding to an HTTP webhook for the methods in ``webhook_methods``
  (``"*"``: every method nothing else answers, through the dispatcher's
  :meth:`~fleetrpc.dispatch.Dispatcher.set_default_handler`): the call is POSTed as ``{"deviceId", "tenantId", "method", "params"}`` and the
  response body goes back to the device (parsed when it is JSON, as text
  otherwise).  A webhook that fails, answers non-2xx or does not answer
  within ``webhook_timeout_s`` gives the device a clear error reply
  (``{"error": {"code": "APPLICATION_ERROR", "message": "webhook ..."}}``).
  A device has at most ``max_inflight`` calls waiting for the webhook
  (getSessionLimits' ``maxInflightMessages``), the server
  ``webhook_max_inflight``; a call beyond gets that error at once, so a
  device calling faster than the webhook answers piles nothing up.

Every client-side call emits ``TO_SERVER_RPC_REQUEST`` on the event bus
once, with the answer (``response``) or the error (``error``); a method
nobody answers gets the dispatcher's ``METHOD_NOT_FOUND`` and is emitted
with ``"error": "METHOD_NOT_FOUND"`` (the sinks see every call, as
ThingsBoard's rule engine does).  In the server this replaces
:func:`fleetrpc.events.forward_client_calls`: with both, each call would be
emitted twice.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import inspect
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from ..config.server import EVERY_METHOD, ClientRpcSection  # [client_rpc]; re-exported here
from ..errors import RemoteError, ValidationError
from ..rpc.status import TO_SERVER_RPC_REQUEST

__all__ = ["ClientRpcSection", "ClientRpc", "ENTRY_POINT_GROUP", "BUILTIN_METHODS", "load_handler"]

log = logging.getLogger("fleetrpc.server.client_rpc")

ENTRY_POINT_GROUP = "fleetrpc.client_rpc"
BUILTIN_METHODS = ("getCurrentTime", "getSessionLimits")

Handler = Callable[[str, Any], Any]


def load_handler(method: str, target: str) -> Handler:
    """The function ``target`` names: ``"module:attr"`` (dots allowed in
    attr), else an entry point of the group ``fleetrpc.client_rpc``."""
    try:
        if ":" in target:
            module_name, _, attr = target.partition(":")
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        else:
            found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=target)
            if not found:
                raise LookupError(f"no entry point {target!r} in the group {ENTRY_POINT_GROUP}")
            obj = next(iter(found)).load()
    except Exception as e:
        raise ValidationError(f"client_rpc.handlers.{method}: cannot load {target!r}: {e}") from None
    if not callable(obj):
        raise ValidationError(f"client_rpc.handlers.{method}: {target!r} is not callable")
    return obj


class ClientRpc:
    """The configured answers, installed on a dispatcher.

    ``bus``: the EventBus for ``TO_SERVER_RPC_REQUEST``; ``devices``: a
    DeviceRepository (the webhook gets the device's tenant);
    ``max_payload`` / ``max_inflight``: what getSessionLimits reports (the
    dispatcher's payload limit and per-device queue cap).
    """

    def __init__(
        self,
        section: ClientRpcSection,
        *,
        bus: Any = None,
        devices: Any = None,
        max_payload: int = 65536,
        max_inflight: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.section = section
        self.bus = bus
        self.devices = devices
        self.max_payload = max_payload
        self.max_inflight = max_inflight
        self._clock = clock
        self._session: Any = None
        self._encode = msgspec.json.Encoder().encode
        #: webhook calls waiting for their answer: in all, and per device
        self.inflight = 0
        self._inflight: dict[str, int] = {}
        self.methods: dict[str, Handler] = {}
        if section.builtins:
            self.methods["getCurrentTime"] = self.get_current_time
            self.methods["getSessionLimits"] = self.get_session_limits
        for method, target in section.handlers.items():
            self.methods[method] = load_handler(method, target)
        for method in section.webhook_methods:
            if method != EVERY_METHOD:
                self.methods[method] = self._webhook_for(method)

    def install(self, dispatcher: Any) -> list[str]:
        """Register every configured method on ``dispatcher``
        (``add_handler``) and the answer to every other method
        (``set_default_handler``: the webhook with ``"*"`` in
        ``webhook_methods``, else METHOD_NOT_FOUND, emitted); returns the
        names of the methods registered."""
        for method, fn in self.methods.items():
            dispatcher.add_handler(method, self._observed(method, fn))
        dispatcher.set_default_handler(self.unlisted)
        return sorted(self.methods)

    async def unlisted(self, device: str, method: str, params: Any) -> Any:
        """A method no built-in nor handler answers: the webhook's when it
        takes every method, else declined (METHOD_NOT_FOUND)."""
        if not self.section.webhook_takes_every_method:
            self._emit(device, method, params, error="METHOD_NOT_FOUND")
            return NotImplemented
        try:
            result = await self.forward(device, method, params)
        except Exception as e:
            self._emit(device, method, params, error=f"{type(e).__name__}: {e}")
            raise
        self._emit(device, method, params, response=result)
        return result

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- built-ins -------------------------------------------------------------------

    def get_current_time(self, device: str, params: Any) -> int:
        return int(self._clock() * 1000)

    def get_session_limits(self, device: str, params: Any) -> dict[str, Any]:
        s = self.section
        return {
            "maxPayloadSize": self.max_payload,
            "maxInflightMessages": self.max_inflight,
            "rateLimits": {
                "messages": s.rate_limit_messages,
                "telemetryMessages": s.rate_limit_telemetry_messages,
                "telemetryDataPoints": s.rate_limit_telemetry_data_points,
            },
        }

    # -- events ----------------------------------------------------------------------

    def _observed(self, method: str, fn: Handler) -> Handler:
        """``fn`` with its answer (or error) emitted as TO_SERVER_RPC_REQUEST."""

        async def handle(device: str, params: Any) -> Any:
            try:
                result = fn(device, params)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as e:
                self._emit(device, method, params, error=f"{type(e).__name__}: {e}")
                raise
            self._emit(device, method, params, response=result)
            return result

        handle.__name__ = f"client_rpc_{method}"
        return handle

    def _emit(self, device: str, method: str, params: Any, **outcome: Any) -> None:
        if self.bus is None:
            return
        self.bus.emit(TO_SERVER_RPC_REQUEST, {
            "deviceId": {"entityType": "DEVICE", "id": device},
            # one per call: a sink that gets an event twice (a webhook retried) knows it
            "requestUUID": str(uuid.uuid4()),
            "method": method,
            "params": params,
            **outcome,
        })

    # -- the webhook -----------------------------------------------------------------

    def _webhook_for(self, method: str) -> Handler:
        async def forward(device: str, params: Any) -> Any:
            return await self.forward(device, method, params)

        return forward

    async def forward(self, device: str, method: str, params: Any) -> Any:
        """POST the call to the webhook; its body is the answer.  Raises
        RemoteError (the device's error reply) when it fails."""
        mine = self._inflight.get(device, 0)
        if mine >= self.max_inflight:
            raise RemoteError(f"webhook for {method!r}: {mine} calls of this device in flight already "
                              f"(at most {self.max_inflight})")
        if self.inflight >= self.section.webhook_max_inflight:
            raise RemoteError(f"webhook for {method!r}: {self.inflight} calls in flight already, "
                              f"the server's most (webhook_max_inflight)")
        self.inflight += 1
        self._inflight[device] = mine + 1
        try:
            return await self._forward(device, method, params)
        finally:
            self.inflight -= 1
            left = self._inflight.pop(device) - 1
            if left:
                self._inflight[device] = left

    async def _forward(self, device: str, method: str, params: Any) -> Any:
        import aiohttp

        url = self.section.webhook_url
        tenant = None
        if self.devices is not None:
            found = await self.devices.get_by_id(device)
            tenant = found.tenant_id if found is not None else None
        body = self._encode({"deviceId": device, "tenantId": tenant, "method": method, "params": params})
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"Content-Type": "application/json", **self.section.webhook_headers}
        timeout = aiohttp.ClientTimeout(total=self.section.webhook_timeout_s)
        try:
            async with self._session.post(url, data=body, headers=headers, timeout=timeout) as resp:
                raw = await resp.read()
                if resp.status >= 300:
                    raise RemoteError(f"webhook for {method!r} answered HTTP {resp.status}")
        except asyncio.TimeoutError:
            raise RemoteError(
                f"webhook for {method!r} did not answer within {self.section.webhook_timeout_s:g} s"
            ) from None
        except aiohttp.ClientError as e:
            raise RemoteError(f"webhook for {method!r} failed: {type(e).__name__}: {e}") from None
        if not raw:
            return None
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError:
            return raw.decode("utf-8", "replace")
