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

__all__ = ["ThingsBoardDevice", "ThingsBoardHttpDevice"]

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


class ThingsBoardHttpDevice:
    """The same firmware over ThingsBoard's HTTP device API: it long-polls
    ``GET /api/v1/{token}/rpc`` for server-side calls, answers each with
    ``POST /api/v1/{token}/rpc/{id}``, and calls the platform with ``POST
    /api/v1/{token}/rpc``.  ``handlers`` as :class:`ThingsBoardDevice`'s."""

    def __init__(self, base_url: str, token: str, handlers: dict[str, Callable[[Any], Any]], *,
                 poll_ms: int = 20_000) -> None:
        self.api = f"{base_url.rstrip('/')}/api/v1/{token}/rpc"
        self.handlers = handlers
        self.poll_ms = poll_ms
        self.received: list[str] = []
        self._session: Any = None
        self._poller: asyncio.Task | None = None

    async def connect(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession()
        self._poller = asyncio.ensure_future(self._poll())

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def call(self, method: str, params: Any = None, *, timeout: float = 10.0) -> Any:
        """A client-side call: the platform answers in the response."""
        async with self._session.post(self.api, data=_encode({"method": method, "params": params}),
                                      headers={"Content-Type": "application/json"}, timeout=timeout) as r:
            r.raise_for_status()
            return msgspec.json.decode(await r.read())

    async def _poll(self) -> None:
        import aiohttp

        while True:
            try:
                async with self._session.get(self.api, params={"timeout": str(self.poll_ms)}) as r:
                    if r.status == 408:
                        continue  # nothing came: poll again
                    r.raise_for_status()
                    body = await r.read()
                await self._answer(msgspec.json.decode(body))
            except (aiohttp.ClientError, asyncio.TimeoutError, msgspec.DecodeError):
                await asyncio.sleep(1.0)  # the server restarts, or said something odd: poll again later

    async def _answer(self, request: dict) -> None:
        method = request.get("method")
        self.received.append(method)
        handler = self.handlers.get(method)
        try:
            result = handler(request.get("params")) if handler is not None else {
                "error": f"unknown method {method!r}"}
        except Exception as exc:  # noqa: BLE001 - firmware answers, it does not crash
            result = {"error": f"{type(exc).__name__}: {exc}"}
        async with self._session.post(f"{self.api}/{request['id']}", data=_encode(result),
                                      headers={"Content-Type": "application/json"}) as r:
            await r.read()
