"""The limit: the least a dispatcher can do, to show what the broker and
the machine allow.

:class:`LimitDispatcher` frames MQTT (the simulator's lean client: batched
writes, no properties, no storage) and matches each reply to its call in a
dict by request id.  Nothing else: no validation of devices, methods or
replies (a reply's payload is returned as raw bytes), no timeouts, no
delivery strategies, no in-flight window, no reconnect.  A call whose reply
never comes waits until :meth:`close`.  Its round trips per second are what
the broker, the simulated fleet and this machine allow; ``fleetrpc bench``
reports fleetrpc's throughput as a fraction of it (``of_limit``).
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import msgspec

from ..errors import DispatcherClosedError
from ..sim.leanmqtt import LeanClient, parse_url

__all__ = ["LimitDispatcher"]


class LimitDispatcher:
    """Calls over one lean MQTT connection; a dict of futures by request id."""

    def __init__(self, url: str, *, node_id: str = "limit", prefix: str = "fleetrpc", qos: int = 1) -> None:
        self.host, self.port, self._username, self._password = parse_url(url)
        self.node_id = node_id
        self.prefix = prefix
        self.qos = qos
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._encode = msgspec.json.Encoder().encode
        self._req = f"{prefix}/d/{{}}/req/{node_id}/{{}}"
        self._client: LeanClient | None = None
        self.stats = {"calls": 0, "replies": 0, "unknown": 0}

    async def start(self) -> None:
        client = LeanClient(f"limit-{uuid.uuid4().hex[:12]}", on_message=self._on_message,
                            username=self._username, password=self._password)
        await client.connect(self.host, self.port)
        await client.subscribe(f"{self.prefix}/d/+/res/{self.node_id}/+", qos=self.qos)
        self._client = client

    async def close(self) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(DispatcherClosedError("limit dispatcher closed"))
        if self._client is not None:
            await self._client.disconnect()
            self._client = None

    def _on_message(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        # .../res/{node}/{rid}: the request id is the last level.
        fut = self._pending.pop(int(topic[topic.rfind("/") + 1:]), None)
        if fut is None:
            self.stats["unknown"] += 1
            return
        self.stats["replies"] += 1
        if not fut.done():
            fut.set_result(payload)

    async def call(self, device: str, method: str, params: Any = None, *, timeout: float | None = None,
                   oneway: bool = False) -> Any:
        """Publish the request; await the raw reply (``timeout`` is ignored)."""
        rid = next(self._ids)
        self.stats["calls"] += 1
        payload = self._encode({"method": method, "params": {} if params is None else params})
        if oneway:
            self._client.publish(self._req.format(device, rid), payload, self.qos)  # type: ignore[union-attr]
            return None
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self._client.publish(self._req.format(device, rid), payload, self.qos)  # type: ignore[union-attr]
        return await fut
