"""Client-side RPC: a device asks the server, a registered handler answers.

The answer goes to the caller's own RETURN topic, ``{p}/d/{device}/ret/{cid}``,
or to its MQTT 5 Response Topic when that lies in the same subtree; any other
Response Topic is ignored and counted (``wire.own_answer_target``), so that
no device can make the server publish into another device's topics.  A call
that cannot be read gets ``BAD_REQUEST``; a call is never dropped in silence
while its topic names a valid device and call id.

A handler that returns an awaitable runs as a task until it answers: at
most ``queue_cap`` of them per device (what getSessionLimits tells a device
as maxInflightMessages) and ``client_call_window`` per node.  A call beyond
gets ``APPLICATION_ERROR`` ("busy") at once, so a device calling faster
than its handlers answer piles nothing up.
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import msgspec

from ..errors import RemoteError
from ..wire import ErrorCode, error_reply, own_answer_target, parse_call_topic

if TYPE_CHECKING:
    from .engine import Dispatcher

log = logging.getLogger("fleetrpc.dispatcher")

__all__ = ["ClientCalls", "DefaultHandler", "Handler"]

#: ``handler(device, params)``, plain or async; its return value is the reply.
Handler = Callable[[str, Any], Any]
#: ``default(device, method, params)``, plain or async: answers the methods
#: no handler is registered for; returning ``NotImplemented`` declines
#: (the device gets METHOD_NOT_FOUND).
DefaultHandler = Callable[[str, str, Any], Any]


class ClientCalls:
    """The client-side handlers of one dispatcher and the answering of calls."""

    def __init__(self, dispatcher: "Dispatcher") -> None:
        self._d = dispatcher
        self.handlers: dict[str, Handler] = {}
        self.default: DefaultHandler | None = None
        self._encode = msgspec.json.Encoder().encode
        #: Handlers running (awaited) now: in all, and per device (only
        #: devices with one running: bounded by client_call_window).
        self.running = 0
        self._per_device: dict[str, int] = {}

    def add(self, method: str, fn: Handler) -> None:
        self.handlers[method] = fn

    # -- inbound ------------------------------------------------------------

    def on_call(self, msg: Any, properties: dict | None) -> None:
        d = self._d
        d.stats.client_calls += 1
        device, cid = msg.device, msg.rid
        request = msg.body
        topic, props = self._target(device, cid, properties)
        if d._hooks:
            d._emit("TO_SERVER_RPC_REQUEST", cid, device, {"method": request.method, "params": request.params})
        handler = self.handlers.get(request.method)
        try:
            if handler is not None:
                result = handler(device, request.params)
            elif self.default is not None:
                result = self.default(device, request.method, request.params)
            else:
                result = NotImplemented
        except Exception as exc:
            self._handler_failed(topic, props, request.method, exc)
            return
        if inspect.isawaitable(result):
            mine = self._per_device.get(device, 0)
            s = d.settings
            if mine >= s.queue_cap or self.running >= s.client_call_window:
                close = getattr(result, "close", None)
                if close is not None:
                    close()  # a coroutine never awaited: no "never awaited" warning
                d.stats.client_busy += 1
                d._rejects.note("client_busy", "device %.100r: %d of its calls running, %d on this node",
                                device, mine, self.running)
                self._error(topic, props, ErrorCode.APPLICATION_ERROR,
                            f"busy: {mine} calls of this device running already (at most {s.queue_cap}), "
                            f"{self.running} on this node (at most {s.client_call_window})")
                return
            self.running += 1
            self._per_device[device] = mine + 1
            d._spawn(self._finish(topic, props, request.method, result, device))
        else:
            self._reply(topic, props, result, request.method)

    def on_unreadable(self, topic: str, properties: dict | None, reason: str) -> bool:
        """A message the codec rejected: if it is a CALL with a valid device
        and call id, answer BAD_REQUEST and return True."""
        parsed = parse_call_topic(self._d.settings.prefix, topic)
        if parsed is None:
            return False
        device, cid = parsed
        self._d.stats.bad_calls += 1
        target, props = self._target(device, cid, properties)
        self._error(target, props, ErrorCode.BAD_REQUEST, reason)
        return True

    def _target(self, device: str, cid: Any, properties: dict | None) -> tuple[str, dict | None]:
        topics = self._d._topics
        own = topics.return_(device, cid)
        if not properties:
            return own, None
        topic, props, honoured = own_answer_target(own, topics.return_head(device), properties)
        if not honoured:
            self._d.stats.foreign_response_topic += 1
            self._d._rejects.note("foreign_response_topic",
                                  "device %.100r named a Response Topic outside its own answers", device)
        return topic, props

    # -- answering ----------------------------------------------------------

    async def _finish(self, topic: str, props: dict | None, method: str, awaitable: Awaitable,
                      device: str) -> None:
        try:
            result = await awaitable
        except Exception as exc:
            self._handler_failed(topic, props, method, exc)
            return
        finally:
            self.running -= 1
            left = self._per_device.pop(device) - 1
            if left:
                self._per_device[device] = left
        self._reply(topic, props, result, method)

    def _reply(self, topic: str, props: dict | None, result: Any, method: str) -> None:
        d = self._d
        if result is NotImplemented:  # nobody answers this method
            self._error(topic, props, ErrorCode.METHOD_NOT_FOUND, f"unknown method {method!r}")
            return
        try:
            payload = self._encode(result)
        except (TypeError, msgspec.EncodeError) as exc:
            self._error(topic, props, ErrorCode.INTERNAL_ERROR, f"reply is not JSON-serialisable: {exc}")
            return
        if len(payload) > d._max_payload:
            self._error(topic, props, ErrorCode.INTERNAL_ERROR,
                        f"reply is {len(payload)} bytes, over the limit of {d._max_payload}")
            return
        d._transport.publish(topic, payload, d._qos, False, -1, props)

    def _handler_failed(self, topic: str, props: dict | None, method: str, exc: Exception) -> None:
        # A device can make a handler fail as often as it likes: aggregated.
        self._d._rejects.note("client_handler_failed", "handler %r: %.200r", method, exc)
        if isinstance(exc, RemoteError):
            self._error(topic, props, ErrorCode.APPLICATION_ERROR, str(exc))
        else:
            self._error(topic, props, ErrorCode.HANDLER_ERROR, f"{type(exc).__name__}: {exc}")

    def _error(self, topic: str, props: dict | None, code: ErrorCode, message: str) -> None:
        d = self._d
        d.stats.client_errors += 1
        d._transport.publish(topic, error_reply(code, message[:1000]), d._qos, False, -1, props)
