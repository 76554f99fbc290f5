"""Events: every server-side call accepted through the REST API
(``RPC_CALL_FROM_SERVER_TO_DEVICE``), every persistent-RPC status change
(``RPC_QUEUED`` ... ``RPC_DELETED``, the body is the whole record in
ThingsBoard's shape) and every client-side call (``TO_SERVER_RPC_REQUEST``),
delivered to sinks.

Sinks: Python hooks, an MQTT topic, an HTTP webhook with retries.  Each sink
has its own bounded buffer and worker, so a failing or slow sink never
blocks dispatch nor the other sinks; when its buffer is full the oldest
event is dropped and counted (``sink.dropped``), never lost silently.

A buffer is bounded in events (``buffer``) and in bytes (``buffer_bytes``,
each event counted as the size of its JSON): a call's params may be as
large as a request body, and 10,000 of them behind a stalled webhook would
otherwise hold gigabytes.  A worker delivers at most ``MAX_BATCH`` events
and about ``MAX_BATCH_BYTES`` at a time: one webhook POST stays under the
request-size limit of a common receiver (aiohttp's 1 MiB) however far
behind the sink is.
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


#: Most events one delivery (one webhook POST) carries.
MAX_BATCH = 500
#: About the most bytes of events one delivery carries (at least one event).
MAX_BATCH_BYTES = 512 * 1024

_encode = msgspec.json.Encoder().encode


def event_size(event: Event) -> int:
    """What ``event`` counts against a sink's ``buffer_bytes``: the size
    of its body as JSON (what a webhook or MQTT sink sends, give or take
    its type and time); a body that is not JSON counts 1 KiB."""
    try:
        return len(_encode(event.body)) + 48
    except (TypeError, msgspec.EncodeError):
        return 1024


class Sink:
    """Base of every sink: a bounded buffer drained by one worker task."""

    def __init__(self, *, buffer: int = 10_000, buffer_bytes: int = 64 << 20, name: str | None = None) -> None:
        if buffer < 1 or buffer_bytes < 1:
            raise ValueError("buffer and buffer_bytes must be at least 1")
        self.name = name or type(self).__name__
        self.buffer = buffer
        self.buffer_bytes = buffer_bytes
        self.delivered = 0
        self.dropped = 0
        self.failed = 0
        #: (event, its size), oldest first; ``_bytes`` is the sum of the sizes
        self._queue: deque[tuple[Event, int]] = deque()
        self._bytes = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def offer(self, event: Event, size: int | None = None) -> None:
        """Buffer ``event`` (``size``: its :func:`event_size`, when the
        caller knows it), dropping the oldest beyond the bounds; an event
        larger than ``buffer_bytes`` by itself is dropped."""
        if size is None:
            size = event_size(event)
        queue = self._queue
        if size > self.buffer_bytes:
            self._dropped(1)
            return
        dropped = 0
        while queue and (len(queue) >= self.buffer or self._bytes + size > self.buffer_bytes):
            self._bytes -= queue.popleft()[1]
            dropped += 1
        if dropped:
            self._dropped(dropped)
        queue.append((event, size))
        self._bytes += size
        if self._wakeup is not None:
            self._wakeup.set()

    @property
    def pending(self) -> int:
        """Events buffered, not yet delivered."""
        return len(self._queue)

    @property
    def pending_bytes(self) -> int:
        """Their size, as :func:`event_size` counts it."""
        return self._bytes

    def _dropped(self, n: int) -> None:
        before, self.dropped = self.dropped, self.dropped + n
        # at 1, 10, 100, 1000, then every 10,000
        if any(before < mark <= self.dropped for mark in (1, 10, 100, 1000)) \
                or before // 10_000 != self.dropped // 10_000:
            log.warning("event sink %s is behind: %d events dropped so far", self.name, self.dropped)

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
            batch = self._take()
            try:
                await self.deliver(batch)
                self.delivered += len(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failed += len(batch)
                log.exception("event sink %s failed to deliver %d events", self.name, len(batch))

    def _take(self) -> list[Event]:
        """The oldest events, at most :data:`MAX_BATCH` and about
        :data:`MAX_BATCH_BYTES` (at least one)."""
        queue, batch, taken = self._queue, [], 0
        while queue and len(batch) < MAX_BATCH and (not batch or taken + queue[0][1] <= MAX_BATCH_BYTES):
            event, size = queue.popleft()
            batch.append(event)
            taken += size
        self._bytes -= taken
        return batch

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
        size = event_size(event)
        for sink in self.sinks:
            sink.offer(event, size)

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
