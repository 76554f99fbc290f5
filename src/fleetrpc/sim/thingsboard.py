"""A device running firmware written for ThingsBoard, unchanged.

It does what ThingsBoard's device MQTT API asks of firmware and nothing
else: it logs in with its access token as the MQTT user name, subscribes
``v1/devices/me/rpc/request/+``, answers each server-side call on
``v1/devices/me/rpc/response/{id}``, and makes client-side calls on
``v1/devices/me/rpc/request/{n}``, awaiting the answer on
``v1/devices/me/rpc/response/{n}``.  A plain broker cannot route these
topics (every device uses the same ones); fleetrpc's device endpoint can
(docs/endpoint.md).  The demo connects a few such devices to it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import msgspec

from ..transport.endpoint.session import REQUEST_TOPIC, RESPONSE_TOPIC, V1
from .leanmqtt import LeanClient

__all__ = ["ThingsBoardDevice"]

# ThingsBoard's topics as the endpoint serves them (one place for them)
REQUEST = REQUEST_TOPIC[V1]
RESPONSE = RESPONSE_TOPIC[V1]


class _Request(msgspec.Struct):
    method: str
    params: Any = None


_decode_request = msgspec.json.Decoder(_Request).decode
_encode = msgspec.json.Encoder().encode


class ThingsBoardDevice:
    """``handlers`` maps a method name to ``fn(params) -> result``; a method
    not in it is answered ``{"error": "unknown method ..."}``, as ThingsBoard
    firmware commonly does (ThingsBoard itself defines no error form)."""

    def __init__(self, token: str, handlers: dict[str, Callable[[Any], Any]], *, client_id: str = "") -> None:
        self.token = token
        self.handlers = handlers
        self.client = LeanClient(client_id or f"tb-{token[:12]}", username=token, on_message=self._on_message)
        self._numbers = itertools.count(1)
        self._answers: dict[str, asyncio.Future] = {}
        #: server-side calls received, by method
        self.received: list[str] = []

    async def connect(self, host: str, port: int) -> None:
        await self.client.connect(host, port)
        await self.client.subscribe((REQUEST + "+", 1), (RESPONSE + "+", 1))

    async def close(self) -> None:
        await self.client.disconnect()

    async def call(self, method: str, params: Any = None, *, timeout: float = 10.0) -> Any:
        """A client-side call: the platform answers."""
        n = str(next(self._numbers))
        future = self._answers[n] = asyncio.get_running_loop().create_future()
        try:
            self.client.publish(REQUEST + n, _encode({"method": method, "params": params}), 1)
            return msgspec.json.decode(await asyncio.wait_for(future, timeout))
        finally:
            self._answers.pop(n, None)

    def _on_message(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if topic.startswith(RESPONSE):
            future = self._answers.get(topic[len(RESPONSE):])
            if future is not None and not future.done():
                future.set_result(payload)
        elif topic.startswith(REQUEST):
            try:
                request = _decode_request(payload)
            except msgspec.DecodeError:
                return  # firmware ignores what it cannot read
            self.received.append(request.method)
            handler = self.handlers.get(request.method)
            try:
                result = handler(request.params) if handler is not None else {
                    "error": f"unknown method {request.method!r}"}
            except Exception as exc:  # noqa: BLE001 - firmware answers, it does not crash
                result = {"error": f"{type(exc).__name__}: {exc}"}
            self.client.publish(RESPONSE + topic[len(REQUEST):], _encode(result), 1)
