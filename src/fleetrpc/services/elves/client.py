"""An Elves app's side of MQTT: send envelopes, get the replies.

    async with ElvesClient("deploy", "mqtt://broker:1883", key=auth_key) as app:
        reply = await app.call("scheduler", "sendSync", agentip="10.0.0.5",
                               ins={"app": "deploy", "func": "ping", "param": ""})

Calls go to ``{p}/elves/{app}/call/{cid}``; replies are read from
``{p}/elves/{app}/back/{cid}``.  A reply that says ``"mqt": "call"`` (the
seed's cron replies do) is taken as the answer all the same.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import msgspec

from ..._core.constants import DEFAULT_PREFIX
from ...errors import RpcTimeoutError
from ...wire import validate_id
from ...transport.mqtt import MqttTransport

__all__ = ["ElvesClient"]


class ElvesClient:
    """One Elves app on its own MQTT connection."""

    def __init__(
        self,
        app: str,
        url: str = "mqtt://127.0.0.1:1883",
        *,
        key: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        qos: int = 1,
        version: int = 5,
        **transport_options: Any,
    ) -> None:
        validate_id("app", app)
        self.app = app
        self.key = key
        self.prefix = prefix
        self.qos = qos
        self._base = f"{prefix}/elves/{app}"
        self._cids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder().decode
        self._transport = MqttTransport(url, client_id=f"elves-app-{app}-{id(self):x}", version=version, **transport_options)
        self._transport.on_message = self._on_message

    async def connect(self) -> None:
        await self._transport.start([(f"{self._base}/back/#", self.qos)])

    async def close(self) -> None:
        for fut in self._waiting.values():
            if not fut.done():
                fut.cancel()
        await self._transport.close()

    async def __aenter__(self) -> "ElvesClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def call(self, mqs: str, mqf: str, *, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        """Send ``{"mqt": "call", "mqs", "mqf", "key"?, **args}``; return the
        reply.  The app's key goes as ``key`` (``auth_key`` when ``args``
        has a ``key`` of its own)."""
        body = {"mqt": "call", "mqs": mqs, "mqf": mqf}
        if self.key is not None:
            # "key" is an argument of some functions (getAuthByKey): then
            # the credential goes as auth_key, which the server reads first.
            body["auth_key" if "key" in args else "key"] = self.key
        body.update(args)
        return await self.send_raw(self._encode(body), timeout=timeout)

    async def send_raw(self, payload: bytes, *, timeout: float = 30.0) -> Any:
        """Publish any payload as a call; return the reply (tests use it
        to send malformed envelopes)."""
        cid = next(self._cids)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[cid] = fut
        self._transport.publish(f"{self._base}/call/{cid}", payload, self.qos)
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise RpcTimeoutError(f"no Elves reply within {timeout} s") from None
        finally:
            self._waiting.pop(cid, None)

    def _on_message(self, topic: str, payload: bytes, properties: dict | None) -> None:
        rest = topic[len(self._base) + 1:]
        if not rest.startswith("back/"):
            return
        try:
            cid = int(rest[5:])
        except ValueError:
            return
        fut = self._waiting.get(cid)
        if fut is None or fut.done():
            return
        try:
            reply = self._decode(payload)
        except msgspec.DecodeError as exc:
            fut.set_exception(ValueError(f"Elves reply is not JSON: {exc}"))
            return
        if isinstance(reply, dict) and reply.get("mqt") in ("back", "call"):
            fut.set_result(reply)
        else:
            fut.set_exception(ValueError(f"not an Elves reply: {reply!r:.200}"))
