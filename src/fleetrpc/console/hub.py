"""The console's live event stream: Server-Sent Events, one per browser tab.

The hub hears every event once -- RPC status events and job events from the
event bus, presence changes from the dispatcher -- and offers each to the
connections whose user may see it: the same tenant, and for a customer user
the same customer (a device's tenant and customer are looked up in the
device registry, through a small bounded cache).  That cache follows the
device repository's listener: a device assigned to another customer,
unassigned (by hand, or because its customer was deleted), renamed or
deleted on this node is looked up again at its next event, so the old
customer's users get none of its events from then on.  Other nodes' changes
reach it the same way, a moment after their commit, through the
repository's PostgreSQL notifications (``add_listener(...,
other_nodes=True)``); one missed (a lost LISTEN connection) is caught by
the entry's age: it is read again once it is :data:`OWNER_TTL_S` old, the
same bound as the RPC path's device cache
(``api/thingsboard/access.DeviceCache``).
Each connection has a
bounded buffer (in events, and in bytes: an event carries its call's params
and answer): when a browser reads slower than events come, the oldest are
dropped and the browser is told how many, so a slow or stalled tab never
grows the server's memory.  A tab that stops reading altogether (its
socket open, its window full) is dropped once a write has waited
:data:`WRITE_TIMEOUT_S`: it would otherwise hold its slot, and what its
transport buffered, for good.  One user has at most
:data:`MAX_STREAMS_PER_USER` streams, so that no one token can take every
slot of :data:`MAX_STREAMS` from the other tenants.

The stream authenticates with ``?token=<jwt>`` (an ``EventSource`` cannot
set headers; ThingsBoard's WebSocket API does the same).  A stream ends when
its token is revoked (its user deleted, disabled or given a new password,
on any node: ``TokenService.on_revoked``), at once, and when its token
expires, at the next keep-alive; reconnecting with that token gets a 401
(errorCode 11), on which the console refreshes and reconnects.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web

from ..api.keys import CTX
from ..events import HookSink

__all__ = ["EventHub", "events_stream"]

log = logging.getLogger("fleetrpc.console")

_encode = msgspec.json.Encoder().encode
_KEEPALIVE_S = 15.0
#: Devices whose owner (tenant, customer, name) is remembered.
_OWNER_CACHE = 50_000
#: How long (s) a remembered owner is trusted without asking the registry
#: again: how late a device moved by another node reaches this node's streams.
OWNER_TTL_S = 5.0
#: Most event streams open at once (each holds a connection and a buffer).
MAX_STREAMS = 1000
#: Most event streams one user may have open (a browser over HTTP/1.1 opens
#: at most six connections to a host, so this is several browsers' worth).
MAX_STREAMS_PER_USER = 16
#: How long (s) one write to a browser may wait for it to read: a stalled
#: tab's stream ends then.
WRITE_TIMEOUT_S = 30.0
#: Most bytes of events one stream holds for its browser (an event is
#: never dropped for being larger alone: it is sent, then the next).
MAX_BUFFER_BYTES = 2 << 20
_UNKNOWN = object()


def _id(entity_id: Any) -> str | None:
    return entity_id.get("id") if isinstance(entity_id, dict) else entity_id


class _Stream:
    """One browser's connection: who it is, and what it has not read yet."""

    __slots__ = ("principal", "queue", "size", "limit", "dropped", "wake", "revoked")

    def __init__(self, principal: Any, buffer: int, max_bytes: int = MAX_BUFFER_BYTES) -> None:
        self.principal = principal
        self.queue: deque[bytes] = deque()
        #: bytes in ``queue``; at most ``max_bytes`` (and ``buffer`` events)
        self.size = 0
        self.limit = (buffer, max_bytes)
        self.dropped = 0
        self.wake = asyncio.Event()
        #: Its token was revoked: the stream ends.
        self.revoked = False

    def may_see(self, tenant_id: str | None, customer_id: str | None) -> bool:
        p = self.principal
        if tenant_id is None or p.tenant_id != tenant_id:
            return False
        return p.authority == "TENANT_ADMIN" or (p.authority == "CUSTOMER_USER" and customer_id == p.customer_id)

    def offer(self, data: bytes) -> None:
        queue = self.queue
        events, max_bytes = self.limit
        queue.append(data)
        self.size += len(data)
        while len(queue) > 1 and (len(queue) > events or self.size > max_bytes):
            self.size -= len(queue.popleft())  # the oldest
            self.dropped += 1
        self.wake.set()

    def take(self) -> tuple[bytes, int]:
        """Everything buffered, as one chunk, and how many events it holds."""
        queue = self.queue
        n = len(queue)
        chunk = b"".join(queue)
        queue.clear()
        self.size = 0
        return chunk, n


class EventHub:
    """Fans events out to the open streams, each filtered by its user."""

    def __init__(self, ctx: Any, *, buffer: int = 1000, owner_ttl_s: float = OWNER_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.buffer = buffer
        self.owner_ttl_s = owner_ttl_s
        self.write_timeout_s = WRITE_TIMEOUT_S
        self.max_streams_per_user = MAX_STREAMS_PER_USER
        self._clock = clock
        self.streams: set[_Stream] = set()
        # device -> ((tenant, customer, name), or _UNKNOWN for an id that is
        # not in the registry (so a flood of made-up ids costs one query
        # each); until when it is trusted)
        self._owners: OrderedDict[str, tuple[Any, float]] = OrderedDict()
        # bumped by every device change heard: a lookup under way across
        # one is used once, not remembered (it may predate the change)
        self._generation = 0
        # device -> its owner's lookup under way: the events of one device
        # share it, so that they are applied in their order (separate
        # queries on a pool may answer in any order) and a flapping device
        # costs one query, not one per change
        self._lookups: dict[str, asyncio.Future] = {}
        self._devices: Any = None  # the repository whose listener the hub is
        self._online: dict[str, set[str]] = {}  # tenant -> its devices online
        self._tasks: set[asyncio.Task] = set()
        self.sent = 0
        self.dropped = 0
        #: The server is stopping: every stream ends (so the drain is not held up).
        self.closing = False

    def start(self) -> None:
        ctx = self.ctx
        ctx.bus.add(HookSink(self._on_bus_event, name="console"))
        ctx.dispatcher.on_presence(self._on_presence)
        tokens = getattr(ctx, "tokens", None)
        if tokens is not None and hasattr(tokens, "on_revoked"):
            tokens.on_revoked(self.revoked)
        devices = getattr(ctx, "devices", None)
        if devices is not None and hasattr(devices, "add_listener"):
            self._devices = devices
            devices.add_listener(self.devices_changed, other_nodes=True)  # other nodes' changes too

    def devices_changed(self, changes: list[Any]) -> None:
        """The device repository's listener: a device assigned, unassigned,
        renamed or deleted is looked up again at its next event."""
        self._generation += 1
        for change in changes:
            if change.kind == "credentials":  # a new token moves nothing
                continue
            device = str(change.device.id)
            self._owners.pop(device, None)
            self._lookups.pop(device, None)  # (one under way may predate the change: not shared from now on)
            if change.kind == "deleted":
                self._online.get(str(change.device.tenant_id), set()).discard(device)

    def revoked(self, user_id: str, valid_since_ms: int) -> None:
        """A user's tokens issued before ``valid_since_ms`` were revoked:
        end the streams opened with one of them."""
        for s in self.streams:
            p = s.principal
            if p.user_id == user_id and getattr(p, "issued_ms", 0) < valid_since_ms:
                s.revoked = True
                s.wake.set()

    def end_streams(self) -> None:
        """End every open stream now (the server is shutting down)."""
        self.closing = True
        for s in list(self.streams):
            s.wake.set()

    async def close(self) -> None:
        for task in [*self._tasks, *self._lookups.values()]:
            task.cancel()
        tokens = getattr(self.ctx, "tokens", None)
        if tokens is not None and hasattr(tokens, "remove_revocation_listener"):
            try:
                tokens.remove_revocation_listener(self.revoked)
            except ValueError:
                pass
        devices, self._devices = self._devices, None
        if devices is not None:
            try:
                devices.remove_listener(self.devices_changed)
            except ValueError:
                pass
        self.end_streams()

    # -- sources ----------------------------------------------------------------

    async def _on_bus_event(self, event: Any) -> None:
        if not self.streams:
            return
        body = event.body
        device = _id(body.get("deviceId"))
        if event.type.startswith("JOB_"):
            tenant, customer = _id(body.get("tenantId")), _id(body.get("customerId"))
        elif device is not None:
            owner = await self._owner(device)
            if owner is None:
                return
            tenant, customer = owner[0], owner[1]
        else:
            return
        self._publish({"type": event.type, "ts": event.ts, "body": body}, tenant, customer)

    def _on_presence(self, device: str, online: bool) -> None:
        task = asyncio.ensure_future(self._presence(device, online, int(time.time() * 1000)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _presence(self, device: str, online: bool, ts: int) -> None:
        owner = await self._owner(device)
        if owner is None:
            return
        online_now = self._online.setdefault(owner[0], set())
        (online_now.add if online else online_now.discard)(device)
        if self.streams:
            self._publish({"type": "PRESENCE", "deviceId": device, "name": owner[2], "online": online, "ts": ts},
                          owner[0], owner[1])

    async def _owner(self, device_id: str) -> tuple[str, str | None, str] | None:
        entry = self._owners.get(device_id)
        if entry is not None:
            owner, until = entry
            if self._clock() < until:
                self._owners.move_to_end(device_id)
                return None if owner is _UNKNOWN else owner
            del self._owners[device_id]  # perhaps changed by another node: ask again
        lookup = self._lookups.get(device_id)
        if lookup is None:
            lookup = self._lookups[device_id] = asyncio.ensure_future(self._look_up(device_id))
            lookup.add_done_callback(lambda f: self._lookups.pop(device_id, None) if self._lookups.get(device_id) is f
                                     else None)
        # (shielded: one waiter cancelled does not cancel the others' lookup;
        # the waiters resume in the order they began to wait)
        return await asyncio.shield(lookup)

    async def _look_up(self, device_id: str) -> tuple[str, str | None, str] | None:
        generation = self._generation
        try:
            device = await self.ctx.devices.get_by_id(device_id)
        except Exception:  # a malformed id, or the database is down: ask again next time
            return None
        owner = _UNKNOWN if device is None else (device.tenant_id, device.customer_id, device.name)
        if generation == self._generation:
            self._owners[device_id] = (owner, self._clock() + self.owner_ttl_s)
            self._owners.move_to_end(device_id)
            if len(self._owners) > _OWNER_CACHE:
                self._owners.popitem(last=False)
        return None if owner is _UNKNOWN else owner

    def online_count(self, tenant_id: str) -> int:
        """How many of the tenant's devices are online now."""
        return len(self._online.get(tenant_id, ()))

    def forget(self, device_id: str) -> None:
        """A device was deleted: look its owner up again, and count it
        online no more.  (:meth:`devices_changed` does this for the
        repository's changes.)"""
        self._lookups.pop(device_id, None)
        entry = self._owners.pop(device_id, None)
        if entry is not None and entry[0] is not _UNKNOWN:
            self._online.get(entry[0][0], set()).discard(device_id)

    def _publish(self, event: dict, tenant_id: str | None, customer_id: str | None) -> None:
        data = b"data: " + _encode(event) + b"\n\n"
        for s in self.streams:
            if s.may_see(tenant_id, customer_id):
                s.offer(data)


async def events_stream(request: web.Request, hub: EventHub) -> web.StreamResponse:
    """``GET /api/console/events?token=<jwt>``: the user's events as SSE."""
    from ..api.errors import ApiError, ErrorCode

    ctx = request.app[CTX]
    token = request.query.get("token")
    if not token:
        raise ApiError.unauthorized()
    principal = ctx.tokens.authenticate(token)  # raises ApiError 401 (10 or 11)
    if principal.authority not in ("TENANT_ADMIN", "CUSTOMER_USER"):
        raise ApiError.forbidden()
    if hub.closing:
        raise ApiError(503, "Server is shutting down", ErrorCode.GENERAL)
    if len(hub.streams) >= MAX_STREAMS:
        raise ApiError(429, "Too many open event streams", ErrorCode.TOO_MANY_REQUESTS)
    if sum(s.principal.user_id == principal.user_id for s in hub.streams) >= hub.max_streams_per_user:
        raise ApiError(429, f"Too many open event streams of this user (at most {hub.max_streams_per_user})",
                       ErrorCode.TOO_MANY_REQUESTS)
    resp = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
    })
    await resp.prepare(request)
    stream = _Stream(principal, hub.buffer)
    hub.streams.add(stream)
    if not ctx.tokens.still_valid(principal):  # revoked while the response was being prepared
        stream.revoked = True
        stream.wake.set()

    async def write(data: bytes) -> None:
        # waits while the browser is slow (the deque bounds what piles up
        # meanwhile); one that does not read at all is let go
        await asyncio.wait_for(resp.write(data), hub.write_timeout_s)

    try:
        await write(b": connected\n\n")
        while True:
            try:
                await asyncio.wait_for(stream.wake.wait(), _KEEPALIVE_S)
            except asyncio.TimeoutError:
                if not ctx.tokens.still_valid(principal):
                    break  # expired (or revoked while this node missed it): the console logs in again
                await write(b": keepalive\n\n")
                continue
            stream.wake.clear()
            if hub.closing or stream.revoked:
                break
            if stream.dropped:
                n, stream.dropped = stream.dropped, 0
                hub.dropped += n
                await write(b"data: " + _encode({"type": "DROPPED", "count": n}) + b"\n\n")
            while stream.queue:
                chunk, n = stream.take()
                await write(chunk)
                hub.sent += n
            if request.transport is None or request.transport.is_closing():
                break
    except asyncio.TimeoutError:
        # it stopped reading: drop the connection and the bytes its
        # transport holds (closing would wait for them to be read)
        if request.transport is not None:
            request.transport.abort()
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        hub.streams.discard(stream)
    return resp
