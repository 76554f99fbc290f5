"""Which device partitions and which singleton work this node owns.

A :class:`LeaseManager` per node keeps a **session** in the lease table
(:mod:`fleetrpc.cluster.table`) alive, and through it a fair share of the
device partitions and any named leases it acquired::

    leases = LeaseManager(db, identity, settings.cluster)
    leases.on_acquired(engine.recover_partitions)   # load their unfinished calls
    leases.on_lost(engine.drop_partitions)          # stop sending them, at once
    await leases.start()
    if leases.owns(partition_of(device_id, leases.partitions)): ...
    if await leases.acquire_named(f"job:{job_id}"): ...   # one node runs the rollout

Every round (every ``renew_interval``; every ``claim_interval`` while below
its share) a node renews its session, reaps expired sessions, claims
partitions nobody holds up to its share (``partitions / live nodes``, the
remainder to the first sessions in order), and hands back those above its
share while another live node is below its own: on_lost first, then the
release, which the hungry node claims at its next round.  A new session
claims from its second round on, one ``claim_interval`` later, so nodes
started together see each other and split the partitions at once.

**Fencing.**  A node measures its lease on its own monotonic clock from the
moment it *sent* the renewal, and stops acting ``margin`` before
``lease_ttl``: the database granted at least ``lease_ttl`` from a later
moment, on its own clock, so the node stops first whatever the offset of its
clock, and whatever its rate down to ``1 - margin / lease_ttl``.  A node that
cannot renew in time calls on_lost for everything and, from then on,
:meth:`LeaseManager.owns` says False.  The epochs (:meth:`LeaseManager.token`)
let a write fence itself in the database too.

On SQLite (one node) every partition is this node's from :meth:`start` and
named leases are only exclusive within the process.

Callbacks are called with a sorted list of partitions (or lease names).  One
that returns an awaitable is run as a task; on a hand-over, on_lost's
awaitables are awaited (up to ``release_timeout_s``) before the release, so
the engine can finish what it was sending.
"""

from __future__ import annotations

import asyncio
import bisect
import inspect
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import FleetRpcError
from ..store.db import Database
from .identity import NodeIdentity
from .settings import ClusterSettings
from .table import LeaseTable, check_name

__all__ = ["LeaseManager", "fair_share"]

log = logging.getLogger("fleetrpc.cluster")

Callback = Callable[[list[Any]], Any]


def fair_share(partitions: int, live: list[str], session: str) -> int:
    """``session``'s share of ``partitions`` among the sorted ``live``
    sessions (itself counted when missing): equal shares, the remainder to
    the first sessions in order, so the shares add up to ``partitions``."""
    rank = bisect.bisect_left(live, session)
    n = len(live) + (rank == len(live) or live[rank] != session)
    base, extra = divmod(partitions, n)
    return base + (rank < extra)


class LeaseManager:
    """Leases of one node: device partitions and named singleton leases."""

    def __init__(
        self,
        db: Database | LeaseTable,
        node: NodeIdentity | str,
        settings: ClusterSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings if settings is not None else ClusterSettings()
        self.identity = node if isinstance(node, NodeIdentity) else NodeIdentity.new(node)
        self.partitions = self.settings.partitions
        if isinstance(db, LeaseTable):
            self._table: LeaseTable | None = db
        elif db.dialect == "postgresql":
            from .sql import SqlLeaseTable

            self._table = SqlLeaseTable(db)
        else:
            self._table = None  # one node: every lease is ours
        self._clock = clock
        self._owned: dict[int, int] = {}  # partition -> epoch
        self._named: dict[str, int] = {}  # name -> epoch
        self._deadline = -math.inf  # on self._clock: act only before this
        #: The deadline that had passed (or was cut short) when the node last
        #: stopped acting on everything (on this manager's clock).
        self.lapsed_at: float | None = None
        self._session: str | None = None
        self._generation = 0
        self._target = 0
        self._live_nodes = 0
        self._hungry = False
        self._last_renewal: float | None = None
        self._last_error: str | None = None
        self._rounds = 0
        self._started = False
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._fence_timer: asyncio.TimerHandle | None = None
        self._callback_tasks: set[asyncio.Task[Any]] = set()
        self._acquired_cbs: list[Callback] = []
        self._lost_cbs: list[Callback] = []
        self._named_lost_cbs: list[Callback] = []

    # -- public API --------------------------------------------------------------

    @property
    def single_node(self) -> bool:
        """True on SQLite: no claims, every lease is this node's."""
        return self._table is None

    @property
    def session(self) -> str | None:
        """The current lease session (``<node>.<boot>.<n>``), None between
        losing one and registering the next."""
        return self._session

    @property
    def deadline(self) -> float:
        """When (on this manager's clock) the node stops acting unless it
        renews first."""
        return self._deadline

    def on_acquired(self, callback: Callback) -> Callback:
        """Call ``callback(partitions)`` when partitions become this node's."""
        self._acquired_cbs.append(callback)
        return callback

    def on_lost(self, callback: Callback) -> Callback:
        """Call ``callback(partitions)`` when this node must stop acting on them."""
        self._lost_cbs.append(callback)
        return callback

    def on_named_lost(self, callback: Callback) -> Callback:
        """Call ``callback(names)`` when named leases are lost (not released)."""
        self._named_lost_cbs.append(callback)
        return callback

    def _valid(self) -> bool:
        return self._clock() < self._deadline

    def owns(self, partition: int) -> bool:
        """Whether this node may act on ``partition`` now."""
        return partition in self._owned and self._clock() < self._deadline

    def owned(self) -> frozenset[int]:
        """The partitions this node may act on now."""
        return frozenset(self._owned) if self._valid() else frozenset()

    def token(self, partition: int) -> int | None:
        """The partition's epoch while owned (a fencing token for writes)."""
        return self._owned.get(partition) if self._valid() else None

    def holds_named(self, name: str) -> bool:
        """Whether this node holds the named lease now."""
        return name in self._named and self._valid()

    def named_token(self, name: str) -> int | None:
        return self._named.get(name) if self._valid() else None

    async def acquire_named(self, name: str) -> bool:
        """Take the named lease unless another live node holds it.  It lasts
        until :meth:`release_named`, :meth:`stop`, or this node's session
        lapses (then on_named_lost)."""
        check_name(name)
        if self.holds_named(name):
            return True  # held and valid: no round trip (the cron loop asks every turn)
        if self._table is None:
            if name in self._named:
                return True
            self._named[name] = 1
            return True
        if self._session is None or not self._valid():
            return False
        epoch = await self._table.acquire_named(self._session, name)
        if epoch is None or not self._valid():
            return False
        self._named[name] = epoch
        return True

    async def release_named(self, name: str) -> None:
        """Give the named lease back (this node stops acting on it first)."""
        held = self._named.pop(name, None)
        if held is not None and self._table is not None and self._session is not None:
            await self._table.release_named(self._session, name)

    def status(self) -> dict[str, Any]:
        """What ``/readyz`` reports: ``ready`` is True while the leases are valid."""
        valid = self._valid()
        return {
            "ready": self._started and valid and not self._stopping,
            "mode": "single" if self.single_node else "cluster",
            "node_id": self.identity.node_id,
            "instance": self.identity.instance,
            "session": self._session,
            "partitions": self.partitions,
            "owned": len(self._owned) if valid else 0,
            "target": self._target,
            "live_nodes": self._live_nodes,
            "balancing": self._hungry,
            "named": sorted(self._named) if valid else [],
            "valid_for_s": (None if self.single_node else
                            round(max(0.0, self._deadline - self._clock()), 3)),
            "last_renewal_age_s": (None if self._last_renewal is None else
                                   round(self._clock() - self._last_renewal, 3)),
            "last_error": self._last_error,
        }

    # -- lifecycle ---------------------------------------------------------------

    async def start(self, *, background: bool = True) -> None:
        """Join: register a session, claim a first share, and keep renewing
        in a background task (``background=False``: the caller runs
        :meth:`run_round`, as the simulation does on its virtual clock)."""
        if self._started:
            return
        self._started = True
        self._stopping = False
        if self._table is None:
            self._deadline = math.inf
            self._live_nodes = 1
            self._target = self.partitions
            self._acquire({p: 0 for p in range(self.partitions)})
            return
        await self._table.setup(self.partitions)
        await self.run_round()
        if background:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"leases-{self.identity.instance}")

    async def stop(self) -> None:
        """Leave: stop acting on everything, then release it all so that the
        other nodes take over at their next round."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._cancel_fence_timer()
        lost = sorted(self._owned)
        self._owned.clear()
        self._named.clear()
        await self._call_and_wait(self._lost_cbs, lost)
        if self._table is not None and self._session is not None:
            session, self._session = self._session, None
            self._deadline = -math.inf
            try:
                await self._table.unregister(session)
            except FleetRpcError as e:  # the others take over when the session expires
                log.warning("leases: could not unregister %s (%s); it will expire", session, e)
        pending = list(self._callback_tasks)
        if pending:
            await asyncio.wait(pending, timeout=self.settings.release_timeout_s)
        self._started = False

    async def _run(self) -> None:
        s = self.settings
        while True:
            self._wake.clear()  # a wake() during the round below runs the next one at once
            started = self._clock()
            try:
                delay = await asyncio.wait_for(self.run_round(), timeout=s.lease_ttl_s)
                # The interval runs from the round's renewal, not its end: a
                # round slowed down by a busy loop or database (a node's own
                # start) must not push the next renewal past the deadline.
                delay = max(0.0, delay - (self._clock() - started))
                self._last_error = None
            except (FleetRpcError, asyncio.TimeoutError, OSError) as e:
                self._last_error = f"{type(e).__name__}: {e}"
                log.warning("leases: round failed (%s); retrying", self._last_error)
                delay = s.claim_interval
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass

    def wake(self) -> None:
        """Run the next round now (a hint that the cluster changed, e.g. a
        node announced that it leaves: its partitions are claimed at once
        instead of at the next renewal)."""
        self._wake.set()

    # -- one round ----------------------------------------------------------------

    async def run_round(self) -> float:
        """Renew, reap, claim or hand back; return the seconds to the next
        round.  The background task calls this; the simulation calls it on a
        virtual clock."""
        table, s = self._table, self.settings
        if table is None:
            return s.renew_interval
        self._rounds += 1
        ttl_ms = s.lease_ttl_ms
        sent = self._clock()
        if self._session is None:
            self._generation += 1
            session = f"{self.identity.instance}.{self._generation}"
            await table.register(session, self.identity.node_id, self.identity.boot, ttl_ms)
            self._session = session
            self._renewed(sent)
            # Claim from the next round on: nodes started together then see
            # each other and split the partitions at once, instead of the
            # first taking them all and handing most of them back.
            self._hungry = True
            return s.claim_interval
        elif not await table.heartbeat(self._session, ttl_ms):
            log.warning("leases: session %s expired before it was renewed; registering anew", self._session)
            self._fence("session expired")
            self._session = None
            return 0.0
        self._renewed(sent)
        session = self._session

        await table.reap()
        live = await table.live_sessions()
        live_set = set(live)
        counts = await table.owner_counts()
        target = fair_share(self.partitions, live, session)
        self._target, self._live_nodes = target, len(live_set | {session})

        if counts.get(session, 0) != len(self._owned):
            self._reconcile(await table.owned_by(session))
        if not self._valid():
            return s.claim_interval

        have = len(self._owned)
        self._hungry = False
        if have < target:
            won = await table.claim(session, await table.claimable(target - have))
            if won and self._valid():
                self._acquire(won)
            # (won while no longer valid: the next round adopts them)
            self._hungry = len(self._owned) < target
        elif have > target:
            # Hand back only what a live node below its share can claim now,
            # beyond what lies unowned for it already.
            unowned = sum(c for o, c in counts.items() if o is None or o not in live_set)
            wanted = sum(max(0, fair_share(self.partitions, live, o) - counts.get(o, 0))
                         for o in live if o != session)
            give = min(have - target, wanted - unowned)
            if give > 0:
                await self._hand_over(sorted(self._owned)[-give:])
        return s.claim_interval if self._hungry else s.renew_interval

    def _renewed(self, sent: float) -> None:
        s = self.settings
        self._last_renewal = sent
        self.lapsed_at = None
        self._deadline = sent + s.lease_ttl_s - s.margin
        self._arm_fence_timer()

    def _reconcile(self, in_table: dict[int, int]) -> None:
        """Make the local view match the table's for this session: rows no
        longer ours are lost at once; rows ours in the table but not held
        (claimed while the node was fenced, or after a lapse it survived)
        are adopted while the lease is valid."""
        gone = [p for p in self._owned if p not in in_table]
        if gone:
            log.error("leases: %d partitions of %s were taken while it held them", len(gone), self._session)
            for p in gone:
                del self._owned[p]
            self._call(self._lost_cbs, sorted(gone))
        if self._valid():
            new = {p: e for p, e in in_table.items() if p not in self._owned}
            if new:
                self._acquire(new)

    def _acquire(self, won: dict[int, int]) -> None:
        self._owned.update(won)
        self._call(self._acquired_cbs, sorted(won))

    async def _hand_over(self, partitions: list[int]) -> None:
        for p in partitions:
            self._owned.pop(p, None)
        await self._call_and_wait(self._lost_cbs, partitions)
        assert self._table is not None and self._session is not None
        await self._table.release(self._session, partitions)

    # -- fencing -------------------------------------------------------------------

    def _fence(self, why: str) -> None:
        if self._deadline != -math.inf:
            self.lapsed_at = min(self._deadline, self._clock())
        self._deadline = -math.inf
        self._cancel_fence_timer()
        lost, names = sorted(self._owned), sorted(self._named)
        self._owned.clear()
        self._named.clear()
        if lost or names:
            log.warning("leases: %s stops acting on %d partitions and %s (%s)",
                        self._session, len(lost), names or "no named leases", why)
        if lost:
            self._call(self._lost_cbs, lost)
        if names:
            self._call(self._named_lost_cbs, names)

    def _arm_fence_timer(self) -> None:
        self._cancel_fence_timer()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._fence_timer = loop.call_later(max(0.0, self._deadline - self._clock()), self._on_fence_timer)

    def _cancel_fence_timer(self) -> None:
        if self._fence_timer is not None:
            self._fence_timer.cancel()
            self._fence_timer = None

    def _on_fence_timer(self) -> None:
        self._fence_timer = None
        if self._clock() >= self._deadline:
            self._fence("not renewed in time")
        else:  # an injected clock running slow: not there yet
            self._arm_fence_timer()

    def check_deadline(self) -> None:
        """Fence now if the deadline passed (the simulation's timer)."""
        if (self._owned or self._named) and not self._valid():
            self._fence("not renewed in time")

    # -- callbacks -----------------------------------------------------------------

    def _call(self, callbacks: Iterable[Callback], items: list[Any]) -> list[Any]:
        awaitables = []
        for cb in callbacks:
            try:
                result = cb(items)
            except Exception:
                log.exception("leases: callback %r failed", cb)
                continue
            if inspect.isawaitable(result):
                awaitables.append(result)
        tasks = []
        for aw in awaitables:
            task = asyncio.ensure_future(aw)
            self._callback_tasks.add(task)
            task.add_done_callback(self._callback_done)
            tasks.append(task)
        return tasks

    def _callback_done(self, task: asyncio.Task[Any]) -> None:
        self._callback_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("leases: callback failed", exc_info=task.exception())

    async def _call_and_wait(self, callbacks: Iterable[Callback], items: list[Any]) -> None:
        if not items:
            return
        tasks = self._call(callbacks, items)
        if tasks:
            await asyncio.wait(tasks, timeout=self.settings.release_timeout_s)
