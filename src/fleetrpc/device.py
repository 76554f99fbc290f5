"""The device / agent SDK: answer server-side calls, make client-side calls,
report presence and heartbeats.

    dev = DeviceClient("pump-7", "mqtt://127.0.0.1:1883")

    @dev.method("setGPIO")
    async def set_gpio(params):
        return {"pin": params["pin"], "value": params["value"], "changed": True}

    await dev.connect()
    now = await dev.call("getCurrentTime")

Speaks MQTT 3.1.1 (``version=4``) and 5.  With MQTT 5 it replies to a
request's Response Topic with its Correlation Data when the request has one
and it lies among this device's own replies.  A request that arrives again
with the same id (an at-least-once retry) is answered from a memory of recent
replies without running the handler again; a lightweight request is known by
its node level and request id, and the node level changes at every start of
a server node, so a new call is never answered with an old reply.

Instead of a URL, ``url`` may be a :class:`fleetrpc.transport.memory.MemoryHub`
(anything with ``make_transport(client_id=..., will=...)``): the device then
talks to a dispatcher in the same process, without a network.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import time
from collections import OrderedDict
from typing import Any, Awaitable, Callable

import msgspec

from . import _core
from .errors import CodecError, RemoteError, RpcTimeoutError, ValidationError
from .wire import (
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_PREFIX,
    DeviceTopics,
    ErrorCode,
    Kind,
    RpcRequest,
    as_error,
    error_value,
    own_answer_target,
)

log = logging.getLogger("fleetrpc.device")

MethodHandler = Callable[[Any], Any]


class DeviceClient:
    """One device or agent on its own MQTT connection."""

    def __init__(
        self,
        device_id: str,
        url: Any = "mqtt://127.0.0.1:1883",
        *,
        prefix: str = DEFAULT_PREFIX,
        version: int = 5,
        qos: int = 1,
        ack: bool = True,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
        reply_memory: int = 1024,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        **transport_options: Any,
    ) -> None:
        self._topics = topics = DeviceTopics(prefix, device_id)  # validates both
        self.device_id = device_id
        self.prefix = prefix
        self.qos = qos
        self.ack = ack
        #: Largest payload this device sends or accepts, in bytes.
        self.max_payload = max_payload
        self._presence_topic = topics.presence
        self._encode = msgspec.json.Encoder().encode
        self._codec = _core.Codec(prefix, max_payload)
        self._methods: dict[str, MethodHandler] = {}
        self._replies: OrderedDict[object, bytes] = OrderedDict()  # key -> reply sent
        self._running: dict[object, tuple[str, dict | None]] = {}  # key -> where to reply
        self._reply_memory = reply_memory
        self._calls: dict[int, asyncio.Future] = {}
        self._cids = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()
        self._heartbeat: asyncio.Task | None = None
        self.handled = 0
        self.duplicates = 0
        will = (self._presence_topic, self._encode({"status": "offline"}), 1, True)
        if hasattr(url, "make_transport"):
            self._transport = url.make_transport(client_id=f"dev-{device_id}", will=will)
        else:
            from .transport.mqtt import MqttTransport

            self._transport = MqttTransport(
                url,
                client_id=f"dev-{device_id}",
                version=version,
                keepalive=keepalive,
                username=username,
                password=password,
                will=will,
                **transport_options,
            )
        self._transport.on_message = self._on_message
        self._transport.on_connection = self._on_connection

    # -- registration -------------------------------------------------------

    def method(self, name: str) -> Callable[[MethodHandler], MethodHandler]:
        """Register a handler for server-side calls of ``name``:
        ``handler(params)``, plain or async; its return value is the reply."""

        def register(fn: MethodHandler) -> MethodHandler:
            self._methods[name] = fn
            return fn

        return register

    def add_method(self, name: str, fn: MethodHandler) -> None:
        self._methods[name] = fn

    # -- lifecycle ----------------------------------------------------------

    async def connect(self) -> None:
        """Connect, subscribe, and announce presence (retained "online")."""
        await self._transport.start([(f, self.qos) for f in self._topics.filters()])
        self._announce()

    async def close(self, *, offline: bool = True) -> None:
        """Disconnect; with ``offline`` first publish the retained "offline"."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if offline and self._transport.connected:
            self._transport.publish(self._presence_topic, self._encode({"status": "offline", "ts": _ms()}), 1, True)
            await asyncio.sleep(0.05)
        for task in list(self._tasks):
            task.cancel()
        err = RpcTimeoutError("device client closed")
        for fut in self._calls.values():
            if not fut.done():
                fut.set_exception(err)
        await self._transport.close()

    def kill(self) -> None:
        """Vanish without a goodbye (power loss): the broker publishes this
        device's Last Will, so the platform sees it go offline."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for task in list(self._tasks):
            task.cancel()
        self._transport.abort()

    async def __aenter__(self) -> "DeviceClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._transport.connected

    def _on_connection(self, up: bool) -> None:
        if up:
            self._announce()

    def _announce(self) -> None:
        self._transport.publish(self._presence_topic, self._encode({"status": "online", "ts": _ms()}), 1, True)

    def start_heartbeat(self, interval: float, info: Callable[[], dict] | dict | None = None) -> None:
        """Publish a heartbeat every ``interval`` seconds (start time, OS,
        hardware, whatever ``info`` returns)."""
        started = _ms()

        async def beat() -> None:
            while True:
                body = {"ts": _ms(), "started": started}
                extra = info() if callable(info) else info
                if extra:
                    body.update(extra)
                self._transport.publish(self._topics.heartbeat, self._encode(body), 0, False)
                await asyncio.sleep(interval)

        self._heartbeat = asyncio.ensure_future(beat())

    # -- client-side RPC ----------------------------------------------------

    async def call(self, method: str, params: Any = None, *, timeout: float = 10.0) -> Any:
        """Ask the platform: returns its reply, raises RemoteError when it
        answers with an error object, RpcTimeoutError when it does not
        answer, ValidationError at once when the call cannot be sent (bad
        method, params that are not JSON, over ``max_payload``)."""
        if type(method) is not str or not method:
            raise ValidationError(f"method must be a non-empty string, not {method!r}")
        try:
            body = self._encode(RpcRequest(method, {} if params is None else params))
        except (TypeError, msgspec.EncodeError) as exc:
            raise ValidationError(f"params are not JSON-serialisable: {exc}") from None
        if len(body) > self.max_payload:
            raise ValidationError(
                f"call of {method!r} is {len(body)} bytes, over the limit of {self.max_payload}: not sent"
            )
        cid = next(self._cids)
        fut = asyncio.get_running_loop().create_future()
        self._calls[cid] = fut
        self._transport.publish(self._topics.call(cid), body, self.qos)
        try:
            result = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise RpcTimeoutError(f"platform did not answer {method!r} within {timeout} s") from None
        finally:
            self._calls.pop(cid, None)
        err = as_error(result)
        if err is not None:
            raise RemoteError(f"{err.code}: {err.message}")
        return result

    # -- inbound ------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes, properties: dict | None) -> None:
        try:
            msg = self._codec.decode(topic, payload)
        except CodecError as exc:
            log.warning("device %s dropped a malformed message on %r: %s", self.device_id, topic, exc)
            return
        if msg.kind == Kind.REQUEST:
            self._on_request(msg, properties)
        elif msg.kind == Kind.RETURN:
            fut = self._calls.get(msg.rid)
            if fut is not None and not fut.done():
                try:
                    fut.set_result(msgspec.json.decode(payload))
                except msgspec.DecodeError:
                    fut.set_exception(RemoteError("platform reply is not JSON"))

    def _on_request(self, msg, properties: dict | None) -> None:
        # A persistent call carries its id, the same on every retry and
        # after a server restart; a lightweight one is known by node + rid.
        rpc_id = msg.body.id
        key = rpc_id if rpc_id is not msgspec.UNSET else (msg.node, msg.rid)
        topics = self._topics
        if self.ack:
            self._transport.publish(topics.ack(msg.node, msg.rid), b"", self.qos)
        topic, props, _ = own_answer_target(topics.reply(msg.node, msg.rid), topics.reply_head, properties, 2)
        cached = self._replies.get(key)
        if cached is not None or key in self._running:
            # An at-least-once retry of a request already run (or running):
            # answer the new attempt from memory, never run it twice.
            self.duplicates += 1
            if cached is not None:
                self._transport.publish(topic, cached, self.qos, False, -1, props)
            else:
                self._running[key] = (topic, props)  # the reply goes to the latest attempt
            return
        request = msg.body
        handler = self._methods.get(request.method)
        if handler is None:
            self._send_reply(key, topic, props, error_value(ErrorCode.METHOD_NOT_FOUND, f"unknown method {request.method!r}"))
            return
        try:
            result = handler(request.params)
        except Exception as exc:
            self._send_reply(key, topic, props, error_value(ErrorCode.HANDLER_ERROR, f"{type(exc).__name__}: {exc}"))
            return
        if inspect.isawaitable(result):
            self._running[key] = (topic, props)
            task = asyncio.ensure_future(self._finish(key, result))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._send_reply(key, topic, props, result)

    async def _finish(self, key, awaitable: Awaitable) -> None:
        try:
            result = await awaitable
        except Exception as exc:
            result = error_value(ErrorCode.HANDLER_ERROR, f"{type(exc).__name__}: {exc}")
        topic, props = self._running.pop(key)
        self._send_reply(key, topic, props, result)

    def _send_reply(self, key, topic: str, props, result: Any) -> None:
        self.handled += 1
        try:
            payload = self._encode(result)
        except (TypeError, msgspec.EncodeError) as exc:
            payload = self._encode(error_value(ErrorCode.HANDLER_ERROR, f"reply is not JSON-serialisable: {exc}"))
        self._replies[key] = payload
        if len(self._replies) > self._reply_memory:
            self._replies.popitem(last=False)
        self._transport.publish(topic, payload, self.qos, False, -1, props)

    def publish_raw(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish anything (tests use it to play a misbehaving device)."""
        self._transport.publish(topic, payload, qos, retain)


def _ms() -> int:
    return int(time.time() * 1000)
