"""Group commit: many concurrent writers, one transaction per batch.

:class:`GroupCommitStore` wraps any :class:`~fleetrpc.store.base.Store`.
Concurrent ``await store.insert(record)`` and ``await store.change(change)``
calls are queued; a single writer task takes everything queued so far (up to
``max_batch``) and writes it with one :meth:`Store.write` -- one transaction,
one commit, one fsync.  While that transaction is in flight the next batch
gathers, so batches grow with the load and no timer is needed.

Guarantees:

- a caller's ``await`` returns only after the transaction holding its write
  COMMITTED; it then sees its write in every later read;
- the writes to one call are applied in the order they were submitted (a
  change is only ever submitted after its insert returned; the inserts of a
  batch are written before its changes); a batch touches
  each call at most once: a change to a call that already has a write in
  the batch being taken waits, at the head of the queue, for the next one.
  So a batch is new calls plus one change each to other calls -- one
  set-based statement per kind, or one statement for both (PostgreSQL) --
  and writes to different calls may complete in a different order than they
  were submitted;
- nothing is reported stored that is not: when a commit fails, no caller of
  that batch gets success.

When a batch fails:

- the database is unavailable (:class:`StoreUnavailableError`): every caller
  of the batch gets that error -- nothing of the batch is stored;
- anything else (a row the database refuses, a value that is not JSON, ...):
  the batch is retried row by row, one transaction per row, so only the bad
  row's caller gets an error and everybody else's write is stored.
- an id already taken is not a failure of the batch: the store reports it
  per row and only that caller gets :class:`DuplicateRpcError`.

Cancelling a waiting caller does not withdraw its write (it may already be
committing); the result is simply not delivered.

Futures or a listener: ``submit_change`` returns a future per write, for
any caller.  An engine that makes many writes and waits for none of them
(the persistent-RPC lifecycle) uses :meth:`GroupCommitStore.post_change`
instead: no future, no callback scheduled per write; once a batch is
written its :class:`WriteListener` hears about all of that batch's writes
in one call, in the batch's order -- the same results and errors, the same
order per call.

Coalescing (``coalesce=True``, the default): a status change submitted while
an earlier change of the same call is still queued -- not yet taken by the
writer -- and which continues it (``QUEUED->SENT`` queued, ``SENT->DELIVERED``
submitted) is merged into it when the combined move is itself legal
(``SENT->DELIVERED`` + ``DELIVERED->SUCCESSFUL`` = ``SENT->SUCCESSFUL``).
One row update then carries both; what gets committed is the later state,
which the call did pass through, with every field the two changes set; the
intermediate state is simply never stored.  Both callers get the merged
change's result.  Moves that are not legal on their own (``QUEUED->DELIVERED``)
are never made: such changes stay separate, in order.  Only the submitter
of changes to a call (the persistent-RPC engine owns its calls) should rely
on it, as with any optimistic change.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from ..errors import FleetRpcError, StoreError, StoreUnavailableError
from ..rpc.status import MOVES, RpcStatus, is_allowed
from .base import DuplicateRpcError, Page, RpcRecord, StatusChange, Store, WriteResult

__all__ = ["GroupCommitStore", "Batcher", "BatchStats", "WriteListener", "coalesce_changes"]

log = logging.getLogger("fleetrpc.store.batching")

_INSERT = 0
_CHANGE = 1


class BatchStats(msgspec.Struct, kw_only=True, gc=False):
    """Counters of a :class:`GroupCommitStore` (read them, never write)."""

    batches: int = 0  # committed batch transactions
    items: int = 0  # writes completed through batches (success or per-row error)
    largest_batch: int = 0
    failed_batches: int = 0  # batches that failed as a whole
    row_by_row: int = 0  # failed batches retried row by row
    coalesced: int = 0  # changes merged into a queued change of the same call


class _Item(msgspec.Struct, eq=False):
    """One queued write: a caller's future, or a listener to tell.  It is
    also the handle :meth:`GroupCommitStore.post_change` returns.  (A
    Struct: built in C, no ``__init__`` frame.)"""

    kind: int
    payload: Any
    future: asyncio.Future[Any] | None
    listener: WriteListener | None = None


class WriteListener(Protocol):
    """Told about the writes it posted with :meth:`GroupCommitStore.post_change`,
    once per batch.  ``writes`` are the handles ``post_change`` returned
    (``write.payload`` is the change as written: merged, when coalescing
    merged several); they never raise into the store (an exception is
    logged).  If the writer task itself is cancelled in the middle of a
    batch, writes already reported may be reported failed once more:
    ignore handles already heard of."""

    def changes_written(self, writes: list[Any], applied: list[bool]) -> None:
        """The batch committed; ``applied[i]``: ``writes[i]`` found its row
        in its expected status."""

    def changes_failed(self, writes: list[Any], error: BaseException) -> None:
        """Not written: :class:`StoreUnavailableError` when the database was
        unavailable, another :class:`StoreError` when it refused the row."""


_UNSET = msgspec.UNSET


def _mergeable() -> frozenset[tuple[RpcStatus, RpcStatus, RpcStatus]]:
    """(old, mid, new) such that old->mid then mid->new may be one change."""
    out = set()
    for old in RpcStatus:
        for mid in RpcStatus:
            for new in RpcStatus:
                if not (is_allowed(old, mid, oneway=False) and is_allowed(mid, new, oneway=False)):
                    continue
                if not is_allowed(old, new, oneway=False):
                    continue
                both = is_allowed(old, mid, oneway=True) and is_allowed(mid, new, oneway=True)
                if is_allowed(old, new, oneway=True) == both:
                    out.add((old, mid, new))
    return frozenset(out)


_MERGEABLE = _mergeable()
_TWO_WAY_MOVES = MOVES[False]


def coalesce_changes(first: StatusChange, then: StatusChange) -> StatusChange | None:
    """``first`` then ``then`` as one change, or None when they cannot be one.

    They merge when ``then`` continues ``first`` (same call, ``then`` expects
    the status ``first`` sets) and the combined move is legal in its own
    right -- for two-way calls, and for one-way calls exactly when both
    steps are.  The result sets the later status and updated time, and
    every field either change sets (the later one winning): the row ends
    exactly as it would after applying both, except that the intermediate
    status is never stored.
    """
    if then.id != first.id or then.expected_status is not first.status:
        return None
    if then.epoch != first.epoch or then.partition != first.partition:
        return None  # fenced by different leases: each stands alone
    old, new = first.expected_status, then.status
    if (old, first.status, new) not in _MERGEABLE:
        return None
    return StatusChange(
        id=first.id,
        expected_status=old,
        status=new,
        updated_time=then.updated_time,
        attempts=first.attempts if then.attempts is None else then.attempts,
        response=first.response if then.response is _UNSET else then.response,
        error=first.error if then.error is _UNSET else then.error,
        partition=first.partition,
        epoch=first.epoch,
    )


def _copy_error(e: BaseException) -> StoreError:
    """A fresh exception per waiting caller (one instance raised in many
    tasks would collect all their tracebacks)."""
    if isinstance(e, FleetRpcError):
        try:
            new = type(e)(*e.args)
        except Exception:
            new = StoreError(str(e))
    else:
        new = StoreError(f"store write failed: {type(e).__name__}: {e}")
    new.__cause__ = e.__cause__ if isinstance(e, FleetRpcError) and e.__cause__ else e
    return new  # type: ignore[return-value]


class GroupCommitStore(Store):
    """A :class:`Store` whose single-row writes are group-committed.

    ``insert`` and ``change`` (and :meth:`submit_change`) are batched; every
    other method goes straight to the wrapped store.  ``max_batch`` caps a
    batch; ``max_delay`` (seconds, default 0) makes the writer wait that long
    before taking a batch, trading latency for bigger batches at low load;
    ``coalesce`` merges consecutive queued changes of one call (see the
    module's docstring).
    """

    def __init__(
        self, store: Store, *, max_batch: int = 1000, max_delay: float = 0.0, coalesce: bool = True
    ) -> None:
        super().__init__(store.db)
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.store = store
        self.backend = store.backend
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.coalesce = coalesce
        self.batch_stats = BatchStats()
        self._queue: deque[_Item] = deque()
        # id -> the last change of that call still in the queue (coalescing)
        self._queued: dict[str, _Item] = {}
        # The writer, idle, waits on this future; a write wakes it.
        self._idle: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._accepting = False  # open, not closing, writer running
        self._loop: asyncio.AbstractEventLoop | None = None
        # Dialect-specific reads (PostgresStore.unfinished_by_ids ...) go
        # straight through: the wrapped store's own methods, set here rather
        # than found by a __getattr__ (which would make every attribute
        # lookup on this object slower: CPython does not specialise them).
        for name in dir(store):
            if name.startswith("unfinished_"):
                setattr(self, name, getattr(store, name))

    def __repr__(self) -> str:
        return f"<GroupCommitStore over {self.store!r}>"

    # -- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        """Open the wrapped store (if it is not yet) and start the writer."""
        await self.store.open()
        if self._writer is None or self._writer.done():
            self._closing = False
            self._loop = loop = asyncio.get_running_loop()
            self._writer = loop.create_task(self._run(), name="fleetrpc-group-commit")
            self._writer.add_done_callback(self._writer_ended)
            self._accepting = True

    def _writer_ended(self, task: asyncio.Task[None]) -> None:
        if task is self._writer or self._writer is None:
            self._accepting = False

    def _wake(self) -> None:
        idle = self._idle
        if idle is not None:
            self._idle = None
            if not idle.done():
                idle.set_result(None)

    async def close(self) -> None:
        """Write everything already queued, stop the writer, close the store."""
        await self.drain()
        await self.store.close()

    async def drain(self) -> None:
        """Write everything queued and stop the writer (the store stays open)."""
        self._closing = True
        self._accepting = False
        self._wake()
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer

    # -- batched writes -------------------------------------------------------------

    def _submit(self, kind: int, payload: Any) -> asyncio.Future[Any]:
        if not self._accepting:
            raise StoreError("the group-commit store is not open")
        fut = self._loop.create_future()
        self._queue.append(_Item(kind, payload, fut))
        if self._idle is not None:
            self._wake()
        return fut

    async def insert(self, record: RpcRecord) -> None:
        """Store a new call; returns once its batch committed.  Raises
        :class:`DuplicateRpcError` if the id is taken, :class:`StoreError` /
        :class:`StoreUnavailableError` if it could not be stored."""
        await self._submit(_INSERT, record)

    def submit_insert(self, record: RpcRecord) -> asyncio.Future[None]:
        """:meth:`insert` without the coroutine: the returned future
        resolves once the batch holding the row committed, or fails with
        the error :meth:`insert` would raise.  Raises :class:`StoreError`
        at once if the store is not open."""
        return self._submit(_INSERT, record)

    async def change(self, change: StatusChange) -> bool:
        """Apply one optimistic status change; returns once its batch
        committed, True if it applied (the stored status was still
        ``change.expected_status``).  An illegal move raises
        :class:`InvalidTransitionError` at once, before queueing."""
        return await self.submit_change(change)

    def submit_change(self, change: StatusChange) -> asyncio.Future[bool]:
        """Queue one optimistic status change without waiting: the returned
        future resolves, once its batch committed, to True if it applied
        (or fails with the batch's error).  No task, no coroutine: the way
        for an engine that must not wait for its writes.

        The futures of one call's changes resolve in the order they were
        submitted (another call's may resolve earlier or later).  When the
        change is merged into a still-queued change of the same call
        (coalescing), the future of that earlier change is returned: the
        two share one result.  An illegal move raises
        :class:`InvalidTransitionError` at once; a store that is not open
        raises :class:`StoreError`."""
        if not is_allowed(change.expected_status, change.status, oneway=False):
            change.check()  # raises
        if self.coalesce:
            queued = self._queued
            prev = queued.get(change.id)
            if prev is not None and prev.listener is None:
                merged = coalesce_changes(prev.payload, change)
                if merged is not None:
                    prev.payload = merged
                    self.batch_stats.coalesced += 1
                    return prev.future
            fut = self._submit(_CHANGE, change)
            queued[change.id] = self._queue[-1]
            return fut
        return self._submit(_CHANGE, change)

    def post_change(self, change: StatusChange, listener: WriteListener) -> _Item:
        """:meth:`submit_change` without a future: ``listener`` hears the
        outcome once the batch is written (see :class:`WriteListener`).
        Returns the write's handle -- the handle of the still-queued write
        of the same call (and listener) when the change was merged into
        it.  Raises like :meth:`submit_change`."""
        if (change.expected_status, change.status) not in _TWO_WAY_MOVES:
            change.check()  # raises
        if not self._accepting:
            raise StoreError("the group-commit store is not open")
        if self.coalesce:
            queued = self._queued
            prev = queued.get(change.id)
            if prev is not None and prev.listener is listener:
                first = prev.payload
                # coalesce_changes() only when it may merge (most pairs cannot)
                if (first.expected_status, first.status, change.status) in _MERGEABLE:
                    merged = coalesce_changes(first, change)
                    if merged is not None:
                        prev.payload = merged
                        self.batch_stats.coalesced += 1
                        return prev
            item = queued[change.id] = _Item(_CHANGE, change, None, listener)
        else:
            item = _Item(_CHANGE, change, None, listener)
        self._queue.append(item)
        if self._idle is not None:
            self._wake()
        return item

    @property
    def pending(self) -> int:
        """Writes queued and not yet taken by the writer."""
        return len(self._queue)

    async def _run(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                if self._closing:
                    return
                self._idle = self._loop.create_future()
                await self._idle
                continue
            if self.max_delay > 0 and not self._closing:
                await asyncio.sleep(self.max_delay)
            batch = self._take()
            try:
                await self._flush(batch)
            except BaseException as e:  # cancelled, or a bug: never leave a caller hanging
                err = StoreError(
                    f"group commit stopped while writing; the write may or may not be stored ({e!r})"
                )
                _fail_all([it for it in batch if it.future is None or not it.future.done()], err)
                if not isinstance(e, Exception):
                    raise

    def _take(self) -> list[_Item]:
        """The next batch: up to ``max_batch`` writes in queue order, but a
        change to a call that already has a write in this batch stays at the
        head of the queue for the next batch."""
        queue, queued = self._queue, self._queued
        limit = self.max_batch
        batch: list[_Item] = []
        ids: set[str] = set()
        later: list[_Item] = []
        scan = 4 * limit  # bounds the work when much has to wait
        while queue and len(batch) < limit and scan:
            scan -= 1
            it = queue.popleft()
            rpc_id = it.payload.id
            if it.kind == _CHANGE:
                if rpc_id in ids:
                    later.append(it)
                    continue
                if queued.get(rpc_id) is it:
                    del queued[rpc_id]
            ids.add(rpc_id)
            batch.append(it)
        if later:
            queue.extendleft(reversed(later))
        return batch

    async def _flush(self, batch: list[_Item]) -> None:
        inserts = [it for it in batch if it.kind == _INSERT]
        changes = [it for it in batch if it.kind == _CHANGE]
        try:
            result = await self.store.write([it.payload for it in inserts], [it.payload for it in changes])
        except StoreUnavailableError as e:
            self.batch_stats.failed_batches += 1
            _fail_all(batch, e)
            return
        except Exception as e:
            self.batch_stats.failed_batches += 1
            if len(batch) == 1:
                _fail(batch[0], e)
            else:
                self.batch_stats.row_by_row += 1
                await self._one_by_one(batch)
            return
        self._deliver(inserts, changes, result)
        self.batch_stats.batches += 1
        self.stats.transactions += 1
        self.batch_stats.items += len(batch)
        if len(batch) > self.batch_stats.largest_batch:
            self.batch_stats.largest_batch = len(batch)

    async def _one_by_one(self, batch: list[_Item]) -> None:
        for it in batch:
            ins, chg = ((it,), ()) if it.kind == _INSERT else ((), (it,))
            try:
                result = await self.store.write([i.payload for i in ins], [c.payload for c in chg])
            except Exception as e:
                _fail(it, e)
                continue
            self._deliver(ins, chg, result)
            self.stats.transactions += 1
            self.batch_stats.items += 1

    @staticmethod
    def _deliver(inserts: Sequence[_Item], changes: Sequence[_Item], result: WriteResult) -> None:
        for it, ok in zip(inserts, result.inserted, strict=True):
            if it.future.done():  # the caller gave up waiting
                continue
            if ok:
                it.future.set_result(None)
            else:
                it.future.set_exception(DuplicateRpcError(f"RPC {it.payload.id} already exists"))
        told: dict[Any, tuple[list[_Item], list[bool]]] | None = None
        for it, ok in zip(changes, result.applied, strict=True):
            listener = it.listener
            if listener is None:
                if not it.future.done():
                    it.future.set_result(ok)
                continue
            if told is None:
                told = {}
            entry = told.get(listener)
            if entry is None:
                entry = told[listener] = ([], [])
            entry[0].append(it)
            entry[1].append(ok)
        if told is not None:
            for listener, (items, applied) in told.items():
                try:
                    listener.changes_written(items, applied)
                except Exception:
                    log.exception("write listener %r failed", listener)

    # -- everything else goes straight through ----------------------------------------

    async def migrate(self) -> list[int]:
        return await self.store.migrate()

    async def schema_version(self) -> int:
        return await self.store.schema_version()

    async def write(
        self,
        inserts: Sequence[RpcRecord] = (),
        changes: Sequence[StatusChange] = (),
        *,
        atomic: bool = False,
    ) -> WriteResult:
        return await self.store.write(inserts, changes, atomic=atomic)

    async def delete(self, rpc_id: str, tenant_id: str) -> RpcRecord | None:
        return await self.store.delete(rpc_id, tenant_id)

    async def get(self, rpc_id: str, tenant_id: str) -> RpcRecord | None:
        return await self.store.get(rpc_id, tenant_id)

    async def list_by_device(
        self,
        device_id: str,
        *,
        tenant_id: str,
        page_size: int = 10,
        page: int = 0,
        status: RpcStatus | str | None = None,
        sort_property: str = "createdTime",
        sort_order: str = "DESC",
        text_search: str | None = None,
    ) -> Page:
        return await self.store.list_by_device(
            device_id,
            tenant_id=tenant_id,
            page_size=page_size,
            page=page,
            status=status,
            sort_property=sort_property,
            sort_order=sort_order,
            text_search=text_search,
        )

    async def load_unfinished(self) -> list[RpcRecord]:
        return await self.store.load_unfinished()

    async def claim_unfinished(self, node_id: str) -> list[RpcRecord]:
        return await self.store.claim_unfinished(node_id)

    async def purge_terminal(self, older_than_ms: int, tenant_id: str) -> int:
        return await self.store.purge_terminal(older_than_ms, tenant_id)

    async def set_tenant_ttl(self, tenant_id: str, days: int | None) -> None:
        await self.store.set_tenant_ttl(tenant_id, days)

    async def get_tenant_ttl(self, tenant_id: str) -> int | None:
        return await self.store.get_tenant_ttl(tenant_id)

    async def purge_expired(self, now_ms: int, default_days: int | None) -> int:
        return await self.store.purge_expired(now_ms, default_days)


def _fail(it: _Item, e: BaseException) -> None:
    _fail_all((it,), e)


def _fail_all(items: Sequence[_Item], e: BaseException) -> None:
    """Fail every write of ``items`` with (a copy of) ``e``: futures one by
    one, listeners once each with all of theirs."""
    told: dict[Any, list[_Item]] | None = None
    for it in items:
        if it.listener is None:
            if not it.future.done():
                it.future.set_exception(_copy_error(e))
            continue
        if told is None:
            told = {}
        told.setdefault(it.listener, []).append(it)
    if told is not None:
        for listener, writes in told.items():
            try:
                listener.changes_failed(writes, _copy_error(e))
            except Exception:
                log.exception("write listener %r failed", listener)


#: The name the design notes use for the same thing.
Batcher = GroupCommitStore
