"""The dispatch engine: calls out, replies in, deadlines.

Outbound: a call is validated, gets a pending entry (request id, deadline in
the timing wheel, its completion), joins its device's queue under the
device's delivery strategy and, when released, is encoded and published.

Inbound: the transport hands ``(topic, payload)`` to the codec; a reply finds
its pending entry, which cancels its deadline, completes the caller and
releases the device's next call.

Time: one timer per dispatcher advances the wheel while anything is pending;
there is no per-call ``loop.call_later``.  Durations in this API are seconds
(``timeout=2.5``); points in time are epoch milliseconds
(``expiration_time``), as in ThingsBoard (see ``dispatch/options.py``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable

import msgspec

from .. import _core
from .._core.constants import DeliveryStrategy
from ..errors import (
    BrokerUnavailableError,
    CodecError,
    DeviceOfflineError,
    DispatcherClosedError,
    QueueFullError,
    ReplyNotJsonError,
    RpcTimeoutError,
    ValidationError,
    WindowFullError,
)
from ..presence import DeviceState, PresenceRegistry
from ..wire import (
    Kind, ServerTopics, is_presence_filter, new_boot_id, node_level, node_sync_topic, server_filters, validate_id,
    validate_ids,
)
from .broadcast import Broadcast
from .client_calls import ClientCalls, DefaultHandler, Handler
from .completion import CallObserver, StatusEvent
from .counters import Stats
from .rejects import RejectLog
from .options import NO_PARAMS, OfflinePolicy, check_flag, check_method, check_offline, check_timeout_s

if TYPE_CHECKING:
    from ..config import Settings
    from ..transport.base import Transport

log = logging.getLogger("fleetrpc.dispatcher")

__all__ = ["Dispatcher", "DeviceInfo"]

# Bits of a pending entry's flags.
SENT = 1          # published (holds a slot of the global window)
ACKED = 2         # the device acknowledged delivery
ONEWAY = 4        # no reply expected: done when the broker has it
DEFERRED = 8      # released by its device queue, waiting for the global window
OBSERVED = 16     # the completion is a CallObserver: told when sent and acked
ATTEMPT = 32      # has an attempt timeout (submit): rearmed when sent

#: Longest wait of ``start`` for the broker's retained presence (seconds).
PRESENCE_SYNC_S = 5.0

#: What presence knows of a device (the name the dispatcher used before).
DeviceInfo = DeviceState

#: The completion of a call() (compiled or pure, as the rest of the core).
CallFuture = _core.CallFuture


async def _raise(exc: BaseException) -> Any:
    """What call() returns when it refuses a call: its error, at the await."""
    raise exc


class Dispatcher:
    """Sends RPCs to devices and agents over MQTT and brings their answers back.

    ``transport`` defaults to an MQTT connection built from ``settings``
    (:meth:`mqtt_transport`); anything implementing
    :class:`fleetrpc.transport.base.Transport` works (e.g.
    :class:`fleetrpc.transport.memory.MemoryHub`'s transports).  It may
    also be a function of the new dispatcher that returns the transport,
    for one that needs the dispatcher's wire level (``node``) or its MQTT
    connection: ``transport=lambda d: CompositeTransport(endpoint,
    d.mqtt_transport(), node=d.node)``.
    ``presence`` defaults to a registry bounded by ``settings``; a server
    passes its own (with ``is_known`` set from its device registry).
    """

    def __init__(
        self,
        settings: "Settings | None" = None,
        *,
        transport: "Transport | Callable[[Dispatcher], Transport] | None" = None,
        presence: PresenceRegistry | None = None,
    ) -> None:
        if settings is None:
            from ..config import Settings

            settings = Settings()
        self.settings = s = settings
        #: This node's configured id.
        self.node_id = s.node_id
        #: This run's id on the wire (``{node_id}.{boot}``): request ids start
        #: at 1 in every run, this never repeats (see ``wire.node_level``).
        self.node = node_level(s.node_id, new_boot_id())
        self.stats = Stats()
        self._transport = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._closed = False
        self._qos = s.qos
        # ThingsBoard raises short timeouts to the minimum; the default too.
        self._default_timeout = max(s.default_timeout, s.min_timeout)
        self._min_timeout = s.min_timeout
        self._presence = s.presence
        self._wait_offline = s.offline is OfflinePolicy.WAIT
        self._window = s.inflight_window
        self._inflight = 0
        self._max_payload = s.max_payload
        self._topics = t = ServerTopics(s.prefix, self.node)
        self._req_prefix = t.request_head
        self._req_suffix = t.request_tail
        self._res_suffix = t.reply_tail
        self._mqtt5_props = s.mqtt_version == 5 and s.response_topic
        self._publish_request = None  # the transport's, when it routes requests by device (see start)
        self._new_call = None  # CallSite.future: a call()'s completion, bound to the loop
        self._codec = _core.Codec(s.prefix, s.max_payload)
        self._encode_request = self._codec.encode_request
        self._encode = msgspec.json.Encoder().encode
        # Every device has an in-flight cap, BURST included: one that never
        # answers must not take the node's whole window (see Settings.device_window).
        self.device_window = s.device_window or max(1, s.inflight_window // 10)
        self._queues = _core.DeviceQueues(s.strategy, s.queue_cap, self.device_window, True)
        self._fail_broker_down = s.broker_down is OfflinePolicy.FAIL
        self._broker_up = False
        self._broker_lost_at: float | None = None  # loop time the connection was last lost
        self._rejects = RejectLog(log, s.reject_log_interval_s)
        self._wheel = None
        self._pending = None
        self._timer: asyncio.TimerHandle | None = None
        self._held: dict[int, bytes] = {}        # rid -> encoded request not yet sent
        self._deferred: deque[int] = deque()     # released rids waiting for the window
        self._attempts: dict[int, tuple[float, float]] = {}  # rid -> (attempt timeout, deadline) until sent
        self._sent_notes: list[tuple[int, str]] = []  # observed calls sent, not yet told
        self._sync_topic = node_sync_topic(s.prefix, self.node)  # this run's marker (see _sync_presence)
        self._synced: asyncio.Future | None = None  # set when the marker returns
        #: Online state and heartbeats (shared with the services).
        # (not `presence or ...`: an empty registry has len() 0, and is falsy)
        self.presence = presence if presence is not None else PresenceRegistry.from_settings(s)
        self._online = self.presence.online
        self.presence.listen(self._presence_changed)
        self.client_calls = ClientCalls(self)
        self._hooks: list[Callable[[StatusEvent], Any]] = []
        self._presence_hooks: list[Callable[[str, bool], Any]] = []
        self._message_hooks: dict[int, Callable] = {}
        self._tasks: set[asyncio.Task] = set()
        # (last: a transport factory may read any of the above; a transport
        # is told from a factory by its publish, as a Mock is callable)
        if callable(transport) and not hasattr(transport, "publish"):
            transport = transport(self)
        self._transport = transport

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Connect to the broker and subscribe; returns when ready to call
        (with presence tracked: once the broker's retained presence is in)."""
        if self._running:
            return
        if self._closed:
            raise DispatcherClosedError("dispatcher is closed")
        self._loop = asyncio.get_running_loop()
        self._new_call = _core.CallSite(self._loop, self._abandon).future
        self._wheel = _core.TimingWheel(self.settings.tick_ms / 1000.0, self._loop.time())
        self._pending = _core.PendingTable(self._wheel)
        if self._transport is None:
            self._transport = self.mqtt_transport()
        t = self._transport
        t.on_message = self._on_message
        t.on_published = self._on_published
        t.on_connection = self._on_connection
        # Sent calls, not pending ones: calls held for offline devices await nothing.
        t.awaiting = lambda: self._inflight
        # A transport that routes by device (the device endpoint) takes
        # requests with their device, if it names requests as we do.
        publish_request = getattr(t, "publish_request", None)
        self._publish_request = (publish_request if getattr(t, "request_head", None) == self._req_prefix
                                 else None)
        self._running = True
        await t.start(self._filters())
        self._broker_up = bool(getattr(t, "connected", True))
        if self._broker_up and self._syncs_presence():
            await self._sync_presence()

    def _syncs_presence(self) -> bool:
        """Whether start waits for the retained presence (see _sync_presence):
        presence is tracked, and the transport holds retained messages."""
        return self._presence and getattr(self._transport, "keeps_retained", True)

    def _end_sync(self) -> None:
        """The marker is back (or the dispatcher closed): start goes on."""
        if self._synced is not None and not self._synced.done():
            self._synced.set_result(None)

    async def _sync_presence(self) -> None:
        """Return once the retained presence the broker holds is in.

        The broker hands the retained messages of a subscription out after
        its SUBACK, 20,000 of them over tens of milliseconds: a call made, or
        a job resumed, as soon as ``start`` returned found online devices
        "offline" (measured: 0 of 20,000 known).  A broker that takes one
        connection's packets in order (Mosquitto) queues them before a
        message this node then publishes to itself, so that message's return
        means they are all in.  A broker that sends retained messages on its
        own time (EMQX's retainer) gives no such order: this then returns a
        little early, as before.  Bounded by :data:`PRESENCE_SYNC_S`."""
        self._synced = self._loop.create_future()
        self._transport.publish(self._sync_topic, b"", 0)
        try:
            await asyncio.wait_for(self._synced, PRESENCE_SYNC_S)
            if not self._closed:  # (close() ends the wait too)
                self.stats.presence_synced += 1
        except asyncio.TimeoutError:
            self.stats.presence_sync_timeouts += 1
            log.warning("the broker did not return this node's marker on %s within %s s (may this node subscribe "
                        "and publish there?): calls made now may find online devices offline until their "
                        "retained presence arrives", self._sync_topic, PRESENCE_SYNC_S)
        finally:
            self._synced = None

    def mqtt_transport(self):
        """A new MQTT connection to the broker, as ``settings`` describe it:
        the transport the dispatcher makes when given none."""
        from ..transport.mqtt import MqttTransport

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
        filters = server_filters(s.prefix, self.node, s.share_group)
        if not self._presence:
            filters = [f for f in filters if not is_presence_filter(f)]
        # Presence at QoS 0: on subscribing, a broker with default settings
        # (Mosquitto: 20 in flight, 1000 queued) hands a QoS 1 subscriber only
        # ~1000 of the retained presence messages and drops the rest; at QoS 0
        # all of them arrive (measured: 1085 vs 1782 of 1782).
        filters = [(f, 0 if f.endswith("/presence") else s.qos) for f in filters]
        if self._syncs_presence():
            # after the presence filter, at its QoS: see _sync_presence
            filters.append((self._sync_topic, 0))
        return filters

    async def close(self) -> None:
        """Fail every pending call with DispatcherClosedError and disconnect."""
        if self._closed:
            return
        self._closed = True
        self._running = False
        self._end_sync()  # a start still waiting for presence returns
        self._rejects.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sent_notes:
            self._flush_sent()
        err = DispatcherClosedError("dispatcher closed before the call completed")
        if self._pending is not None:
            for rid, device, completion, flags in self._pending.drain():
                self._complete(completion, rid, device, None, err)
        self._held.clear()
        self._deferred.clear()
        self._attempts.clear()
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
        strategy: DeliveryStrategy | str | None = None,
        cap: int | None = None,
        window: int | None = None,
    ) -> None:
        """Per-device delivery strategy (a member or its name), queue cap and
        in-flight window."""
        from ..config import parse_strategy

        validate_id("device", device)
        if strategy is not None:
            strategy = parse_strategy(strategy)
        self._queues.configure(device, strategy, cap, window)

    def handler(self, method: str) -> Callable[[Handler], Handler]:
        """Register a client-side RPC handler: ``handler(device, params)``,
        plain or async; its return value is the reply."""

        def register(fn: Handler) -> Handler:
            self.client_calls.add(method, fn)
            return fn

        return register

    def add_handler(self, method: str, fn: Handler) -> None:
        self.client_calls.add(method, fn)

    def set_default_handler(self, fn: DefaultHandler | None) -> None:
        """Answer client-side calls of methods no handler is registered for
        with ``fn(device, method, params)``, plain or async (e.g. forwarding
        to a webhook); ``NotImplemented`` as its result declines, and the
        device gets METHOD_NOT_FOUND as without it.  ``None`` removes it."""
        self.client_calls.default = fn

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

    def publish(self, topic: str, payload: bytes, *, qos: int | None = None, retain: bool = False,
                properties: dict | None = None) -> None:
        """Publish one message on the dispatcher's connection (what the
        server's parts send besides calls: events, services' answers).
        ``qos`` defaults to the dispatcher's.  Fire and forget: at QoS 1 it
        waits out a broker outage as calls do; at QoS 0 it may be lost."""
        if not self._running:
            raise DispatcherClosedError("dispatcher is not running")
        self._transport.publish(topic, payload, self._qos if qos is None else qos, retain, -1, properties)

    # -- presence -----------------------------------------------------------

    def is_online(self, device: str) -> bool:
        return device in self._online if self._presence else True

    @property
    def online_devices(self) -> frozenset[str]:
        return frozenset(self._online)

    def device_info(self, device: str) -> DeviceState | None:
        return self.presence.get(device)

    def set_online(self, device: str, online: bool) -> None:
        """Record a device's presence (from the presence topic, or from an
        embedding program that knows better)."""
        self.presence.set_online(device, online)

    def _presence_changed(self, device: str, online: bool) -> None:
        if online:
            for rid in self._queues.set_online(device, True):
                self._release(rid, device)
        elif self._queues.held(device) or self._queues.inflight(device):
            self._queues.set_online(device, False)
        for hook in self._presence_hooks:
            self._run_hook(hook, device, online)

    # -- calls --------------------------------------------------------------

    def check_request(self, method: str, params: Any = NO_PARAMS, request_id: str | None = None) -> int:
        """Encode the request as it would be sent and return its size; raise
        ValidationError when it cannot be sent (bad method, params that are
        not JSON, over ``max_payload``).  The persistent engine calls it
        before storing a call."""
        return len(self._request_payload(method, params, request_id))

    def request_payload(self, method: str, params: Any = NO_PARAMS, request_id: str | None = None) -> bytes:
        """The request as it would be sent (raises like :meth:`check_request`).
        A caller that checks a request before submitting it passes this to
        :meth:`submit` as ``payload``, so that it is encoded once."""
        return self._request_payload(method, params, request_id)

    def call(
        self,
        device: str,
        method: str,
        params: Any = NO_PARAMS,
        *,
        timeout: float | None = None,
        expiration_time: int | None = None,
        oneway: bool = False,
        offline: OfflinePolicy | str | None = None,
    ) -> Awaitable[Any]:
        """Call ``method`` on ``device``; await the result for its reply.

        ``timeout`` is in seconds (default 10, raised to the configured
        minimum, 5 by default); ``expiration_time`` (epoch ms) overrides it.
        A one-way call returns once the broker has the request.  ``offline``
        (``"fail"`` or ``"wait"``, default ``Settings.offline``) says what a
        call to a device that is not online does: see :class:`OfflinePolicy`.

        Raises RpcTimeoutError, DeviceOfflineError, QueueFullError,
        ReplyNotJsonError, ValidationError or DispatcherClosedError, always
        at the ``await``.  The reply is returned as the device sent it, as
        ThingsBoard does, including an SDK error object
        ``{"error": {"code", "message"}}``.

        The call is submitted when ``call()`` is called, not when it is first
        awaited: what it returns is the call's own future (a
        ``_core.CallFuture``, which ``await``, ``create_task``,
        ``ensure_future``, ``gather`` and ``wait_for`` accept), so that a
        pending call costs no coroutine frame and no ``asyncio.Future``.
        Cancelling it, or the task awaiting it, drops the call.
        """
        try:
            if not self._running:
                raise DispatcherClosedError("dispatcher is not running")
            if not self._broker_up and self._fail_broker_down:
                self._broker_refused()
            if oneway is not False and oneway is not True:
                check_flag(oneway, "oneway")
            if self._presence and device not in self._online:
                self._offline_call(device, offline)
            elif offline is not None:
                check_offline(offline)
            if expiration_time is None and timeout is None:
                deadline = self._loop.time() + self._default_timeout
            elif (
                expiration_time is None
                and (type(timeout) is float or type(timeout) is int)
                and self._min_timeout <= timeout < 1e9  # NaN, inf, short ones: _deadline
            ):
                deadline = self._loop.time() + timeout
            else:
                deadline = self._deadline(timeout, expiration_time)
            fut = self._new_call()
            self._submit(device, fut, deadline, self._request_payload(method, params), ONEWAY if oneway else 0)
            return fut
        except Exception as exc:
            # Refused: raised at the await, as from a coroutine.
            return _raise(exc)

    def _broker_refused(self) -> None:
        self.stats.broker_unavailable += 1
        raise BrokerUnavailableError("the broker connection is down (broker_down = fail): call not sent")

    def _offline_call(self, device: str, offline: Any) -> None:
        """A call to a device that is not online: refuse it, or let it wait
        in the device's queue (held until the device comes online)."""
        validate_id("device", device)
        wait = self._wait_offline if offline is None else check_offline(offline) is OfflinePolicy.WAIT
        if not wait:
            self.stats.offline_rejected += 1
            raise DeviceOfflineError(f"device {device!r} is not connected")
        self._queues.set_online(device, False)

    def broadcast(
        self,
        devices: Iterable[str],
        method: str,
        params: Any = NO_PARAMS,
        *,
        timeout: float | None = None,
        expiration_time: int | None = None,
        oneway: bool = False,
        offline: OfflinePolicy | str | None = None,
    ) -> Broadcast:
        """Call ``method`` on every device; returns a :class:`Broadcast` to
        iterate outcomes as they arrive or ``await .wait()`` for the summary.
        Under the FAIL offline policy, offline devices and full queues become
        failed outcomes at once."""
        if not self._running:
            raise DispatcherClosedError("dispatcher is not running")
        if not self._broker_up and self._fail_broker_down:
            self._broker_refused()
        check_flag(oneway, "oneway")
        wait = self._wait_offline if offline is None else check_offline(offline) is OfflinePolicy.WAIT
        devices = list(dict.fromkeys(devices))
        validate_ids("device", devices)
        deadline = self._deadline(timeout, expiration_time)
        payload = self._request_payload(method, params)
        bc = Broadcast(len(devices), self._loop)
        flags = ONEWAY if oneway else 0
        online = self._online if self._presence else None
        submit = self._submit  # (once, not per device)
        for device in devices:
            if online is not None and device not in online:
                if not wait:
                    self.stats.offline_rejected += 1
                    bc._record(device, False, None, DeviceOfflineError(f"device {device!r} is not connected"))
                    continue
                self._queues.set_online(device, False)
            try:
                submit(device, bc, deadline, payload, flags)
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
        attempt_timeout: float | None = None,
        oneway: bool = False,
        hold_offline: bool = True,
        request_id: str | None = None,
        payload: bytes | None = None,
    ) -> int:
        """Low-level submit for other engines (persistent RPC): no presence
        check, ``deadline`` on the loop clock; calls to offline devices are
        held until the device comes online.  ``attempt_timeout`` (seconds):
        when the call is published, its deadline becomes ``min(deadline,
        now + attempt_timeout)`` -- the dispatcher arms each attempt itself.
        ``request_id`` goes into the payload as ``"id"``: it stays the same
        across retries and restarts, so the device can recognise a duplicate.
        ``payload``: the request already encoded by :meth:`request_payload`
        with the same method, params and request id (not encoded again).
        A :class:`CallObserver` completion hears ``sent`` after this returns.
        Returns the request id."""
        if not self._running:
            raise DispatcherClosedError("dispatcher is not running")
        validate_id("device", device)
        check_flag(oneway, "oneway")
        if hold_offline and self._presence and device not in self._online:
            self._queues.set_online(device, False)
        flags = ONEWAY if oneway else 0
        if isinstance(completion, CallObserver):
            flags |= OBSERVED
            if oneway:
                # An observed one-way call ends at the device's ack, not PUBACK.
                flags = OBSERVED
        if attempt_timeout is not None:
            attempt_timeout = check_timeout_s(attempt_timeout, "attempt_timeout")
            flags |= ATTEMPT
        if payload is None:
            payload = self._request_payload(method, params, request_id)
        return self._submit(device, completion, deadline, payload, flags, attempt_timeout)

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
            if type(expiration_time) is not int or not 0 <= expiration_time < 10**15:
                raise ValidationError(f"expiration_time must be epoch milliseconds, not {expiration_time!r}")
            return now + (expiration_time / 1000.0 - time.time())
        t = check_timeout_s(timeout)
        if t is None:
            t = self._default_timeout
        if t < self._min_timeout:
            t = self._min_timeout
        return now + t

    def _request_payload(self, method: str, params: Any, request_id: str | None = None) -> bytes:
        try:
            payload = self._encode_request(method, {} if params is NO_PARAMS else params)
        except CodecError as exc:
            check_method(method)
            raise ValidationError(f"params are not JSON-serialisable: {exc}") from None
        except (TypeError, msgspec.EncodeError) as exc:
            raise ValidationError(f"params are not JSON-serialisable: {exc}") from None
        if request_id is not None:
            payload = payload[:-1] + b',"id":' + self._encode(request_id) + b"}"
        if len(payload) > self._max_payload:
            self.stats.oversize += 1
            raise ValidationError(
                f"request of {method!r} is {len(payload)} bytes, over the limit of "
                f"{self._max_payload} (max_payload): not sent"
            )
        return payload

    def _submit(self, device: str, completion: Any, deadline: float, payload: bytes, flags: int,
                attempt_timeout: float | None = None) -> int:
        self.stats.calls += 1
        pending = self._pending
        rid = pending.add(device, completion, deadline, flags)
        if flags & ATTEMPT:
            self._attempts[rid] = (attempt_timeout, deadline)
        try:
            now = self._queues.submit(device, rid)
        except QueueFullError:
            pending.resolve(rid)
            self._attempts.pop(rid, None)
            self.stats.queue_full += 1
            raise
        except Exception:
            pending.resolve(rid)
            self._attempts.pop(rid, None)
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
        publish_request = self._publish_request
        if publish_request is not None:
            publish_request(device, topic, payload, self._qos, rid if flags & ONEWAY else -1, props)
        else:
            self._transport.publish(topic, payload, self._qos, False, rid if flags & ONEWAY else -1, props)
        if flags & (OBSERVED | ATTEMPT):
            self._sent_observed(rid, device, flags)
        if self._hooks:
            self._emit("SENT", rid, device)

    def _sent_observed(self, rid: int, device: str, flags: int) -> None:
        if flags & ATTEMPT:
            # This attempt's deadline, never past the call's own.
            attempt, call_deadline = self._attempts.pop(rid)
            attempt_deadline = self._loop.time() + attempt
            if attempt_deadline < call_deadline:
                self._pending.rearm(rid, attempt_deadline)
        if flags & OBSERVED:
            # Told on a later turn: an observer never runs inside submit().
            if not self._sent_notes:
                self._loop.call_soon(self._flush_sent)
            self._sent_notes.append((rid, device))

    def _flush_sent(self) -> None:
        notes, self._sent_notes = self._sent_notes, []
        pending = self._pending
        for rid, device in notes:
            entry = pending.peek(rid)
            if entry is not None:
                entry[1].sent(rid, device)

    def _release(self, rid: int, device: str) -> None:
        """A held call was released by its device queue: send it."""
        while True:
            payload = self._held.pop(rid, None)
            entry = self._pending.peek(rid)
            if entry is not None:
                self._send(rid, device, payload, entry[2])
                return
            # It expired in the same tick as the call that released it (a
            # sequential queue behind a device that does not answer): it
            # will never be sent, so its device slot is free again at once.
            rid = self._queues.on_end(device, False)
            if rid is None:
                return

    def _end(self, rid: int, device: str, flags: int) -> None:
        """A call left the pending table: give back what it held."""
        if flags & SENT:
            self._inflight -= 1
            nxt = self._queues.on_end(device, bool(flags & ACKED))
            if nxt is not None:
                self._release(nxt, device)
            if self._deferred:
                self._drain_deferred()
            return
        if flags & ATTEMPT:
            self._attempts.pop(rid, None)
        if flags & DEFERRED:
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
        if self._sent_notes:
            self._flush_sent()
        device, _, flags = entry
        self._pending.resolve(rid)
        self._end(rid, device, flags)
        return True

    # -- internals: completion ----------------------------------------------

    def _complete(self, completion: Any, rid: int, device: str, result: Any, error: BaseException | None) -> None:
        if type(completion) is CallFuture:
            completion._finish(result, error)
        elif type(completion) is Broadcast:
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
        if self._sent_notes:
            self._flush_sent()
        expired = self._pending.expire(self._loop.time())
        for rid, device, completion, flags in expired:
            self._end(rid, device, flags)
            error = self._timeout_cause(rid, device, flags)
            if self._hooks:
                self._emit("TIMEOUT", rid, device)
            self._complete(completion, rid, device, None, error)
        if len(self._pending) and self._running:
            self._arm_timer()

    def _timeout_cause(self, rid: int, device: str, flags: int) -> BaseException:
        """What a call whose deadline passed is told: its real cause."""
        if not flags & SENT:
            if flags & DEFERRED:
                # Released by its device, but the node's window never had room.
                self.stats.window_full += 1
                return WindowFullError(
                    f"request {rid} to device {device!r} was never sent: this node's in-flight "
                    f"window ({self._window}) stayed full until its deadline"
                )
            if not self._broker_up:
                self.stats.broker_unavailable += 1
                return BrokerUnavailableError(
                    f"request {rid} to device {device!r} was never sent: the broker connection was down"
                )
            if not flags & OBSERVED and self._presence and device not in self._online:
                # Waited for a device that did not come (OfflinePolicy.WAIT).
                self.stats.offline_expired += 1
                return DeviceOfflineError(f"device {device!r} did not connect before request {rid}'s deadline")
            self.stats.timeouts += 1
            return RpcTimeoutError(
                f"request {rid} was never sent: device {device!r} had not answered the calls "
                f"before it in its queue"
            )
        if not self._broker_up or (
            self._broker_lost_at is not None and self._loop.time() - self._broker_lost_at < self._default_timeout
        ):
            # Sent, but the connection went down meanwhile: the request or
            # its reply may have been lost with it.
            self.stats.broker_unavailable += 1
            return BrokerUnavailableError(
                f"no answer from device {device!r} to request {rid}: the broker connection was "
                f"{'down' if not self._broker_up else 'lost'} while it was pending"
            )
        self.stats.timeouts += 1
        return RpcTimeoutError(f"device {device!r} did not answer request {rid} in time")

    # -- internals: inbound -------------------------------------------------

    def _on_connection(self, up: bool) -> None:
        log.info("broker connection %s", "up" if up else "lost")
        self._broker_up = up
        if not up and self._loop is not None:
            self._broker_lost_at = self._loop.time()

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
        if self._sent_notes:
            self._flush_sent()
        try:
            msg = self._codec.decode(topic, payload)
        except CodecError as exc:
            if topic == self._sync_topic:
                self._end_sync()
                return
            self.stats.malformed += 1
            if not self.client_calls.on_unreadable(topic, properties, str(exc)):
                self._rejects.note("malformed", "%.200r: %s", topic, exc)
            return
        kind = msg.kind
        if kind == Kind.REPLY:
            self._on_reply(msg)
        elif kind == Kind.ACK:
            self._on_ack(msg)
        elif kind == Kind.CALL:
            self.client_calls.on_call(msg, properties)
        elif kind == Kind.PRESENCE:
            self.stats.presence += 1
            body = msg.body
            self.presence.set_online(msg.device, body.status == "online", body.via)
        elif kind == Kind.HEARTBEAT:
            self.stats.heartbeats += 1
            self.presence.heartbeat(msg.device, msg.body, len(payload))
        elif kind == Kind.ELVES:
            hook = self._message_hooks.get(int(kind))
            if hook is None:
                self.stats.elves_unrouted += 1
                self._rejects.note("elves_unrouted", "%.200r: no Elves service on this node", topic)
            else:
                self.stats.elves += 1
                self._run_hook(hook, msg, properties)
        else:
            hook = self._message_hooks.get(int(kind))
            if hook is None:
                self.stats.unexpected += 1
                self._rejects.note("unexpected", "%.200r: a server never receives %s", topic, kind)
            else:
                self._run_hook(hook, msg, properties)

    def _lookup(self, msg) -> tuple | None:
        rid = msg.rid
        entry = self._pending.peek(rid)
        if entry is None:
            if 0 < rid < self._pending.next_rid:
                # Ours, ended: timed out, cancelled, answered already, or
                # one-way (ThingsBoard firmware answers those too).
                self.stats.late_replies += 1
                return None
            self.stats.unknown_request += 1
            self._rejects.note("unknown_request", "device %.100r answered request %d, which this node never made",
                               msg.device, rid)
            return None
        if entry[0] != msg.device:
            self.stats.wrong_device += 1
            self._rejects.note("wrong_device", "device %.100r answered request %d of device %r",
                               msg.device, rid, entry[0])
            return None
        if not entry[2] & SENT:
            # Still in its device's queue: nobody has received it yet.
            self.stats.not_sent += 1
            self._rejects.note("not_sent", "device %.100r answered request %d before it was sent",
                               msg.device, rid)
            return None
        return entry

    def _on_reply(self, msg) -> None:
        rid = msg.rid
        entry = self._pending.peek(rid)
        # _lookup's checks, inlined for the usual reply; it counts the others.
        if entry is None or entry[0] != msg.device or not entry[2] & SENT:
            self._lookup(msg)
            return
        device, completion, flags = entry
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
        # _complete's two usual cases first, without its call: a call's
        # future, a broadcast's outcome (a fleet job's thousands of replies)
        cls = type(completion)
        if cls is CallFuture:
            completion._finish(msg.body, None)
        elif cls is Broadcast:
            completion._record(device, True, msg.body, None)
        else:
            self._complete(completion, rid, device, msg.body, None)

    def _on_ack(self, msg) -> None:
        entry = self._lookup(msg)
        if entry is None:
            return
        device, completion, flags = entry
        if flags & ACKED:
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
