"""Events: every server-side call accepted through the REST API
(``RPC_CALL_FROM_SERVER_TO_DEVICE``), every persistent-RPC status change
(``RPC_QUEUED`` ... ``RPC_DELETED``, the body is the whole record in
ThingsBoard's shape) and every client-side call (``TO_SERVER_RPC_REQUEST``),
delivered to sinks.

Sinks: Python hooks, an MQTT topic, an HTTP webhook with retries.  Each sink
has its own bounded buffer and worker, so a failing or slow sink never
blocks dispatch nor the other sinks; when its buffer is full the oldest
event is dropped and counted (``sink.dropped``), never lost silently.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from typing import Any, Callable

import msgspec

from .rpc.status import RPC_CALL_FROM_SERVER_TO_DEVICE, TO_SERVER_RPC_REQUEST, RpcStatus, event_type

log = logging.getLogger("fleetrpc.events")

#: Event types, as ThingsBoard names its rule-engine messages.
EVENT_TYPES = (RPC_CALL_FROM_SERVER_TO_DEVICE,) + tuple(event_type(s) for s in RpcStatus) + (TO_SERVER_RPC_REQUEST,)


class Event(msgspec.Struct, frozen=True):
    """One event: its type, when (epoch ms) and its body."""

    type: str
    ts: int
    body: dict


class Sink:
    """Base of every sink: a bounded buffer drained by one worker task."""

    def __init__(self, *, buffer: int = 10_000, name: str | None = None) -> None:
        self.name = name or type(self).__name__
        self.buffer = buffer
        self.delivered = 0
        self.dropped = 0
        self.failed = 0
        self._queue: deque[Event] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def offer(self, event: Event) -> None:
        if len(self._queue) >= self.buffer:
            self._queue.popleft()
            self.dropped += 1
            if self.dropped in (1, 10, 100, 1000) or self.dropped % 10_000 == 0:
                log.warning("event sink %s is behind: %d events dropped so far", self.name, self.dropped)
        self._queue.append(event)
        if self._wakeup is not None:
            self._wakeup.set()

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    async def close(self, timeout: float = 2.0) -> None:
        """Deliver what is buffered (up to ``timeout``), then stop."""
        end = time.monotonic() + timeout
        while self._queue and time.monotonic() < end and self._task and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = list(self._queue)
            self._queue.clear()
            try:
                await self.deliver(batch)
                self.delivered += len(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failed += len(batch)
                log.exception("event sink %s failed to deliver %d events", self.name, len(batch))

    async def deliver(self, events: list[Event]) -> None:
        raise NotImplementedError


#: Seconds between two log lines of one failing hook.
HOOK_LOG_INTERVAL = 10.0


class HookSink(Sink):
    """Calls ``hook(event)`` (plain or async) for every event.

    A hook that fails is counted (``failed``) each time and logged, with
    its traceback, at most once per :data:`HOOK_LOG_INTERVAL`: events come
    from devices, and a hook that cannot handle what one sends would
    otherwise write an ERROR per message."""

    def __init__(self, hook: Callable[[Event], Any], **kw: Any) -> None:
        super().__init__(name=kw.pop("name", getattr(hook, "__name__", "hook")), **kw)
        self.hook = hook
        self._quiet_until = -1.0
        self._unlogged = 0

    async def deliver(self, events: list[Event]) -> None:
        for event in events:
            try:
                res = self.hook(event)
                if inspect.isawaitable(res):
                    await res
            except Exception as exc:
                self._failed(event, exc)

    def _failed(self, event: Event, exc: Exception) -> None:
        self.failed += 1
        now = time.monotonic()
        if now < self._quiet_until:
            self._unlogged += 1
            return
        more, self._unlogged = self._unlogged, 0
        self._quiet_until = now + HOOK_LOG_INTERVAL
        log.error("event hook %s failed on %s%s", self.name, event.type,
                  f" (and {more} times more since its last line)" if more else "", exc_info=exc)


class MqttSink(Sink):
    """Publishes each event as JSON on ``{topic}/{type}`` through
    ``publish(topic, payload, qos=...)``: a :meth:`Dispatcher.publish`."""

    def __init__(self, publish: Callable[..., None], topic: str = "fleetrpc/events", qos: int = 1, **kw: Any) -> None:
        super().__init__(**kw)
        self._publish = publish
        self.topic = topic.rstrip("/")
        self.qos = qos
        self._encode = msgspec.json.Encoder().encode

    async def deliver(self, events: list[Event]) -> None:
        for event in events:
            self._publish(f"{self.topic}/{event.type}", self._encode(event), qos=self.qos)


class WebhookSink(Sink):
    """POSTs batches of events as a JSON array to ``url``; retries with
    back-off (``retries`` times) before counting them as failed."""

    def __init__(self, url: str, *, retries: int = 5, timeout: float = 5.0, headers: dict | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.url = url
        self.retries = retries
        self.timeout = timeout
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self._session = None
        self._encode = msgspec.json.Encoder().encode

    async def deliver(self, events: list[Event]) -> None:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        body = self._encode(events)
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                async with self._session.post(self.url, data=body, headers=self.headers) as resp:
                    if resp.status < 300:
                        return
                    err = f"HTTP {resp.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                err = repr(exc)
            if attempt < self.retries:
                log.info("webhook %s: %s; retry %d in %.1f s", self.url, err, attempt + 1, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        raise ConnectionError(f"webhook {self.url} failed after {self.retries + 1} attempts: {err}")

    async def close(self, timeout: float = 2.0) -> None:
        await super().close(timeout)
        if self._session is not None:
            await self._session.close()


class EventBus:
    """Fans events out to sinks without ever blocking the caller."""

    def __init__(self) -> None:
        self.sinks: list[Sink] = []
        self._started = False

    def add(self, sink: Sink | Callable[[Event], Any]) -> Sink:
        if not isinstance(sink, Sink):
            sink = HookSink(sink)
        self.sinks.append(sink)
        if self._started:
            sink.start()
        return sink

    def start(self) -> None:
        self._started = True
        for sink in self.sinks:
            sink.start()

    def emit(self, type_: str, body: dict) -> None:
        if not self.sinks:
            return
        event = Event(type_, int(time.time() * 1000), body)
        for sink in self.sinks:
            sink.offer(event)

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.sinks), return_exceptions=True)

    @property
    def dropped(self) -> int:
        return sum(s.dropped for s in self.sinks)


def forward_client_calls(bus: EventBus, dispatcher: Any) -> None:
    """Emit ``TO_SERVER_RPC_REQUEST`` on ``bus`` for every client-side call
    the dispatcher receives (ThingsBoard's rule-engine message type)."""

    def hook(event: Any) -> None:
        if event.type == TO_SERVER_RPC_REQUEST:
            detail = event.detail or {}
            bus.emit(TO_SERVER_RPC_REQUEST, {
                "deviceId": {"entityType": "DEVICE", "id": event.device},
                "requestId": event.rid,
                "method": detail.get("method"),
                "params": detail.get("params"),
            })

    dispatcher.on_status(hook)
