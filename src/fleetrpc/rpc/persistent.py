"""The persistent-RPC lifecycle: the one place a persistent call's status changes.

A persistent call outlives a disconnected device and a restart of the server:

1. ``call()`` builds the record and waits until its QUEUED row is committed
   (group commit batches concurrent callers into one transaction), then
   returns its id.
2. The call joins its device's queue in the dispatcher; offline devices hold
   it until they come online.  While queued, the only deadline is the
   call's ``expirationTime``.
3. Published: SENT, and the transport timeout of this attempt is armed.
   The device's ack makes it DELIVERED (a one-way call ends there); its
   reply makes it SUCCESSFUL with the reply stored.  A device's ack is
   optional (docs/protocol.md), so a one-way call is published at most
   once: its retries apply only before it is published, and once SENT, the
   attempt's timeout passing without an ack makes it DELIVERED too (the
   request reached the broker for a device that was online; a ``reboot``
   never runs twice because the device stayed silent).
4. The transport timeout passes: TIMEOUT, then another attempt while
   retries remain (same request id in the payload, so the device SDK answers
   a duplicate from memory), else FAILED.  ``expirationTime`` passing first
   makes it EXPIRED.  ``delete()`` makes it DELETED: removed from the store
   and never sent after that.

Tenants: every call belongs to one.  Every operation takes ``tenant_id``
and sees only that tenant's calls (another tenant's call is "not found");
leaving it out means the engine's ``default_tenant`` -- the library's one
tenant, ``"default"``.  A server builds the engine with
``default_tenant=None``, and then an operation without a tenant is refused.

Queue cap: a device has at most ``queue_cap`` unfinished persistent calls
(default :data:`DEFAULT_QUEUE_CAP`; in a cluster, a node that does not own
the device's partition counts them in the database, so calls stored at the
same moment through several nodes may exceed it by a few); beyond it ``call()`` raises
:class:`QueueFullError` before anything is stored.  Calls beyond the
dispatcher's own per-device queue (``Settings.queue_cap``, for calls held
while a device is offline) wait here, stored and QUEUED, and are handed to
the dispatcher in order as its queue makes room -- ThingsBoard queues them
too.

Several nodes (``leases``, a :class:`~fleetrpc.cluster.LeaseManager` on
PostgreSQL): a call is driven only by the node that owns its device's
partition, so a device keeps one queue and no call is sent by two nodes.
Any node stores a call; when it is not the owner it tells the owner
(:mod:`.cluster`: a database notification, and the owner's periodic scan).
On gaining partitions the engine loads and resumes their unfinished calls;
on losing them (a hand-over, or its lease lapsing) it drops them at once,
sends nothing more for them and flushes what it wrote, and its status writes
carry the partition's epoch so that none lands once the partition has moved
(``StatusChange.epoch``).  ``wait()`` and ``get()`` of a call driven by
another node read the database.

Every change goes through :meth:`PersistentRpc._set_status`, which checks the
transition (``status.check_transition``), queues the optimistic write, and
emits the event (``RPC_QUEUED`` ... ``RPC_DELETED``) carrying the whole
record.  On start every unfinished call is recovered from the store.

Writes after the insert do not hold up dispatch.  On a group-commit store
they are handed over with ``post_change`` (no task, no future per write;
the store tells the engine about each batch at once, as its
``WriteListener``), which keeps each call's writes in order and may merge
a call's consecutive changes that are still queued into one row update
(see ``store/batching.py``); on any other store each call's writes run one after
the other, in order, while different calls' writes run concurrently.  A
write that fails because the database is unavailable holds back every
later write; they are retried in the order they were made until they
commit, so the store converges on the state the engine acted on.  A write
the database refuses for its content fails alone and holds nothing back:
a reply the database cannot store (see ``store.base.storable_problem``:
U+0000 anywhere, which PostgreSQL refuses) is caught before the status
changes and the call ends FAILED, ``error`` saying why, the reply not
stored; a write refused for a reason not caught before is written again
without its reply, with ``error`` saying so, once.  ``wait(rpc_id, durable=True)``
returns once the call's final status is committed; ``flush()`` once every
write made so far is.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
import logging
import os
import time
import uuid
from collections.abc import Sequence
from typing import Any, Callable

import msgspec

from .. import _core
from ..config import Settings
from ..dispatch import CallObserver, Counters, Dispatcher
from ..dispatch.options import (
    NO_PARAMS,
    check_expiration_time,
    check_flag,
    check_method,
    check_request_uuid,
    check_retries,
    check_timeout_ms,
    effective_retries,
    effective_timeout_ms,
)
from ..cluster.partition import partition_of
from ..wire import validate_id
from ..errors import (
    DispatcherClosedError,
    DuplicateRpcError,
    FleetRpcError,
    QueueFullError,
    ReplyNotJsonError,
    RpcNotFoundError,
    RpcTimeoutError,
    StoreError,
    StoreUnavailableError,
    ValidationError,
)
from .status import MOVES, TERMINAL, RpcStatus, check_transition, event_type
from ..store.base import (
    Page,
    RpcRecord,
    StatusChange,
    Store,
    check_tenant,
    storable_problem,
    storable_text,
    text_problem,
)

log = logging.getLogger("fleetrpc.rpc.persistent")

#: The library's one tenant.
DEFAULT_TENANT = "default"
#: Most unfinished persistent calls of one device (the engine's ``queue_cap``).
DEFAULT_QUEUE_CAP = 1000
#: How often calls waiting in the engine for room in the dispatcher's queue
#: are checked for expiry (seconds).
BACKLOG_SWEEP_S = 1.0
#: Resolution of ``wait(timeout=...)`` (seconds): a wait times out at most
#: this much after its timeout.
WAIT_TICK_S = 0.05

_UNSET = msgspec.UNSET
_replace = msgspec.structs.replace

Q, S, D, OK, T, E, F, X = (
    RpcStatus.QUEUED, RpcStatus.SENT, RpcStatus.DELIVERED, RpcStatus.SUCCESSFUL,
    RpcStatus.TIMEOUT, RpcStatus.EXPIRED, RpcStatus.FAILED, RpcStatus.DELETED,
)


def _is_error_reply(result: Any) -> bool:
    """The SDK's error reply: exactly ``{"error": {"code": ..., "message": ...}}``."""
    return (
        type(result) is dict and len(result) == 1
        and type(result.get("error")) is dict and "code" in result["error"]
    )


_time = time.time


def _now_ms() -> int:
    return int(_time() * 1000)


# The RFC 4122 variant nibble (10xx) from any random hex digit.
_VARIANT = {f"{n:x}": f"{8 | n & 3:x}" for n in range(16)}


class _Uuid4Source:
    """Random (version 4) UUID strings, as ``str(uuid.uuid4())``, from
    ``os.urandom`` read 4 KiB at a time: a system call per 256 ids instead
    of one per id."""

    __slots__ = ("_hex", "_pos")

    _CHUNK = 4096

    def __init__(self) -> None:
        self._hex = ""
        self._pos = 0

    def __call__(self) -> str:
        pos = self._pos
        h = self._hex
        if pos >= len(h):
            h = self._hex = os.urandom(self._CHUNK).hex()
            pos = 0
        self._pos = pos + 32
        return (f"{h[pos:pos + 8]}-{h[pos + 8:pos + 12]}-4{h[pos + 13:pos + 16]}-"
                f"{_VARIANT[h[pos + 16]]}{h[pos + 17:pos + 20]}-{h[pos + 20:pos + 32]}")


def _time_out(fut: asyncio.Future, rpc_id: str, timeout: float) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError(f"RPC {rpc_id} did not finish within {timeout} s"))


#: What a waiter of a call gets when its partition moves to another node.
_MOVED = object()


class _Held(Exception):
    """A write not attempted because an earlier one still has to land."""


class _Live(CallObserver):
    """A persistent call the engine is driving: its record and its current
    attempt in the dispatcher.  It is the dispatcher completion, too."""

    __slots__ = ("dropped", "durable", "engine", "epoch", "partition", "record", "rid", "waiters", "write")

    def __init__(self, engine: "PersistentRpc", record: RpcRecord, partition: int | None = None,
                 epoch: int | None = None) -> None:
        self.engine = engine
        self.record = record
        #: the device's partition and the epoch this node owns it under
        #: (a cluster), fencing this call's status writes; None: one node
        self.partition = partition
        self.epoch = epoch
        #: its partition was lost: this node no longer acts on it
        self.dropped = False
        self.rid: int | None = None
        #: waiters for the final status (wait()), None until there is one
        self.waiters: list[asyncio.Future] | None = None
        #: waiters for the final status to be committed (wait(durable=True))
        self.durable: list[asyncio.Future] | None = None
        #: the future of this call's latest status write (or the retry task)
        self.write: asyncio.Future | None = None

    # What the dispatcher tells about the current attempt.  (The engine's
    # handling is here, not in methods of the engine these would call: a
    # frame less per notification.)

    def sent(self, rid: int, device: str) -> None:
        if self.dropped:
            return
        engine, rec = self.engine, self.record
        if rec.status is T:
            engine.stats.retries += 1
        engine._set_status(self, S, attempts=rec.attempts + 1)
        engine.stats.sent += 1
        # The dispatcher armed this attempt's transport timeout when it sent it.
        if engine._backlog:  # a held call left the device's queue: room for one
            engine._pump_soon(rec.device_id)

    def acked(self, rid: int, device: str) -> bool:
        if self.dropped:
            return True
        engine, rec = self.engine, self.record
        if rec.status is S:
            engine._set_status(self, D)
            engine.stats.delivered += 1
        if rec.oneway:
            self.rid = None
            engine._finalize(self)
            return True
        return False

    def __call__(self, rid: int, device: str, result: Any, error: BaseException | None) -> None:
        """The attempt ended: the reply (``result``) or ``error``."""
        if self.dropped:
            return
        self.rid = None
        engine, rec = self.engine, self.record
        if engine._backlog:
            engine._pump_soon(rec.device_id)
        status = rec.status
        if status in TERMINAL or (status is D and rec.oneway):
            return
        if error is None and not rec.oneway:
            problem = storable_problem(result)
            if problem is not None:
                # A reply the database would refuse must not reach it: that
                # write would fail (and, before, held back every other).
                engine.stats.reply_refused += 1
                engine._finish(self, F, error=f"the device's reply cannot be stored: {problem}")
                return
            if type(result) is dict and len(result) == 1 and _is_error_reply(result):
                # The device could not run it (e.g. METHOD_NOT_FOUND: the
                # firmware does not support the command): FAILED, as the
                # guide says, with the device's answer kept.
                err = result["error"]
                engine._finish(self, F, response=result, error=storable_text(
                    f"device error {err.get('code', '')}: {err.get('message', '')}"))
                return
            engine.stats.successful += 1
            engine._set_status(self, OK, response=result)
        elif error is None:
            # A device that answers a one-way call instead of acking it ran
            # it: delivered (a one-way call stores no reply).
            engine.stats.delivered += 1
            engine._set_status(self, D)
        elif isinstance(error, RpcTimeoutError):
            engine._on_timeout(self)
        elif isinstance(error, ReplyNotJsonError):
            engine._finish(self, F, error=str(error))
        elif isinstance(error, DispatcherClosedError):
            pass  # shutting down: the row stays as it is, recovered later
        else:
            engine._finish(self, F, error=f"{type(error).__name__}: {error}")


class PersistentStats(Counters):
    """Counters of one persistent-RPC engine."""

    __slots__ = ("queued", "sent", "delivered", "successful", "timeouts", "retries",
                 "expired", "failed", "deleted", "recovered", "write_errors", "purged",
                 "write_refused", "reply_refused", "oneway_unacked", "backlogged",
                 "handed_to_owner", "taken_over", "dropped", "cluster_loads")


class PersistentRpc:
    """Persistent RPCs on top of a :class:`Dispatcher` and a :class:`Store`.

    ``store`` should be a :class:`~fleetrpc.store.batching.GroupCommitStore`
    (``open_store(url, group_commit=True)``) for throughput; any store works.
    ``emit(event_type, body)`` receives every event (see ``events.py``).
    ``default_tenant`` is the tenant of operations that name none (None:
    every operation must name one).  ``queue_cap`` is the most unfinished
    calls one device may have.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        store: Store,
        settings: Settings | None = None,
        *,
        emit: Callable[[str, dict], None] | None = None,
        default_tenant: str | None = DEFAULT_TENANT,
        queue_cap: int = DEFAULT_QUEUE_CAP,
        leases: Any = None,
        poll_interval_s: float = 5.0,
    ) -> None:
        if default_tenant is not None:
            check_tenant(default_tenant)
        if type(queue_cap) is not int or queue_cap < 1:
            raise ValidationError(f"queue_cap must be an integer >= 1, not {queue_cap!r}")
        self.dispatcher = dispatcher
        self.store = store
        self.settings = settings or dispatcher.settings
        self.default_tenant = default_tenant
        self.queue_cap = queue_cap
        self.node_id = self.settings.node_id
        self.stats = PersistentStats()
        self._emit = emit
        self._live: dict[str, _Live] = {}
        self._per_device: dict[str, int] = {}  # unfinished calls per device
        # Calls waiting for room in the dispatcher's queue of their device,
        # in order (stored and QUEUED).
        self._backlog: dict[str, deque[_Live]] = {}
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._pumping: set[str] = set()  # devices with a _pump scheduled
        # a refused write -> (the write made instead or None, its change);
        # durable waiters follow it
        self._replaced: dict[Any, tuple[Any, StatusChange]] = {}
        # writes made instead of a refused one -> their change (refused again: give up)
        self._salvaging: dict[Any, StatusChange] = {}
        # A group-commit store takes writes without a future or a task,
        # keeps each call's writes in order and tells this engine about a
        # whole batch at once (changes_written / changes_failed).
        self._post_change: Callable[[StatusChange, Any], Any] | None = getattr(
            store, "post_change", None
        )
        self._submit_insert: Callable[[RpcRecord], asyncio.Future] | None = getattr(
            store, "submit_insert", None
        )
        # Every write not yet landed (its handle: the group-commit store's
        # write, or a task on other stores) -> its change.
        self._writes: dict[Any, StatusChange] = {}
        self._last_write: dict[str, asyncio.Future] = {}  # per call (other stores)
        # durable waiters waiting for a write to land: write -> [(waiters, record)]
        self._after_write: dict[Any, list[tuple[list[asyncio.Future], RpcRecord]]] = {}
        # flush() calls: (the writes still to land, its future)
        self._flushes: list[tuple[set, asyncio.Future]] = []
        # A write failed: it and every later write wait in line for a retry.
        # Only the order of one call's writes matters (each is a different
        # row), and the line keeps it: a call's writes fail, and so join the
        # line, in the order they were made, and writes made while holding
        # come after them.
        self._holding = False
        self._held: list[StatusChange] = []  # failed, in the order they failed
        self._later: list[StatusChange] = []  # made while holding
        self._retry_task: asyncio.Task | None = None
        self._ttl_task: asyncio.Task | None = None
        self._closed = False
        self._new_id = _Uuid4Source()
        # wait() deadlines: key -> (future, rpc id, timeout, wheel handle)
        self._timed: dict[int, tuple[asyncio.Future, str, float, int]] = {}
        self._wait_wheel: Any = None
        self._wait_timer: asyncio.TimerHandle | None = None
        self._wait_seq = 0
        # Several nodes: the lease manager when this engine is one of a
        # cluster (PostgreSQL), else None (every call is this node's).
        self._leases = leases if leases is not None and not leases.single_node else None
        self.poll_interval_s = poll_interval_s
        self._link: Any = None  # .cluster.NotifyLink
        self._load_lock: asyncio.Lock | None = None
        # Calls this node finished lately (id -> loop time): a scan that read
        # the row before the final write landed must not resume it again.
        self._recent: dict[str, float] = {}
        self._pending_ids: dict[str, int] = {}  # notified, not loaded yet -> partition
        self._loader: asyncio.Task | None = None
        self._poll_task: asyncio.Task | None = None
        self._rescan_all = False

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> int:
        """Recover every unfinished call from the store; start the TTL job.
        Returns how many calls were recovered.  In a cluster: resume the
        calls of the partitions this node owns, and from now on those of
        the partitions it gains."""
        if self._leases is not None:
            return await self._start_cluster()
        records = await self.store.claim_unfinished(self.node_id)
        for record in records:
            self._recover(record)
        self.stats.recovered += len(records)
        if self.settings.ttl_enabled and self.settings.ttl_check_interval_s > 0:
            self._ttl_task = asyncio.ensure_future(self._ttl_loop())
        return len(records)

    async def close(self) -> None:
        """Stop; unfinished calls stay stored and are recovered next start."""
        self._closed = True
        for task in (self._poll_task, self._loader):
            if task is not None:
                task.cancel()
        if self._link is not None:
            await self._link.close()
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        if self._wait_timer is not None:
            self._wait_timer.cancel()
            self._wait_timer = None
        self._backlog.clear()
        for task in (self._ttl_task, self._retry_task):
            if task is not None:
                task.cancel()
        for live in list(self._live.values()):
            if live.rid is not None:
                self.dispatcher.cancel(live.rid)
                live.rid = None
        await self.flush()

    # -- API ----------------------------------------------------------------

    def _tenant(self, tenant_id: str | None) -> str:
        """The tenant of an operation: the one given, else the default one."""
        if tenant_id is None:
            tenant_id = self.default_tenant
            if tenant_id is None:
                raise ValidationError("tenant_id is required (this engine has no default tenant)")
            return tenant_id
        check_tenant(tenant_id)
        return tenant_id

    async def call(
        self,
        device: str,
        method: str,
        params: Any = NO_PARAMS,
        *,
        timeout_ms: int | None = None,
        expiration_time: int | None = None,
        oneway: bool = False,
        retries: int | None = None,
        additional_info: Any = None,
        request_uuid: str | None = None,
        tenant_id: str | None = None,
    ) -> str:
        """Store a persistent call (QUEUED, committed) and start delivering
        it; returns its id.  ``timeout_ms`` is one attempt's transport
        timeout (default 10 s, raised to the minimum); ``expiration_time``
        (epoch ms) ends the call when it passes; ``retries`` (default 0) is
        capped by the configured maximum.  Everything is checked before
        anything is stored: bad arguments, a request over ``max_payload``,
        values the database cannot store raise :class:`ValidationError`; a
        device with ``queue_cap`` unfinished calls raises
        :class:`QueueFullError`."""
        proto = self._prototype(method, params, timeout_ms, expiration_time, oneway, retries,
                                additional_info, tenant_id)
        record, payload = self._for_device(proto, device, request_uuid)
        if self._per_device.get(device, 0) >= self.queue_cap or await self._full_elsewhere(device):
            raise self._queue_full(device)
        if self._submit_insert is not None:
            await self._submit_insert(record)  # resolves once committed
        else:
            await self.store.insert(record)  # returns once committed
        return self._stored(record, payload)

    async def call_many(
        self,
        devices: Sequence[str],
        method: str,
        params: Any = NO_PARAMS,
        *,
        request_uuids: Sequence[str | None] | None = None,
        timeout_ms: int | None = None,
        expiration_time: int | None = None,
        oneway: bool = False,
        retries: int | None = None,
        additional_info: Any = None,
        tenant_id: str | None = None,
    ) -> list[str | FleetRpcError]:
        """:meth:`call` to each of ``devices`` with the same options (a fleet
        job's batch): the options are checked once, the calls are stored
        together (one group-commit batch, or one transaction) and each
        starts as it is committed.  ``request_uuids``, if given, has one id
        (or None) per device.  Returns, per device, its call's id or the
        error that kept that call from being stored (a bad device id, a
        full queue, :class:`DuplicateRpcError` for an id already taken, the
        store's error): one bad device does not stop the others.  Bad
        options raise, before anything is stored."""
        proto = self._prototype(method, params, timeout_ms, expiration_time, oneway, retries,
                                additional_info, tenant_id)
        if request_uuids is not None and len(request_uuids) != len(devices):
            raise ValidationError("request_uuids must have one id per device")
        out: list[Any] = [None] * len(devices)
        todo: list[tuple[int, RpcRecord, bytes]] = []
        per_device = self._per_device
        cap = self.queue_cap
        taken: dict[str, int] = {}  # calls of this batch per device (a device named twice)
        for i, device in enumerate(devices):
            try:
                record, payload = self._for_device(proto, device, None if request_uuids is None
                                                   else request_uuids[i])
                n = taken.get(device, 0)
                if per_device.get(device, 0) + n >= cap or (not n and await self._full_elsewhere(device)):
                    raise self._queue_full(device)
            except FleetRpcError as exc:
                out[i] = exc
                continue
            taken[device] = n + 1
            todo.append((i, record, payload))
        stored: list[tuple[int, RpcRecord, bytes]] = []
        if self._submit_insert is not None:
            futs = [self._submit_insert(record) for _, record, _ in todo]
            for call, fut in zip(todo, futs):
                try:
                    await fut  # resolves once committed (one batch commits many)
                except FleetRpcError as exc:
                    out[call[0]] = exc
                    continue
                stored.append(call)
        else:
            try:
                result = await self.store.write([record for _, record, _ in todo], ())
            except FleetRpcError as exc:
                result = None
                for i, _, _ in todo:
                    out[i] = exc
            for call, ok in zip(todo, result.inserted if result is not None else ()):
                if ok:
                    stored.append(call)
                else:
                    out[call[0]] = DuplicateRpcError(f"RPC {call[1].id} already exists")
        # Started together once all are stored, with no await up to the
        # return: a caller that follows each with final() right away finds
        # every one still live (no call can end in between).
        for i, record, payload in stored:
            out[i] = self._stored(record, payload)
        return out

    def _prototype(self, method: str, params: Any, timeout_ms: int | None, expiration_time: int | None,
                   oneway: bool, retries: int | None, additional_info: Any,
                   tenant_id: str | None) -> RpcRecord:
        """The record a call with these options starts from (its id and
        device filled in per call).  One set of rules for a call's options
        (fleetrpc.dispatch.options): ThingsBoard's, the same as the REST
        body's.  (The checks of options left out are skipped: None is what
        each returns for None.)  Raises ValidationError."""
        if self._closed:
            raise DispatcherClosedError("persistent RPC engine is closed")
        if tenant_id is None:
            tenant_id = self._tenant(None)
        else:
            check_tenant(tenant_id)
        method = check_method(method)
        if oneway is not False:
            oneway = check_flag(oneway, "oneway")
        if retries is not None:
            retries = check_retries(retries)
        if expiration_time is not None:
            expiration_time = check_expiration_time(expiration_time)
        s = self.settings
        timeout = effective_timeout_ms(None if timeout_ms is None else check_timeout_ms(timeout_ms), s)
        now = int(_time() * 1000)
        if expiration_time is None:
            expiration_time = now + timeout
        record = RpcRecord(
            id="",
            tenant_id=tenant_id,
            device_id="",
            created_time=now,
            expiration_time=expiration_time,
            method=method,
            params={} if params is NO_PARAMS else params,
            oneway=oneway,
            retries=effective_retries(retries, s),
            timeout_ms=timeout,
            additional_info=additional_info,
            owner_node=self.node_id,
        )
        problem = text_problem(method)
        if problem is not None:
            raise ValidationError(f"method cannot be stored: {problem}")
        problem = storable_problem(record.params)
        if problem is not None:
            raise ValidationError(f"params cannot be stored: {problem}")
        if additional_info is not None:  # None is always storable
            problem = storable_problem(additional_info)
            if problem is not None:
                raise ValidationError(f"additionalInfo cannot be stored: {problem}")
        return record

    def _for_device(self, proto: RpcRecord, device: str, request_uuid: str | None) -> tuple[RpcRecord, bytes]:
        """``proto``'s call to ``device`` and its request payload.  Refused
        before it is stored: a request over max_payload could never be
        sent.  Encoded once: the first attempt sends this payload."""
        validate_id("device", device)
        if request_uuid is not None:
            request_uuid = check_request_uuid(request_uuid)
        record = _replace(proto, id=request_uuid or self._new_id(), device_id=device)
        return record, self.dispatcher.request_payload(record.method, record.params, record.id)

    async def _full_elsewhere(self, device: str) -> bool:
        """In a cluster the owner of the device's partition counts its calls
        in memory; another node asks the database."""
        return (
            self._leases is not None and device not in self._per_device
            and self._leases.token(partition_of(device, self._leases.partitions)) is None
            and await self.store.unfinished_count(device) >= self.queue_cap
        )

    def _queue_full(self, device: str) -> QueueFullError:
        return QueueFullError(
            f"device {device!r} already has {self.queue_cap} unfinished persistent calls (queue_cap)"
        )

    def _stored(self, record: RpcRecord, payload: bytes) -> str:
        """A call just committed (QUEUED): drive it, or hand it to the node
        that owns its device's partition.  Returns its id."""
        if self._leases is not None:
            partition = partition_of(record.device_id, self._leases.partitions)
            epoch = self._leases.token(partition)
            if epoch is None or record.id in self._live:
                # Another node drives it (or this one already loaded it).
                self.stats.queued += 1
                self._event(RpcStatus.QUEUED, record)
                if epoch is None:
                    self.stats.handed_to_owner += 1
                    self._link.post("n", partition, record.id)
                return record.id
            live = self._track(record, partition, epoch)
            self.stats.queued += 1
            self._event(RpcStatus.QUEUED, record)
            self._dispatch(live, payload)
            return record.id
        live = self._track(record)
        self.stats.queued += 1
        if self._emit is not None:
            self._event(Q, record)
        self._dispatch(live, payload)
        return record.id

    def _own_live(self, rpc_id: str, tenant_id: str) -> _Live | None:
        """The live call ``rpc_id`` if it is that tenant's."""
        live = self._live.get(rpc_id)
        return live if live is not None and live.record.tenant_id == tenant_id else None

    async def get(self, rpc_id: str, tenant_id: str | None = None) -> RpcRecord:
        """That tenant's call as it is now.  Raises RpcNotFoundError."""
        tenant_id = self._tenant(tenant_id)
        live = self._own_live(rpc_id, tenant_id)
        if live is not None:
            return msgspec.structs.replace(live.record)
        # Its last status change may still be on its way to the store.
        await self.flush()
        record = await self.store.get(rpc_id, tenant_id)
        if record is None:
            raise RpcNotFoundError(f"no persistent RPC {rpc_id!r}")
        return record

    async def list_by_device(self, device_id: str, *, tenant_id: str | None = None, **query: Any) -> Page:
        """ThingsBoard's ``GET /api/rpc/persistent/device/{deviceId}``, that
        tenant's calls only: ``page_size``, ``page``, ``status``,
        ``sort_property``, ``sort_order``, ``text_search``."""
        tenant_id = self._tenant(tenant_id)
        await self.flush()
        return await self.store.list_by_device(device_id, tenant_id=tenant_id, **query)

    async def delete(self, rpc_id: str, tenant_id: str | None = None) -> RpcRecord:
        """Delete that tenant's call (RPC_DELETED); a QUEUED call is never
        sent after this.  Raises RpcNotFoundError (also for another
        tenant's call, which is left alone)."""
        tenant_id = self._tenant(tenant_id)
        live = self._own_live(rpc_id, tenant_id)
        if live is None and self._leases is not None:
            record = await self.store.delete(rpc_id, tenant_id)
            if record is None:
                raise RpcNotFoundError(f"no persistent RPC {rpc_id!r}")
            if record.status not in TERMINAL and not (record.oneway and record.status is D):
                # Its owner drops it (it would find the row gone anyway).
                self._link.post("d", partition_of(record.device_id, self._leases.partitions), rpc_id)
            record.status = X
            self.stats.deleted += 1
            self._event(X, record)
            return record
        if live is not None:
            if live.rid is not None:
                self.dispatcher.cancel(live.rid)
                live.rid = None
                if self._backlog:  # its place in the device's queue is free
                    self._pump_soon(live.record.device_id)
            self._set_status(live, X, write=False)
        await self.flush()
        record = await self.store.delete(rpc_id, tenant_id)
        if record is None and live is None:
            raise RpcNotFoundError(f"no persistent RPC {rpc_id!r}")
        if record is None:
            record = live.record
        if live is None:
            # a finished call: the event still carries the whole record
            record.status = X
            self.stats.deleted += 1
            self._event(X, record)
        return record

    async def wait(self, rpc_id: str, timeout: float | None = None, *, durable: bool = False,
                   tenant_id: str | None = None) -> RpcRecord:
        """Wait until that tenant's call is finished; returns its final
        record.  With ``durable``, wait until that final status is committed
        to the store, too (through retries, if the database is down
        meanwhile).  Raises TimeoutError after ``timeout`` seconds (at most
        :data:`WAIT_TICK_S` later), leaving the call as it is;
        RpcNotFoundError when the tenant has no such call."""
        if tenant_id is None:
            tenant_id = self._tenant(None)
        else:
            check_tenant(tenant_id)
        live = self._live.get(rpc_id)
        if live is None or live.record.tenant_id != tenant_id:
            if self._leases is not None:
                return await self._wait_remote(rpc_id, tenant_id, timeout)
            return await self.get(rpc_id, tenant_id)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if durable:
            if live.durable is None:
                live.durable = []
            live.durable.append(fut)
        elif live.waiters is None:
            live.waiters = [fut]
        else:
            live.waiters.append(fut)
        if timeout is None:
            result = await fut
            if result is _MOVED:  # its partition moved to another node
                return await self._wait_remote(rpc_id, tenant_id, None)
            return result
        # The deadline goes into the engine's own timing wheel: no timer
        # handle per wait (asyncio.wait_for would add a second future, a
        # timer, a callback and a task switch per wait).
        started = loop.time()
        key = self._wait_deadline(loop, fut, rpc_id, timeout)
        try:
            result = await fut
        finally:
            entry = self._timed.pop(key, None)
            if entry is not None:
                self._wait_wheel.cancel(entry[3])
        if result is _MOVED:
            return await self._wait_remote(rpc_id, tenant_id, max(0.0, timeout - (loop.time() - started)))
        return result

    def final(self, rpc_id: str, *, tenant_id: str | None = None) -> asyncio.Future[RpcRecord]:
        """A future of that tenant's call's final record: :meth:`wait`
        without a timeout, for a caller following many calls at once (a
        fleet job), with no task per call while this node drives it (asked
        right after :meth:`call_many` returns, every call it started is).
        Cancelling the future leaves the call as it is."""
        if tenant_id is None:
            tenant_id = self._tenant(None)
        else:
            check_tenant(tenant_id)
        live = self._live.get(rpc_id)
        if live is None or live.record.tenant_id != tenant_id:
            return asyncio.ensure_future(self.wait(rpc_id, tenant_id=tenant_id))
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if live.waiters is None:
            live.waiters = [fut]
        else:
            live.waiters.append(fut)
        if self._leases is None:
            return fut
        # In a cluster the call's partition may move to another node: its
        # waiter then learns _MOVED, and the call is followed from there on
        # as wait() follows it (a task only for a call that moved).
        outer = loop.create_future()
        fut.add_done_callback(functools.partial(self._final_relay, outer, rpc_id, tenant_id))
        return outer

    def _final_relay(self, outer: asyncio.Future, rpc_id: str, tenant_id: str, fut: asyncio.Future) -> None:
        if outer.done() or fut.cancelled():
            return
        result = fut.result()  # (the engine only ever sets a result on a waiter)
        if result is not _MOVED:
            outer.set_result(result)
            return
        follow = asyncio.ensure_future(self._wait_remote(rpc_id, tenant_id, None))
        outer.add_done_callback(lambda o: follow.cancel() if o.cancelled() else None)

        def relay(t: asyncio.Future) -> None:
            if outer.done() or t.cancelled():
                return
            if t.exception() is not None:
                outer.set_exception(t.exception())
            else:
                outer.set_result(t.result())

        follow.add_done_callback(relay)

    def _wait_deadline(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future,
                       rpc_id: str, timeout: float) -> int:
        wheel = self._wait_wheel
        now = loop.time()
        if wheel is None:
            wheel = self._wait_wheel = _core.TimingWheel(WAIT_TICK_S, now)
        self._wait_seq = key = self._wait_seq + 1
        handle = wheel.schedule(now + timeout, key)  # ValueError for NaN, inf
        self._timed[key] = (fut, rpc_id, timeout, handle)
        if self._wait_timer is None:
            self._wait_timer = loop.call_at(now + WAIT_TICK_S, self._on_wait_tick)
        return key

    def _on_wait_tick(self) -> None:
        self._wait_timer = None
        loop = asyncio.get_running_loop()
        for key in self._wait_wheel.advance(loop.time()):
            entry = self._timed.pop(key, None)
            if entry is not None:
                _time_out(entry[0], entry[1], entry[2])
        if self._timed:
            self._wait_timer = loop.call_at(loop.time() + WAIT_TICK_S, self._on_wait_tick)

    async def flush(self) -> None:
        """Wait until every status write made so far has been attempted:
        committed, or failed and held for a retry."""
        if self._writes:
            fut = asyncio.get_running_loop().create_future()
            self._flushes.append((set(self._writes), fut))
            await fut

    @property
    def unfinished(self) -> int:
        return len(self._live)

    # -- dispatching --------------------------------------------------------

    def _track(self, record: RpcRecord, partition: int | None = None, epoch: int | None = None) -> _Live:
        live = _Live(self, record, partition, epoch)
        self._live[record.id] = live
        device = record.device_id
        self._per_device[device] = self._per_device.get(device, 0) + 1
        return live

    def _dispatch(self, live: _Live, payload: bytes | None = None) -> None:
        """Hand the call to the dispatcher for one attempt; behind the calls
        of its device already waiting for room, if any.  ``payload``: its
        request, already encoded (the first attempt)."""
        if self._backlog:
            backlog = self._backlog.get(live.record.device_id)
            if backlog:
                backlog.append(live)
                self.stats.backlogged += 1
                return
        if not self._submit(live, payload):
            self._wait_for_room(live)

    def _submit(self, live: _Live, payload: bytes | None = None) -> bool:
        """One attempt into the dispatcher; False when the device's queue
        there is full (the call then waits here)."""
        rec = live.record
        if live.epoch is not None and not self._leases.owns(live.partition):
            return True  # the partition was lost: its new owner sends it
        until_expiry = (rec.expiration_time - int(_time() * 1000)) / 1000.0
        if until_expiry <= 0:
            self._finish(live, E, error="expired before it could be sent")
            return True
        try:
            live.rid = self.dispatcher.submit(
                rec.device_id, rec.method, rec.params, live,
                deadline=asyncio.get_running_loop().time() + until_expiry,
                attempt_timeout=rec.timeout_ms / 1000.0, oneway=rec.oneway, request_id=rec.id,
                payload=payload,
            )
        except QueueFullError:
            return False
        except DispatcherClosedError:
            live.rid = None  # stays stored; recovered on the next start
        except Exception as exc:  # bad device id ...
            self._finish(live, F, error=f"{type(exc).__name__}: {exc}")
        return True

    def _wait_for_room(self, live: _Live) -> None:
        self._backlog.setdefault(live.record.device_id, deque()).append(live)
        self.stats.backlogged += 1
        if self._sweep_handle is None:
            self._sweep_handle = asyncio.get_running_loop().call_later(BACKLOG_SWEEP_S, self._sweep)

    def _pump_soon(self, device: str) -> None:
        """:meth:`_pump` once the dispatcher is done with what it is doing:
        never re-enter it in the middle of a send (a release of many held
        calls would see later calls overtake them)."""
        if device in self._backlog and device not in self._pumping:
            self._pumping.add(device)
            asyncio.get_running_loop().call_soon(self._pump, device)

    def _pump(self, device: str) -> None:
        """Room may have freed in the device's dispatcher queue: hand over
        its waiting calls, in order, while they fit."""
        self._pumping.discard(device)
        backlog = self._backlog.get(device)
        while backlog and not self._closed:
            live = backlog[0]
            if self._live.get(live.record.id) is not live:  # finished meanwhile (deleted)
                backlog.popleft()
                continue
            if not self._submit(live):
                return
            backlog.popleft()
        self._backlog.pop(device, None)

    def _sweep(self) -> None:
        """Calls waiting for room have no deadline in the dispatcher: end
        those whose expiration time passed."""
        self._sweep_handle = None
        now = _now_ms()
        for device, backlog in list(self._backlog.items()):
            for live in [x for x in backlog if x.record.expiration_time <= now]:
                backlog.remove(live)
                if self._live.get(live.record.id) is live:
                    self._finish(live, E, error="not delivered before the expiration time")
            if not backlog:
                self._backlog.pop(device, None)
        if self._backlog and not self._closed:
            self._sweep_handle = asyncio.get_running_loop().call_later(BACKLOG_SWEEP_S, self._sweep)

    def _on_timeout(self, live: _Live) -> None:
        rec = live.record
        if rec.oneway and rec.status is S:
            # Published, and the ack is optional: never publish it again.
            self.stats.oneway_unacked += 1
            self.stats.delivered += 1
            self._set_status(live, D)
            return
        if _now_ms() >= rec.expiration_time:
            self._finish(live, E, error="no reply before the expiration time")
            return
        if rec.status is Q:  # held past its deadline without being sent
            self._finish(live, E, error="not delivered before the expiration time")
            return
        self.stats.timeouts += 1
        self._set_status(live, T)
        if rec.attempts <= rec.retries:
            self._dispatch(live)
        else:
            self._finish(live, F, error=f"no reply after {rec.attempts} attempt(s)")

    def _finish(self, live: _Live, status: RpcStatus, **changes: Any) -> None:
        if status is E:
            self.stats.expired += 1
        elif status is F:
            self.stats.failed += 1
        self._set_status(live, status, **changes)

    def _finalize(self, live: _Live) -> None:
        if live.epoch is not None:
            self._recent[live.record.id] = time.monotonic()
        if self._live.pop(live.record.id, None) is live:
            device = live.record.device_id
            left = self._per_device[device] - 1
            if left:
                self._per_device[device] = left
            else:
                del self._per_device[device]
        if live.waiters:
            for fut in live.waiters:
                if not fut.done():
                    fut.set_result(msgspec.structs.replace(live.record))
            live.waiters = None
        if live.durable:
            # The record itself: the call is no longer live, nothing here
            # changes it any more (every other waiter got its own copy;
            # delete() returns a deleted call's record, so they get a copy).
            rec = live.record
            self._when_written(live.durable, msgspec.structs.replace(rec) if rec.status is X else rec,
                               live.write)
            live.durable = None

    def _when_written(self, waiters: list[asyncio.Future], record: RpcRecord, write: Any) -> None:
        """Resolve ``waiters`` with ``record`` once ``write`` -- the call's
        last status write, or the retry task -- has landed."""
        if write is None:
            self._written_for(waiters, record, write)
        elif write in self._writes:
            after = self._after_write.get(write)
            if after is None:
                self._after_write[write] = [(waiters, record)]
            else:
                after.append((waiters, record))
        elif write is self._retry_task and not write.done():
            write.add_done_callback(functools.partial(self._written_for, waiters, record))
        else:
            self._written_for(waiters, record, write)

    def _written_for(self, waiters: list[asyncio.Future], record: RpcRecord, write: Any) -> None:
        replaced = self._replaced.get(write) if write is not None else None
        if replaced is not None:
            # The database refused that write: follow the one written instead.
            salvage, change = replaced
            if salvage is None:
                err = StoreError(f"the database refused the final status of RPC {record.id}")
                for fut in waiters:
                    if not fut.done():
                        fut.set_exception(err)
                return
            if change.response is not msgspec.UNSET:
                record.response = change.response
            if change.error is not msgspec.UNSET:
                record.error = change.error
            self._when_written(waiters, record, salvage)
            return
        if write is not None and write is self._retry_task and (
            write.cancelled() or write.exception() is not None
        ):
            err = DispatcherClosedError("the engine stopped before the final status was stored")
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(err)
            return
        if self._holding and self._is_held(record.id):
            # It failed (or overtook one that did): wait for the retries.
            # (_write_done() has seen it: it runs before the write's waiters.)
            self._when_written(waiters, record, self._retry_task)
            return
        for fut in waiters:
            if not fut.done():
                fut.set_result(record)

    # -- the one place a status changes -------------------------------------

    def _set_status(
        self,
        live: _Live,
        new: RpcStatus,
        *,
        attempts: int | None = None,
        response: Any = msgspec.UNSET,
        error: Any = msgspec.UNSET,
        write: bool = True,
    ) -> None:
        rec = live.record
        old = rec.status
        if (old, new) not in MOVES[rec.oneway]:  # the guard, without a call
            check_transition(old, new, oneway=rec.oneway, rpc_id=rec.id)  # raises
        rec.status = new
        rec.updated_time = now = int(_time() * 1000)
        if attempts is not None:
            rec.attempts = attempts
        if response is not _UNSET:
            rec.response = response
        if error is not _UNSET:
            rec.error = error
        if write:
            change = StatusChange(
                id=rec.id, expected_status=old, status=new, updated_time=now,
                attempts=attempts, response=response, error=error,
                partition=live.partition, epoch=live.epoch,
            )
            if self._holding:
                # Keep order: nothing overtakes a write that still has to land.
                self._later.append(change)
                live.write = self._retry_task
            else:
                live.write = self._send(change)
        if new is X:
            self.stats.deleted += 1
        if self._emit is not None:
            self._event(new, rec)
        if new in TERMINAL or (new is D and rec.oneway):
            self._finalize(live)

    def _event(self, status: RpcStatus, record: RpcRecord) -> None:
        if self._emit is not None:
            try:
                self._emit(event_type(status), record.to_thingsboard())
            except Exception:
                log.exception("event sink failed")

    # -- durable writes -----------------------------------------------------

    def _send(self, change: StatusChange) -> Any:
        """Hand one change to the store; returns the write's handle (None
        if it could not even be queued: it is then held for a retry)."""
        post = self._post_change
        if post is not None:
            try:
                write = post(change, self)
            except StoreError as exc:  # e.g. the store is closed
                # Made after every write in flight: it goes after their failures.
                self._failed([change], exc, self._later)
                return None
            # (already there: merged into a write still queued)
            self._writes.setdefault(write, change)
            return write
        # Any other store: a task per write; a call's writes one at a time.
        prev = self._last_write.get(change.id)
        if prev is None:
            fut = asyncio.ensure_future(self.store.change(change))
        else:
            fut = asyncio.ensure_future(self._change_after(prev, change))
        self._last_write[change.id] = fut
        self._writes[fut] = change
        fut.add_done_callback(self._task_written)
        return fut

    async def _change_after(self, prev: asyncio.Future, change: StatusChange) -> bool:
        await asyncio.wait((prev,))  # prev's _task_written() has run: it was added first
        if self._holding and self._is_held(change.id):
            raise _Held  # an earlier write of this call must land first
        return await self.store.change(change)

    def _is_held(self, rpc_id: str) -> bool:
        return any(c.id == rpc_id for c in self._held) or any(c.id == rpc_id for c in self._later)

    # The group-commit store's WriteListener: a batch's writes at once.

    def changes_written(self, writes: list[Any], applied: list[bool]) -> None:
        pending, after = self._writes, self._after_write
        for write, ok in zip(writes, applied):
            if pending.pop(write, None) is None:
                continue  # not ours, or already heard of
            if self._salvaging:
                self._salvaging.pop(write, None)
            if not ok:
                self._not_applied(write, [write.payload])
            if after:
                waiting = after.pop(write, None)
                if waiting is not None:
                    for waiters, record in waiting:
                        if self._replaced or self._holding:
                            self._written_for(waiters, record, write)
                        else:  # its fast path: nothing refused, nothing held
                            for fut in waiters:
                                if not fut.done():
                                    fut.set_result(record)
        if self._flushes:
            self._settle_flushes(writes)

    def changes_failed(self, writes: list[Any], error: BaseException) -> None:
        for write in writes:
            if self._writes.pop(write, None) is not None:
                self._write_done(write, [write.payload], False, error)
        if self._flushes:
            self._settle_flushes(writes)

    def _task_written(self, fut: asyncio.Future) -> None:
        """A write on a store without group commit (a task) is done."""
        change = self._writes.pop(fut, None)
        if change is None:
            return
        if self._last_write.get(change.id) is fut:
            del self._last_write[change.id]
        if fut.cancelled():  # a cancelled waiter does not withdraw a write
            if self._salvaging:
                self._salvaging.pop(fut, None)
            self._run_after(fut)
        else:
            exc = fut.exception()
            self._write_done(fut, [change], exc is None and fut.result(), exc)
        if self._flushes:
            self._settle_flushes((fut,))

    def _write_done(self, write: Any, changes: list[StatusChange], ok: bool,
                    exc: BaseException | None) -> None:
        """One write has landed (``exc`` None: committed, ``ok``: applied)
        or failed; then its durable waiters."""
        salvage = self._salvaging.pop(write, None) if self._salvaging else None
        if exc is None:
            if not ok:
                self._not_applied(write, changes)
        elif isinstance(exc, (StoreUnavailableError, _Held)):
            self._failed(changes, exc)
        else:
            self._refused(write, changes, exc, salvage)
        self._run_after(write)

    def _run_after(self, write: Any) -> None:
        waiting = self._after_write.pop(write, None) if self._after_write else None
        if waiting is not None:
            for waiters, record in waiting:
                self._written_for(waiters, record, write)

    def _not_applied(self, write: Any, changes: list[StatusChange]) -> None:
        rpc_id = changes[0].id
        if self._holding and self._is_held(rpc_id):
            # It overtook an earlier write of its call that failed (a later
            # batch got through): retry it after that one.
            self._held.extend(changes)
            return
        change = changes[-1]
        log.debug("status change %s -> %s of %s did not apply (row gone or moved on)",
                  change.expected_status, change.status, rpc_id)

    def _settle_flushes(self, landed: Any) -> None:
        keep = []
        for waiting, fut in self._flushes:
            waiting.difference_update(landed)
            if waiting:
                keep.append((waiting, fut))
            elif not fut.done():
                fut.set_result(None)
        self._flushes = keep

    def _refused(self, fut: Any, changes: list[StatusChange], exc: BaseException,
                 salvage: StatusChange | None) -> None:
        """The database refused a write for what it holds (not for being
        down): retrying it would fail forever and hold back every other
        write.  Write the same move once more without the reply, ``error``
        saying why; if that is refused too, give up on this write alone."""
        self.stats.write_refused += len(changes)
        rpc_id = changes[0].id
        if salvage is not None:  # this was the second try
            log.error("status write for %s refused again by the database (%s); the stored row "
                      "keeps its earlier status", rpc_id, exc)
            self._replaced[fut] = (None, salvage)
        else:
            last = changes[-1]
            attempts = next((c.attempts for c in reversed(changes) if c.attempts is not None), None)
            salvage = StatusChange(
                partition=last.partition, epoch=last.epoch,
                id=rpc_id, expected_status=changes[0].expected_status, status=last.status,
                updated_time=last.updated_time, attempts=attempts,
                response=None if any(c.response is not msgspec.UNSET for c in changes) else msgspec.UNSET,
                error=storable_text(f"the database refused this call's status write, so its reply "
                                    f"is not stored: {exc}"),
            )
            log.error("status write %s -> %s for %s refused by the database (%s); writing it "
                      "without the reply", changes[0].expected_status, last.status, rpc_id, exc)
            new = self._send(salvage)
            if new is not None:
                self._salvaging[new] = salvage
            self._replaced[fut] = (new, salvage)
        # Waiters of this write (durable ones) run next and follow it; then
        # the entry goes.
        asyncio.get_running_loop().call_soon(self._replaced.pop, fut, None)

    def _failed(self, changes: list[StatusChange], exc: BaseException,
                line: list[StatusChange] | None = None) -> None:
        if not isinstance(exc, _Held):
            self.stats.write_errors += len(changes)
            log.warning("status write for %s failed (%s); will retry", changes[0].id, exc)
        (self._held if line is None else line).extend(changes)
        self._holding = True
        if self._retry_task is None or self._retry_task.done():
            self._retry_task = asyncio.ensure_future(self._retry_writes())

    async def _retry_writes(self) -> None:
        """Write the held changes again, in order, until every one has been
        written; writes made meanwhile wait in the same line."""
        delay = 0.2
        errors = self.stats.write_errors
        while True:
            # Let what is still in flight land first: its failures join the line.
            while self._writes:
                await self.flush()
            if not self._held and not self._later:
                self._holding = False
                return
            if self.stats.write_errors != errors:
                log.info("store write failed; retrying %d status writes in %.1f s",
                         len(self._held) + len(self._later), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                errors = self.stats.write_errors
                continue  # more failures may have landed meanwhile
            delay = 0.2
            line = self._held + self._later
            self._held, self._later = [], []
            for change in line:
                self._send(change)

    # -- recovery -----------------------------------------------------------

    def _recover(self, record: RpcRecord | _Live) -> None:
        live = record if isinstance(record, _Live) else self._track(record)
        record = live.record
        status = record.status
        if record.oneway and status is S:
            self._on_timeout(live)  # published once already: DELIVERED, never again
        elif _now_ms() >= record.expiration_time:
            self._finish(live, E, error="expired while the server was down")
        elif status is Q:
            self._dispatch(live)
        elif status is T:
            if record.attempts <= record.retries:
                self._dispatch(live)
            else:
                self._finish(live, F, error=f"no reply after {record.attempts} attempt(s)")
        else:
            # SENT or DELIVERED when the server died: the attempt is lost; it
            # counts as timed out, then the retry rules apply (a one-way call
            # that was SENT is never published again: DELIVERED).
            self._on_timeout(live)

    # -- several nodes (a cluster) -------------------------------------------

    #: How long a call this node finished is remembered, so that a scan that
    #: read its row before the final write landed does not resume it (s).
    RECENT_S = 60.0
    #: The periodic scan reads the calls created since the previous scan
    #: began, less this slack (ms: nodes' clocks, inserts committed late);
    #: older ones are read at a partition's acquisition and after the
    #: listener (re)connects.
    SCAN_SLACK_MS = 10_000

    async def _start_cluster(self) -> int:
        from .cluster import NotifyLink

        leases = self._leases
        self._load_lock = asyncio.Lock()
        db = getattr(getattr(self.store, "store", self.store), "db", None)
        self._link = NotifyLink(db, self._on_items, self._on_listening, leases.wake)
        # What this node owns already, then every change from now on (no
        # await between: no acquisition is missed).
        owned = sorted(leases.owned())
        leases.on_acquired(self._partitions_acquired)
        leases.on_lost(self._partitions_lost)
        self._link.start()
        n = await self._load_partitions(owned) if owned else 0
        self._poll_task = asyncio.ensure_future(self._poll_loop())
        if self.settings.ttl_enabled and self.settings.ttl_check_interval_s > 0:
            self._ttl_task = asyncio.ensure_future(self._ttl_loop())
        return n

    def _partitions_acquired(self, partitions: list[int]) -> Any:
        if self._closed:
            return None
        self.stats.taken_over += len(partitions)
        return self._load_partitions(partitions)

    async def _load_partitions(self, partitions: list[int]) -> int:
        """Resume the unfinished calls of ``partitions`` (just acquired)."""
        return await self._load(None, set(partitions))

    async def _load(self, ids: list[str] | None, wanted: set[int] | None = None,
                    since_ms: int | None = None) -> int:
        """Read unfinished calls -- ``ids``, else those created since
        ``since_ms`` (None: all) of the ``wanted`` partitions (None: every
        partition this node owns) -- and resume those it does not drive yet.
        One load at a time: a call read by two loads is resumed once."""
        async with self._load_lock:
            if self._closed:
                return 0
            try:
                if ids is None:
                    # Ids and devices first (two short columns), then in full
                    # only the calls of this node's partitions.
                    parts, owns, live, recent = self._leases.partitions, self._leases.owns, self._live, self._recent
                    ids = []
                    for rpc_id, device in await self.store.unfinished_devices(since_ms):
                        if rpc_id in live or rpc_id in recent:
                            continue
                        p = partition_of(device, parts)
                        if (p in wanted) if wanted is not None else owns(p):
                            ids.append(rpc_id)
                records = await self.store.unfinished_by_ids(ids) if ids else []
            except StoreError as e:
                log.warning("could not load the unfinished calls of this node's partitions (%s); "
                            "the next scan retries", e)
                self._rescan_all = True
                return 0
            self.stats.cluster_loads += 1
            leases, parts, recent, resumed = self._leases, self._leases.partitions, self._recent, 0
            for record in records:
                if record.id in self._live or record.id in recent:
                    continue
                p = partition_of(record.device_id, parts)
                epoch = leases.token(p)
                if epoch is None:
                    continue
                live = self._track(record, p, epoch)
                self.stats.recovered += 1
                resumed += 1
                self._recover(live)
            return resumed

    def _partitions_lost(self, partitions: list[int]) -> Any:
        """Stop acting on the calls of ``partitions`` at once (their new
        owner resumes them from the database); then flush what was written
        for them, so that the new owner reads their latest status."""
        lost = set(partitions)
        dropped = [live for live in self._live.values() if live.partition in lost]
        for live in dropped:
            self._drop(live)
        self.stats.dropped += len(dropped)
        if dropped:
            log.info("stopped driving %d calls of %d partitions (their new owner resumes them)",
                     len(dropped), len(partitions))
        return self.flush()

    def _drop(self, live: _Live) -> None:
        rec = live.record
        live.dropped = True
        if live.rid is not None:
            self.dispatcher.cancel(live.rid)
            live.rid = None
        if self._live.pop(rec.id, None) is live:
            device = rec.device_id
            left = self._per_device[device] - 1
            if left:
                self._per_device[device] = left
            else:
                del self._per_device[device]
        backlog = self._backlog.get(rec.device_id)
        if backlog is not None and live in backlog:
            backlog.remove(live)
            if not backlog:
                self._backlog.pop(rec.device_id, None)
        # Waiters follow the call in the database (_wait_remote).
        for fut in (live.waiters or []) + (live.durable or []):
            if not fut.done():
                fut.set_result(_MOVED)
        live.waiters = None
        live.durable = None

    def _on_items(self, kind: str, items: list[tuple[int, str]]) -> None:
        """Notifications from other nodes: new calls of partitions this node
        owns are loaded (by id, a batch per loop turn); deleted ones dropped."""
        if self._closed:
            return
        leases = self._leases
        if kind == "d":
            for _p, rpc_id in items:
                live = self._live.get(rpc_id)
                if live is not None:
                    self._drop(live)
                    self._recent[rpc_id] = time.monotonic()
                    self.stats.deleted += 1
            return
        added = False
        for p, rpc_id in items:
            if leases.owns(p) and rpc_id not in self._live:
                self._pending_ids[rpc_id] = p
                added = True
        if added and (self._loader is None or self._loader.done()):
            self._loader = asyncio.ensure_future(self._load_notified())

    async def _load_notified(self) -> None:
        while self._pending_ids and not self._closed:
            ids, self._pending_ids = list(self._pending_ids), {}
            await self._load(ids)

    def _on_listening(self) -> None:
        # Notifications sent while the listener was down are lost: read all.
        self._rescan_all = True
        if self._poll_task is not None and not self._poll_task.done():
            self._poll_task.cancel()
            self._poll_task = asyncio.ensure_future(self._poll_loop())

    async def _poll_loop(self) -> None:
        last = None
        while not self._closed:
            try:
                began = _now_ms()
                if self._rescan_all or last is None:
                    self._rescan_all = False
                    await self._load(None)
                else:
                    await self._load(None, since_ms=last - self.SCAN_SLACK_MS)
                last = began
                cutoff = time.monotonic() - self.RECENT_S
                if self._recent and next(iter(self._recent.values())) < cutoff:
                    self._recent = {k: t for k, t in self._recent.items() if t >= cutoff}
            except StoreError:
                pass  # logged by _load
            except Exception:
                log.exception("cluster scan failed")
            await asyncio.sleep(self.poll_interval_s)

    async def _wait_remote(self, rpc_id: str, tenant_id: str, timeout: float | None) -> RpcRecord:
        """wait() for a call another node drives: follow it in the database
        (or here, should this node take its partition over)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        delay = 0.05
        while True:
            live = self._own_live(rpc_id, tenant_id)
            if live is not None:
                left = None if deadline is None else max(0.0, deadline - loop.time())
                fut = loop.create_future()
                if live.waiters is None:
                    live.waiters = []
                live.waiters.append(fut)
                try:
                    result = await asyncio.wait_for(fut, left)
                except asyncio.TimeoutError:
                    raise TimeoutError(f"RPC {rpc_id} did not finish within {timeout} s") from None
                if result is not _MOVED:
                    return result
                continue
            record = await self.store.get(rpc_id, tenant_id)
            if record is None:
                raise RpcNotFoundError(f"no persistent RPC {rpc_id!r}")
            if record.status in TERMINAL or (record.oneway and record.status is D):
                return record
            if deadline is not None and loop.time() >= deadline:
                raise TimeoutError(f"RPC {rpc_id} did not finish within {timeout} s")
            pause = delay if deadline is None else min(delay, max(0.0, deadline - loop.time()))
            await asyncio.sleep(pause)
            delay = min(delay * 1.5, 1.0)

    # -- TTL ----------------------------------------------------------------

    async def purge(self) -> int:
        """Delete finished calls older than their tenant's TTL now."""
        n = await self.store.purge_expired(_now_ms(), self.settings.ttl_days)
        self.stats.purged += n
        return n

    async def _ttl_loop(self) -> None:
        while True:
            try:
                if self._leases is not None and not await self._leases.acquire_named("rpc:ttl"):
                    # One node of a cluster purges (the lease moves on failure).
                    await asyncio.sleep(self.settings.ttl_check_interval_s)
                    continue
                n = await self.purge()
                if n:
                    log.info("TTL clean-up removed %d finished persistent RPCs", n)
            except StoreError as exc:
                log.warning("TTL clean-up failed: %s", exc)
            await asyncio.sleep(self.settings.ttl_check_interval_s)
