"""The dispatch engine: calls out, replies in, deadlines, client-side handlers.

Outbound: a call is validated, gets a pending entry (request id, deadline in
the timing wheel, its completion), joins its device's queue under the
device's delivery strategy and, when released, is encoded and published.

Inbound: the transport hands ``(topic, payload)`` to the codec; a reply finds
its pending entry, which cancels its deadline, completes the caller and
releases the device's next call.

Time: one timer per dispatcher advances the wheel while anything is pending;
there is no per-call ``loop.call_later``.

A completion is what finishes a call: an ``asyncio.Future`` when a caller
awaits it, a :class:`Broadcast` shared by every call of a fan-out, or any
callable ``completion(rid, device, result, error)`` (the persistent-RPC
lifecycle uses that).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

import msgspec

from . import _core
from ._core.constants import DeliveryStrategy, Kind
from .config import Settings
from .protocol import answer_target, error_reply, server_filters, validate_id
from .errors import (
    CodecError,
    DeviceOfflineError,
    DispatcherClosedError,
    QueueFullError,
    RemoteError,
    ReplyNotJsonError,
    RpcTimeoutError,
    ValidationError,
)

log = logging.getLogger("fleetrpc.dispatcher")

# Bits of a pending entry's flags.
SENT = 1          # published (holds a slot of the global window)
ACKED = 2         # the device acknowledged delivery
ONEWAY = 4        # no reply expected: done when the broker has it
DEFERRED = 8      # released by its device queue, waiting for the global window
OBSERVED = 16     # the completion is a CallObserver: told when sent and acked

# ---------------------------------------------------------------------------
# status events (lightweight calls; persistent RPC adds its own records)


class StatusEvent(msgspec.Struct, frozen=True, gc=False):
    """A lightweight call changed status: SENT, DELIVERED, SUCCESSFUL,
    TIMEOUT, FAILED; or TO_SERVER_RPC_REQUEST for a client-side call."""

    type: str
    rid: int
    device: str
    ts: float
    detail: Any = None


class CallObserver:
    """A completion that also wants to know when its call is published and
    when the device acknowledged it (the persistent-RPC lifecycle)."""

    def sent(self, rid: int, device: str) -> None:
        """The request was handed to the broker connection."""

    def acked(self, rid: int, device: str) -> bool:
        """The device acknowledged delivery; return True if that ends the
        call (a persistent one-way call ends at DELIVERED)."""
        return False

    def __call__(self, rid: int, device: str, result: Any, error: BaseException | None) -> None:
        """The call ended: ``result`` or ``error`` (RpcTimeoutError, ...)."""


# ---------------------------------------------------------------------------
# fan-out


class Outcome(msgspec.Struct, frozen=True, gc=False):
    """What one device of a broadcast answered."""

    device: str
    ok: bool
    result: Any = None
    error: BaseException | None = None


class BroadcastSummary(msgspec.Struct, frozen=True):
    """The aggregate of a broadcast once every device has an outcome."""

    total: int
    succeeded: int
    failed: int
    timed_out: int
    offline: int
    elapsed: float
    outcomes: list[Outcome]

    @property
    def results(self) -> dict[str, Any]:
        return {o.device: o.result for o in self.outcomes if o.ok}


class Broadcast:
    """One call to many devices.

    Iterate it (``async for outcome in bc``) to get outcomes as they arrive,
    or ``await bc.wait()`` for the :class:`BroadcastSummary`.  It is the one
    completion shared by all its calls: no Future per device.
    """

    def __init__(self, total: int, loop: asyncio.AbstractEventLoop) -> None:
        self.total = total
        self.done = 0
        self.succeeded = 0
        self.timed_out = 0
        self.offline = 0
        self._outcomes: list[Outcome] = []
        self._read = 0
        self._loop = loop
        self._waiter: asyncio.Future | None = None
        self._started = time.perf_counter()
        self._elapsed: float | None = None

    def _record(self, device: str, ok: bool, result: Any, error: BaseException | None) -> None:
        self._outcomes.append(Outcome(device, ok, result, error))
        self.done += 1
        if ok:
            self.succeeded += 1
        elif isinstance(error, RpcTimeoutError):
            self.timed_out += 1
        elif isinstance(error, DeviceOfflineError):
            self.offline += 1
        if self.done >= self.total and self._elapsed is None:
            self._elapsed = time.perf_counter() - self._started
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __call__(self, rid: int, device: str, result: Any, error: BaseException | None) -> None:
        self._record(device, error is None, result, error)

    @property
    def progress(self) -> float:
        return self.done / self.total if self.total else 1.0

    def __aiter__(self) -> AsyncIterator[Outcome]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Outcome]:
        while True:
            while self._read < len(self._outcomes):
                self._read += 1
                yield self._outcomes[self._read - 1]
            if self.done >= self.total:
                return
            self._waiter = self._loop.create_future()
            await self._waiter
            self._waiter = None

    async def wait(self) -> BroadcastSummary:
        while self.done < self.total:
            self._waiter = self._loop.create_future()
            await self._waiter
            self._waiter = None
        return BroadcastSummary(
            total=self.total,
            succeeded=self.succeeded,
            failed=self.total - self.succeeded,
            timed_out=self.timed_out,
            offline=self.offline,
            elapsed=self._elapsed or 0.0,
            outcomes=list(self._outcomes),
        )


# ---------------------------------------------------------------------------
# the dispatcher


class Counters:
    """Named integer counters (cheap attribute increments); subclasses list
    their names in ``__slots__``."""

    __slots__ = ()

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.as_dict()})"


class Stats(Counters):
    """Counters of one dispatcher."""

    __slots__ = (
        "calls", "sent", "replies", "acks", "timeouts", "offline_rejected",
        "queue_full", "malformed", "unknown_request", "wrong_device",
        "not_json", "client_calls", "client_errors", "presence", "heartbeats",
        "elves",
    )


class DeviceInfo(msgspec.Struct):
    """What presence and heartbeats told about a device."""

    online: bool
    since: float
    heartbeat: dict | None = None


Handler = Callable[[str, Any], Any]


class Dispatcher:
    """Sends RPCs to devices and agents over MQTT and brings their answers back.

    ``transport`` defaults to an MQTT connection built from ``settings``;
    anything with the same small interface (see ``transport/mqtt.py``) works.
    """

    def __init__(self, settings: Settings | None = None, *, transport: Any = None) -> None:
        self.settings = s = settings or Settings()
        self.node_id = s.node_id
        self.stats = Stats()
        self._transport = transport
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._closed = False
        self._qos = s.qos
        # ThingsBoard raises short timeouts to the minimum; the default too.
        self._default_timeout = max(s.default_timeout, s.min_timeout)
        self._min_timeout = s.min_timeout
        self._presence = s.presence
        self._window = s.inflight_window
        self._inflight = 0
        self._req_prefix = f"{s.prefix}/d/"
        self._req_suffix = f"/req/{s.node_id}/"
        self._res_suffix = f"/res/{s.node_id}/"
        self._mqtt5_props = s.mqtt_version == 5 and s.response_topic
        self._Future = None  # the loop's Future class, for a fast type check
        self._codec = _core.Codec(s.prefix, s.max_payload)
        self._encode_request = self._codec.encode_request
        self._encode = msgspec.json.Encoder().encode
        self._queues = _core.DeviceQueues(s.strategy, s.queue_cap, s.device_window, True)
        self._wheel = None
        self._pending = None
        self._timer: asyncio.TimerHandle | None = None
        self._held: dict[int, bytes] = {}        # rid -> encoded request not yet sent
        self._deferred: deque[int] = deque()     # released rids waiting for the window
        self._devices: dict[str, DeviceInfo] = {}
        self._online: set[str] = set()
        self._handlers: dict[str, Handler] = {}
        self._hooks: list[Callable[[StatusEvent], Any]] = []
        self._presence_hooks: list[Callable[[str, bool], Any]] = []
        self._message_hooks: dict[int, Callable] = {}
        self._tasks: set[asyncio.Task] = set()

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Connect to the broker and subscribe; returns when ready to call."""
        if self._running:
            return
        if self._closed:
            raise DispatcherClosedError("dispatcher is closed")
        self._loop = asyncio.get_running_loop()
        self._Future = type(self._loop.create_future())
        self._wheel = _core.TimingWheel(self.settings.tick_ms / 1000.0, self._loop.time())
        self._pending = _core.PendingTable(self._wheel)
        if self._transport is None:
            self._transport = self._make_transport()
        t = self._transport
        t.on_message = self._on_message
        t.on_published = self._on_published
        t.on_connection = self._on_connection
        # Sent calls, not pending ones: calls held for offline devices await nothing.
        t.awaiting = lambda: self._inflight
        self._running = True
        await t.start(self._filters())

    def _make_transport(self):
        from .transport.mqtt import MqttTransport

        s = self.settings
        return MqttTransport(
            s.mqtt_url,
            client_id=f"fleetrpc-{s.node_id}",
            version=s.mqtt_version,
            keepalive=s.mqtt_keepalive,
            username=s.mqtt_username,
            password=s.mqtt_password,
            tls=s.mqtt_tls or None,
            tls_ca=s.mqtt_tls_ca,
            tls_cert=s.mqtt_tls_cert,
            tls_key=s.mqtt_tls_key,
            tls_insecure=s.mqtt_tls_insecure,
            reconnect_delay=s.reconnect_delay,
            reconnect_max=s.reconnect_max,
            read_batch_above=s.read_batch_above,
            read_batch_delay=s.read_batch_ms / 1000.0,
        )

    def _filters(self) -> list[tuple[str, int]]:
        s = self.settings
        filters = server_filters(s.prefix, s.node_id, s.share_group)
        if not self._presence:
            filters = [f for f in filters if not f.endswith(("/presence", "/hb"))]
        # Presence at QoS 0: on subscribing, a broker with default settings
        # (Mosquitto: 20 in flight, 1000 queued) hands a QoS 1 subscriber only
        # ~1000 of the retained presence messages and drops the rest; at QoS 0
        # all of them arrive (measured: 1085 vs 1782 of 1782).
        return [(f, 0 if f.endswith("/presence") else s.qos) for f in filters]

    async def close(self) -> None:
        """Fail every pending call with DispatcherClosedError and disconnect."""
        if self._closed:
            return
        self._closed = True
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        err = DispatcherClosedError("dispatcher closed before the call completed")
        if self._pending is not None:
            for rid, device, completion, flags in self._pending.drain():
                self._complete(completion, rid, device, None, err)
        self._held.clear()
        self._deferred.clear()
        self._queues.drain()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._transport is not None:
            await self._transport.close()

    async def __aenter__(self) -> "Dispatcher":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- configuration ------------------------------------------------------

    def configure_device(
        self,
        device: str,
        *,
        strategy: DeliveryStrategy | None = None,
        cap: int | None = None,
        window: int | None = None,
    ) -> None:
        """Per-device delivery strategy, queue cap and in-flight window."""
        validate_id("device", device)
        self._queues.configure(device, strategy, cap, window)

    def handler(self, method: str) -> Callable[[Handler], Handler]:
        """Register a client-side RPC handler: ``handler(device, params)``,
        plain or async; its return value is the reply."""

        def register(fn: Handler) -> Handler:
            self._handlers[method] = fn
            return fn

        return register

    def add_handler(self, method: str, fn: Handler) -> None:
        self._handlers[method] = fn

    def on_status(self, hook: Callable[[StatusEvent], Any]) -> Callable[[StatusEvent], Any]:
        """Call ``hook(event)`` on every status change of a lightweight call."""
        self._hooks.append(hook)
        return hook

    def on_presence(self, hook: Callable[[str, bool], Any]) -> Callable[[str, bool], Any]:
        """Call ``hook(device, online)`` whenever a device's presence changes."""
        self._presence_hooks.append(hook)
        return hook

    def on_kind(self, kind: Kind, hook: Callable) -> None:
        """Route inbound messages of ``kind`` (e.g. ``Kind.ELVES``) to
        ``hook(message, properties)``; used by the services."""
        self._message_hooks[int(kind)] = hook

    # -- presence -----------------------------------------------------------

    def is_online(self, device: str) -> bool:
        return device in self._online if self._presence else True

    @property
    def online_devices(self) -> frozenset[str]:
        return frozenset(self._online)

    def device_info(self, device: str) -> DeviceInfo | None:
        return self._devices.get(device)

    def set_online(self, device: str, online: bool) -> None:
        """Record a device's presence (from the presence topic, or from an
        embedding program that knows better)."""
        info = self._devices.get(device)
        now = time.time()
        if info is None:
            self._devices[device] = info = DeviceInfo(online, now)
        elif info.online == online:
            return
        else:
            info.online = online
            info.since = now
        if online:
            self._online.add(device)
            for rid in self._queues.set_online(device, True):
                self._release(rid, device)
        else:
            self._online.discard(device)
            if self._queues.held(device) or self._queues.inflight(device):
                self._queues.set_online(device, False)
        for hook in self._presence_hooks:
            self._run_hook(hook, device, online)

    # -- calls --------------------------------------------------------------

    async def call(
        self,
        device: str,
        method: str,
        params: Any = None,
        *,
        timeout: float | None = None,
        expiration_time: int | None = None,
        oneway: bool = False,
    ) -> Any:
        """Call ``method`` on ``device`` and return its reply.

        ``timeout`` is in seconds (default 10, raised to the configured
        minimum, 5 by default); ``expiration_time`` (epoch ms) overrides it.
        A one-way call returns once the broker has the request.

        Raises RpcTimeoutError, DeviceOfflineError, QueueFullError,
        ReplyNotJsonError, ValidationError or DispatcherClosedError.
        The reply is returned as the device sent it, as ThingsBoard does,
        including an SDK error object ``{"error": {"code", "message"}}``.
        """
        if not self._running:
            raise DispatcherClosedError("dispatcher is not running")
        if self._presence and device not in self._online:
            validate_id("device", device)
            self.stats.offline_rejected += 1
            raise DeviceOfflineError(f"device {device!r} is not connected")
        loop = self._loop
        if expiration_time is None and timeout is None:
            deadline = loop.time() + self._default_timeout
        elif (
            expiration_time is None
            and (type(timeout) is float or type(timeout) is int)
            and self._min_timeout <= timeout < 1e9  # NaN, inf, short ones: _deadline
        ):
            deadline = loop.time() + timeout
        else:
            deadline = self._deadline(timeout, expiration_time)
        payload = self._request_payload(method, params)
        fut = loop.create_future()
        rid = self._submit(device, fut, deadline, payload, ONEWAY if oneway else 0)
        # The suspended frame keeps its locals alive while the call is
        # pending: drop what is no longer needed (~130 bytes per call).
        del payload, deadline, params
        try:
            return await fut
        except asyncio.CancelledError:
            self._abandon(rid)
            raise

    def broadcast(
        self,
        devices: Iterable[str],
        method: str,
        params: Any = None,
        *,
        timeout: float | None = None,
        expiration_time: int | None = None,
        oneway: bool = False,
    ) -> Broadcast:
        """Call ``method`` on every device; returns a :class:`Broadcast` to
        iterate outcomes as they arrive or ``await .wait()`` for the summary.
        Offline devices and full queues become failed outcomes at once."""
        if not self._running:
            raise DispatcherClosedError("dispatcher is not running")
        devices = list(dict.fromkeys(devices))
        for device in devices:
            validate_id("device", device)
        deadline = self._deadline(timeout, expiration_time)
        payload = self._request_payload(method, params)
        bc = Broadcast(len(devices), self._loop)
        flags = ONEWAY if oneway else 0
        online = self._online
        for device in devices:
            if self._presence and device not in online:
                self.stats.offline_rejected += 1
                bc._record(device, False, None, DeviceOfflineError(f"device {device!r} is not connected"))
                continue
            try:
                self._submit(device, bc, deadline, payload, flags)
            except QueueFullError as exc:
                bc._record(device, False, None, exc)
        return bc

    def submit(
        self,
        device: str,
        method: str,
        params: Any,
        completion: Callable[[int, str, Any, BaseException | None], Any],
        *,
        deadline: float,
        oneway: bool = False,
        hold_offline: bool = True,
        request_id: str | None = None,
    ) -> int:
        """Low-level submit for other engines (persistent RPC): no presence
        check, ``deadline`` on the loop clock; calls to offline devices are
        held until the device comes online.  ``request_id`` goes into the
        payload as ``"id"``: it stays the same across retries and restarts,
        so the device can recognise a duplicate.  Returns the request id."""
        if not self._running:
            raise DispatcherClosedError("dispatcher is not running")
        validate_id("device", device)
        if hold_offline and self._presence and device not in self._online:
            self._queues.set_online(device, False)
        flags = ONEWAY if oneway else 0
        if isinstance(completion, CallObserver):
            flags |= OBSERVED
            if oneway:
                # A observed one-way call ends at the device's ack, not PUBACK.
                flags = OBSERVED
        payload = self._request_payload(method, params)
        if request_id is not None:
            payload = payload[:-1] + b',"id":' + self._encode(request_id) + b"}"
        return self._submit(device, completion, deadline, payload, flags)

    def rearm(self, rid: int, deadline: float) -> None:
        """Move a pending call's deadline (loop clock)."""
        self._pending.rearm(rid, deadline)
        if self._timer is None and self._running:
            self._arm_timer()

    def cancel(self, rid: int) -> bool:
        """Drop a pending call without completing it (e.g. a deleted RPC)."""
        return self._abandon(rid)

    # -- internals: outbound ------------------------------------------------

    def _deadline(self, timeout: float | None, expiration_time: int | None) -> float:
        now = self._loop.time()
        if expiration_time is not None:
            return now + (expiration_time / 1000.0 - time.time())
        if timeout is None:
            t = self._default_timeout
        else:
            if not isinstance(timeout, (int, float)) or not 0 <= timeout < 1e9:
                raise ValidationError(f"timeout must be a non-negative number of seconds, not {timeout!r}")
            t = timeout
        if t < self._min_timeout:
            t = self._min_timeout
        return now + t

    def _request_payload(self, method: str, params: Any) -> bytes:
        if not isinstance(method, str) or not method:
            raise ValidationError(f"method must be a non-empty string, not {method!r}")
        try:
            return self._encode_request(method, {} if params is None else params)
        except (TypeError, msgspec.EncodeError, CodecError) as exc:
            raise ValidationError(f"params are not JSON-serialisable: {exc}") from None

    def _submit(self, device: str, completion: Any, deadline: float, payload: bytes, flags: int) -> int:
        self.stats.calls += 1
        pending = self._pending
        rid = pending.add(device, completion, deadline, flags)
        try:
            now = self._queues.submit(device, rid)
        except QueueFullError:
            pending.resolve(rid)
            self.stats.queue_full += 1
            raise
        except Exception:
            pending.resolve(rid)
            raise
        if now:
            self._send(rid, device, payload, flags)
        else:
            self._held[rid] = payload
        if self._timer is None:
            self._arm_timer()
        return rid

    def _send(self, rid: int, device: str, payload: bytes, flags: int) -> None:
        if self._inflight >= self._window:
            self._held[rid] = payload
            self._deferred.append(rid)
            self._pending.set_flags(rid, flags | DEFERRED)
            return
        self._inflight += 1
        self._pending.set_flags(rid, flags | SENT)
        self.stats.sent += 1
        srid = str(rid)
        topic = self._req_prefix + device + self._req_suffix + srid
        props = None
        if self._mqtt5_props:
            props = {
                "response_topic": self._req_prefix + device + self._res_suffix + srid,
                "correlation_data": srid.encode(),
            }
        self._transport.publish(topic, payload, self._qos, False, rid if flags & ONEWAY else -1, props)
        if flags & OBSERVED:
            self._pending.peek(rid)[1].sent(rid, device)
        if self._hooks:
            self._emit("SENT", rid, device)

    def _release(self, rid: int, device: str) -> None:
        """A held call was released by its device queue: send it."""
        payload = self._held.pop(rid)
        entry = self._pending.peek(rid)
        self._send(rid, device, payload, entry[2])

    def _end(self, rid: int, device: str, flags: int) -> None:
        """A call left the pending table: give back what it held."""
        if flags & SENT:
            self._inflight -= 1
            nxt = self._queues.on_end(device, bool(flags & ACKED))
            if nxt is not None:
                self._release(nxt, device)
            if self._deferred:
                self._drain_deferred()
        elif flags & DEFERRED:
            self._held.pop(rid, None)
            # Its device slot is taken; the deferred deque skips it lazily.
            nxt = self._queues.on_end(device, False)
            if nxt is not None:
                self._release(nxt, device)
        else:
            self._held.pop(rid, None)
            self._queues.discard(device, rid)

    def _drain_deferred(self) -> None:
        deferred, pending = self._deferred, self._pending
        while deferred and self._inflight < self._window:
            rid = deferred.popleft()
            entry = pending.peek(rid)
            if entry is None or not entry[2] & DEFERRED:
                continue
            device, _, flags = entry
            self._send(rid, device, self._held.pop(rid), flags & ~DEFERRED)

    def _abandon(self, rid: int) -> bool:
        entry = self._pending.peek(rid) if self._pending is not None else None
        if entry is None:
            return False
        device, _, flags = entry
        self._pending.resolve(rid)
        self._end(rid, device, flags)
        return True

    # -- internals: completion ----------------------------------------------

    def _complete(self, completion: Any, rid: int, device: str, result: Any, error: BaseException | None) -> None:
        if type(completion) is Broadcast:
            completion._record(device, error is None, result, error)
        elif isinstance(completion, asyncio.Future):
            if completion.done():
                return
            if error is None:
                completion.set_result(result)
            else:
                completion.set_exception(error)
        else:
            try:
                completion(rid, device, result, error)
            except Exception:
                log.exception("completion of request %d failed", rid)

    def _emit(self, type_: str, rid: int, device: str, detail: Any = None) -> None:
        event = StatusEvent(type_, rid, device, time.time(), detail)
        for hook in self._hooks:
            self._run_hook(hook, event)

    def _run_hook(self, hook: Callable, *args: Any) -> None:
        try:
            res = hook(*args)
            if inspect.isawaitable(res):
                self._spawn(res)
        except Exception:
            log.exception("hook %r failed", hook)

    def _spawn(self, coro: Awaitable) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- internals: time ----------------------------------------------------

    def _arm_timer(self) -> None:
        self._timer = self._loop.call_at(self._loop.time() + self._wheel.tick, self._on_tick)

    def _on_tick(self) -> None:
        self._timer = None
        expired = self._pending.expire(self._loop.time())
        for rid, device, completion, flags in expired:
            self.stats.timeouts += 1
            self._end(rid, device, flags)
            if self._hooks:
                self._emit("TIMEOUT", rid, device)
            self._complete(
                completion, rid, device, None,
                RpcTimeoutError(f"device {device!r} did not answer request {rid} in time"),
            )
        if len(self._pending) and self._running:
            self._arm_timer()

    # -- internals: inbound -------------------------------------------------

    def _on_connection(self, up: bool) -> None:
        log.info("broker connection %s", "up" if up else "lost")

    def _on_published(self, rid: int) -> None:
        """The broker has a one-way request: that call is done."""
        entry = self._pending.peek(rid)
        if entry is None:
            return
        device, completion, flags = entry
        self._pending.resolve(rid)
        self._end(rid, device, flags)
        if self._hooks:
            self._emit("DELIVERED", rid, device)
        self._complete(completion, rid, device, None, None)

    def _on_message(self, topic: str, payload: bytes, properties: dict | None) -> None:
        try:
            msg = self._codec.decode(topic, payload)
        except CodecError as exc:
            self.stats.malformed += 1
            log.debug("dropped malformed message on %r: %s", topic, exc)
            return
        kind = msg.kind
        if kind == Kind.REPLY:
            self._on_reply(msg)
        elif kind == Kind.ACK:
            self._on_ack(msg)
        elif kind == Kind.CALL:
            self._on_call(msg, properties)
        elif kind == Kind.PRESENCE:
            self.stats.presence += 1
            self.set_online(msg.device, msg.body.status == "online")
        elif kind == Kind.HEARTBEAT:
            self.stats.heartbeats += 1
            info = self._devices.get(msg.device)
            if info is None:
                self._devices[msg.device] = info = DeviceInfo(False, time.time())
            info.heartbeat = msg.body
        else:
            hook = self._message_hooks.get(int(kind))
            if hook is not None:
                if kind == Kind.ELVES:
                    self.stats.elves += 1
                self._run_hook(hook, msg, properties)
            else:
                self.stats.malformed += 1

    def _lookup(self, msg) -> tuple | None:
        rid = msg.rid
        entry = self._pending.peek(rid)
        if entry is None:
            self.stats.unknown_request += 1
            log.debug("reply for request %d, which is not pending", rid)
            return None
        if entry[0] != msg.device:
            self.stats.wrong_device += 1
            log.warning("device %r answered request %d of device %r: rejected", msg.device, rid, entry[0])
            return None
        return entry

    def _on_reply(self, msg) -> None:
        entry = self._lookup(msg)
        if entry is None:
            return
        device, completion, flags = entry
        rid = msg.rid
        self._pending.resolve(rid)
        self.stats.replies += 1
        self._end(rid, device, flags)
        if msg.error is not None:
            self.stats.not_json += 1
            if self._hooks:
                self._emit("FAILED", rid, device, msg.error)
            self._complete(completion, rid, device, None, ReplyNotJsonError(f"reply of device {device!r}: {msg.error}"))
            return
        if self._hooks:
            self._emit("SUCCESSFUL", rid, device)
        if type(completion) is self._Future:
            if not completion.done():
                completion.set_result(msg.body)
        else:
            self._complete(completion, rid, device, msg.body, None)

    def _on_ack(self, msg) -> None:
        entry = self._lookup(msg)
        if entry is None:
            return
        device, completion, flags = entry
        if flags & ACKED or not flags & SENT:
            return  # duplicate ack
        self.stats.acks += 1
        rid = msg.rid
        self._pending.set_flags(rid, flags | ACKED)
        nxt = self._queues.on_ack(device)
        if nxt is not None:
            self._release(nxt, device)
        if self._hooks:
            self._emit("DELIVERED", rid, device)
        if flags & OBSERVED and completion.acked(rid, device):
            self._pending.resolve(rid)
            self._end(rid, device, flags | ACKED)
            self._complete(completion, rid, device, None, None)

    # -- client-side RPC ----------------------------------------------------

    def _on_call(self, msg, properties: dict | None) -> None:
        self.stats.client_calls += 1
        device, cid = msg.device, msg.rid
        request = msg.body
        topic, props = answer_target(f"{self.settings.prefix}/d/{device}/ret/{cid}", properties)
        if self._hooks:
            self._emit("TO_SERVER_RPC_REQUEST", cid, device, {"method": request.method, "params": request.params})
        handler = self._handlers.get(request.method)
        if handler is None:
            self._reply_error(topic, props, "METHOD_NOT_FOUND", f"unknown method {request.method!r}")
            return
        try:
            result = handler(device, request.params)
        except Exception as exc:
            self._handler_failed(topic, props, request.method, exc)
            return
        if inspect.isawaitable(result):
            self._spawn(self._finish_call(topic, props, request.method, result))
        else:
            self._reply(topic, props, result)

    async def _finish_call(self, topic: str, props, method: str, awaitable: Awaitable) -> None:
        try:
            result = await awaitable
        except Exception as exc:
            self._handler_failed(topic, props, method, exc)
            return
        self._reply(topic, props, result)

    def _reply(self, topic: str, props, result: Any) -> None:
        try:
            payload = self._encode(result)
        except (TypeError, msgspec.EncodeError) as exc:
            self._reply_error(topic, props, "INTERNAL_ERROR", f"reply is not JSON-serialisable: {exc}")
            return
        self._transport.publish(topic, payload, self._qos, False, -1, props)

    def _handler_failed(self, topic: str, props, method: str, exc: Exception) -> None:
        log.warning("client-side handler %r failed: %r", method, exc)
        if isinstance(exc, RemoteError):
            self._reply_error(topic, props, "APPLICATION_ERROR", str(exc))
        else:
            self._reply_error(topic, props, "HANDLER_ERROR", f"{type(exc).__name__}: {exc}")

    def _reply_error(self, topic: str, props, code: str, message: str) -> None:
        self.stats.client_errors += 1
        self._transport.publish(topic, error_reply(code, message), self._qos, False, -1, props)
