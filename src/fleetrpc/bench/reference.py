"""The plain reference dispatcher: what one would write without fleetrpc.

gmqtt for MQTT, ``json.dumps``/``json.loads`` for payloads, one
``asyncio.Future`` plus one ``loop.call_later`` timer per call, and a dict of
futures keyed by request id.  Same topics as fleetrpc (docs/core.md), so the
same simulated devices answer both; ``fleetrpc bench`` runs it beside
:class:`fleetrpc.dispatch.Dispatcher` and prints the ratios.

Minimal, but correct:

* an in-flight window (``window`` calls awaiting their reply at most), so a
  closed loop cannot queue without bound;
* a publish window below the broker's Receive Maximum: gmqtt's ``publish()``
  raises ``OverflowError`` once (receive maximum - 1) QoS 1 publishes are
  unacknowledged and has no queue of its own.  PUBACKs are observed through
  gmqtt's public ``persistent_storage`` hook (it stores every QoS 1 publish
  until its PUBACK), and a publisher waits for a free slot instead;
* a reply is matched by request id *and* device; replies for calls that are
  not pending (late, forged, duplicated) are counted and dropped; a reply
  that is ``{"error": ...}`` raises :class:`RemoteError`, one that is not
  JSON raises :class:`ReplyNotJsonError`;
* subscriptions are renewed after a reconnect without a session (gmqtt does
  not do it, upstream issue #124).

Usage::

    d = ReferenceDispatcher("mqtt://127.0.0.1:1883", node_id="ref", qos=1)
    await d.start()
    result = await d.call("dev-00001", "echo", {"x": 1}, timeout=5)
    await d.close()
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

import gmqtt
from gmqtt.mqtt.constants import MQTTv50, MQTTv311
from gmqtt.storage import PersistentStorage

from ..errors import (
    DispatcherClosedError,
    RemoteError,
    ReplyNotJsonError,
    RpcTimeoutError,
)

__all__ = ["ReferenceDispatcher"]


class _AckWindow(PersistentStorage):
    """gmqtt keeps each QoS 1 publish here until its PUBACK: count them, and
    wake a publisher waiting for a slot when one is acknowledged."""

    def __init__(self) -> None:
        super().__init__()
        self.unacked = 0
        self.limit = 65533
        self._slot_waiters: deque[asyncio.Future] = deque()

    def push_message(self, mid, raw_package):
        if mid not in self._messages:
            self.unacked += 1
        super().push_message(mid, raw_package)

    def remove_message_by_mid(self, mid):
        if mid in self._messages:
            self.unacked -= 1
        super().remove_message_by_mid(mid)
        self._wake()

    def clear(self):
        self.unacked = 0
        super().clear()
        self._wake()

    def _wake(self) -> None:
        waiters = self._slot_waiters
        while waiters and self.unacked < self.limit:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                break

    async def slot(self) -> None:
        while self.unacked >= self.limit:
            fut = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(fut)
            await fut


class ReferenceDispatcher:
    """Two-way and one-way calls over gmqtt with a Future and a timer per call."""

    def __init__(
        self,
        url: str = "mqtt://127.0.0.1:1883",
        *,
        node_id: str = "ref",
        prefix: str = "fleetrpc",
        qos: int = 1,
        window: int = 20_000,
        version: int = 5,
        default_timeout: float = 10.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "tcp"):
            raise ValueError(f"unsupported URL {url!r}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 1883
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self.node_id = node_id
        self.prefix = prefix
        self.qos = qos
        self.version = MQTTv50 if version == 5 else MQTTv311
        self.default_timeout = default_timeout
        self._window = asyncio.Semaphore(window)
        self._ids = itertools.count(1)
        #: rid -> (device, future)
        self._pending: dict[int, tuple[str, asyncio.Future]] = {}
        self._acks = _AckWindow()
        self._client: gmqtt.Client | None = None
        self._connected = asyncio.Event()
        self._filters = [f"{prefix}/d/+/res/{node_id}/+", f"{prefix}/d/+/ack/{node_id}/+"]
        self._closed = False
        self.stats = {"calls": 0, "replies": 0, "acks": 0, "timeouts": 0, "unknown": 0, "malformed": 0}

    # -- life ---------------------------------------------------------------

    async def start(self) -> None:
        client = gmqtt.Client(f"ref-{node_id_safe(self.node_id)}-{uuid.uuid4().hex[:8]}",
                              persistent_storage=self._acks)
        if self._username:
            client.set_auth_credentials(self._username, self._password)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = lambda *a: self._connected.set()
        self._client = client
        await client.connect(self.host, self.port, version=self.version)
        await asyncio.wait_for(self._connected.wait(), 10)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        pending, self._pending = self._pending, {}
        for _, fut in pending.values():
            if not fut.done():
                fut.set_exception(DispatcherClosedError("reference dispatcher closed"))
        if self._client is not None:
            await self._client.disconnect()

    # -- gmqtt callbacks ------------------------------------------------------

    def _on_connect(self, client, flags, rc, properties) -> None:
        values = properties.get("receive_maximum")
        receive_max = values[0] if values else 65535
        # gmqtt raises OverflowError at (receive maximum - 1) unacked ids.
        self._acks.limit = max(1, receive_max - 2)
        if flags:  # the session kept our subscriptions
            self._connected.set()
        elif client.subscriptions:
            for sub in client.subscriptions:
                client.resubscribe(sub)
        else:
            client.subscribe([gmqtt.Subscription(t, qos=self.qos) for t in self._filters])

    def _on_message(self, client, topic, payload, qos, properties):
        # {prefix}/d/{device}/{res|ack}/{node}/{rid}; the prefix may have levels
        levels = topic.rsplit("/", 4)
        if len(levels) != 5:
            self.stats["malformed"] += 1
            return 0
        _, device, kind, _node, srid = levels  # our own node: we subscribed to it only
        try:
            rid = int(srid)
        except ValueError:
            self.stats["malformed"] += 1
            return 0
        if kind == "ack":
            self.stats["acks"] += 1
            return 0
        entry = self._pending.get(rid)
        if entry is None or entry[0] != device or entry[1].done():
            self.stats["unknown"] += 1
            return 0
        del self._pending[rid]
        fut = entry[1]
        self.stats["replies"] += 1
        try:
            body = json.loads(payload)
        except ValueError as exc:
            fut.set_exception(ReplyNotJsonError(f"reply of device {device!r} is not JSON: {exc}"))
            return 0
        if isinstance(body, dict) and "error" in body:
            fut.set_exception(RemoteError(json.dumps(body["error"])))
        else:
            fut.set_result(body)
        return 0

    # -- calls ----------------------------------------------------------------

    async def _publish(self, topic: str, payload: bytes) -> None:
        if self.qos:
            acks = self._acks
            if acks.unacked >= acks.limit:
                await acks.slot()
        self._client.publish(topic, payload, qos=self.qos)

    async def call(
        self,
        device: str,
        method: str,
        params: Any = None,
        *,
        timeout: float | None = None,
        oneway: bool = False,
    ) -> Any:
        """Call ``method`` on ``device``; returns its reply (None if one-way)."""
        if self._closed:
            raise DispatcherClosedError("reference dispatcher closed")
        self.stats["calls"] += 1
        rid = next(self._ids)
        topic = f"{self.prefix}/d/{device}/req/{self.node_id}/{rid}"
        payload = json.dumps({"method": method, "params": {} if params is None else params}).encode()
        if oneway:
            await self._publish(topic, payload)
            return None
        async with self._window:
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            self._pending[rid] = (device, fut)
            timer = loop.call_later(self.default_timeout if timeout is None else timeout,
                                    self._expire, rid)
            try:
                await self._publish(topic, payload)
                return await fut
            finally:
                timer.cancel()
                self._pending.pop(rid, None)

    def _expire(self, rid: int) -> None:
        entry = self._pending.pop(rid, None)
        if entry is not None and not entry[1].done():
            self.stats["timeouts"] += 1
            entry[1].set_exception(RpcTimeoutError(f"device {entry[0]!r} did not answer request {rid} in time"))


def node_id_safe(node_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in node_id)[:40]
