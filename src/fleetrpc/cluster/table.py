"""The lease table: what the leases are, as operations on shared state.

Three kinds of rows, as in PostgreSQL (migration 0400):

- **sessions** (``cluster_node``): one per live process incarnation, with an
  expiry on the table's clock.  A session is extended only while it has not
  expired (:meth:`LeaseTable.heartbeat`); an expired one is deleted by
  :meth:`LeaseTable.reap`, under a row lock, so a renewal racing the reaper
  either wins (the row is no longer expired) or finds no row.  A deleted
  session never comes back: its process must register a new one.
- **partitions** (``cluster_partition``): an owner session (or none) and an
  ``epoch`` that rises at every change of owner.  A partition whose owner
  has no session row belongs to nobody.  Claims are compare-and-set on the
  epoch read just before, so of two claimers of one partition at the same
  moment exactly one wins.  Renewing a session renews every partition it
  owns: one row written per node and round, whatever the partition count.
- **named leases** (``cluster_lease``): the same for singleton work
  ("job:<id>"), rows created on first use.

Each method is one atomic step (one SQL statement or transaction).  The
epochs returned with an ownership are fencing tokens: a write guarded by
``owner = me AND epoch = e`` cannot land after the partition moved.

:class:`MemoryLeaseTable` implements the same semantics in memory, on an
injected clock, for the simulation (10 nodes, 1,000,000 partitions, no
network) and the property-based tests; :class:`~fleetrpc.cluster.sql.SqlLeaseTable`
is the PostgreSQL one.  ``tests/cluster/test_table_model.py`` checks both
against one plain model.
"""

from __future__ import annotations

import abc
import itertools
from collections.abc import Callable, Iterable, Sequence

from ..errors import StoreError, ValidationError

__all__ = ["LeaseTable", "MemoryLeaseTable", "PartitionCountMismatch"]


class PartitionCountMismatch(StoreError):
    """The cluster's database was set up for another partition count."""


class LeaseTable(abc.ABC):
    """Shared lease state; see the module docstring for the semantics."""

    @abc.abstractmethod
    async def setup(self, partitions: int) -> None:
        """Create the partition rows on first use; raise
        :class:`PartitionCountMismatch` when the cluster has another count."""

    @abc.abstractmethod
    async def register(self, session: str, node_id: str, boot: str, ttl_ms: int) -> None:
        """A new session, expiring ``ttl_ms`` from now."""

    @abc.abstractmethod
    async def heartbeat(self, session: str, ttl_ms: int) -> bool:
        """Extend a session not yet expired to ``now + ttl_ms``; False when it
        expired or is gone (then it is dead for good)."""

    @abc.abstractmethod
    async def reap(self) -> list[str]:
        """Delete the expired sessions; return them."""

    @abc.abstractmethod
    async def unregister(self, session: str) -> None:
        """Leave: release the session's partitions and named leases, delete it."""

    @abc.abstractmethod
    async def live_sessions(self) -> list[str]:
        """Sessions not expired, sorted."""

    @abc.abstractmethod
    async def owner_counts(self) -> dict[str | None, int]:
        """Partitions per owner (None: unowned); dead owners included."""

    @abc.abstractmethod
    async def owned_by(self, session: str) -> dict[int, int]:
        """The session's partitions and their epochs."""

    @abc.abstractmethod
    async def claimable(self, limit: int) -> list[tuple[int, int]]:
        """Up to ``limit`` (partition, epoch) of partitions owned by no
        session row, in no particular order."""

    @abc.abstractmethod
    async def claim(self, session: str, candidates: Sequence[tuple[int, int]]) -> dict[int, int]:
        """Take each candidate whose epoch is still the one given, for a
        session that is live; return partition -> new epoch of those won.
        A partition is taken at most once per call, as one SQL statement
        takes it: a second candidate naming it (with the epoch the first
        one's claim made) does not take it again."""

    @abc.abstractmethod
    async def release(self, session: str, partitions: Iterable[int]) -> list[int]:
        """Give up those of ``partitions`` the session owns; return them."""

    @abc.abstractmethod
    async def acquire_named(self, session: str, name: str) -> int | None:
        """The named lease for a live session: its epoch, or None when
        another live session holds it.  Idempotent for the holder."""

    @abc.abstractmethod
    async def release_named(self, session: str, name: str) -> bool:
        """Give up a named lease; False when the session did not hold it."""

    @abc.abstractmethod
    async def named_held_by(self, session: str) -> dict[str, int]:
        """The named leases of a session and their epochs."""


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > 200 or "\x00" in name:
        raise ValidationError(f"a lease name is a non-empty string of at most 200 characters without NUL, not {name!r}")
    return name


class MemoryLeaseTable(LeaseTable):
    """The lease table in memory, on ``clock`` (milliseconds: the stand-in
    for the database's clock).

    Indexed for a million partitions: each owner's partitions as a set, and
    the claimable ones (no owner, or an owner without a session) as a set,
    so that a round costs what it claims or releases, not the table size.
    """

    def __init__(self, clock: Callable[[], int]) -> None:
        self.clock = clock
        self.partitions = 0
        self._sessions: dict[str, int] = {}  # session -> expires_ms
        self._owner: list[str | None] = []
        self._epoch: list[int] = []
        self._by_owner: dict[str, set[int]] = {}
        self._claimable: set[int] = set()
        self._named: dict[str, tuple[str | None, int]] = {}
        #: Statements executed, by method name (the simulation's cost figures).
        self.calls: dict[str, int] = {}
        #: Partition rows written (claims + releases): the rebalance cost.
        self.rows_written = 0

    def _count(self, what: str) -> None:
        self.calls[what] = self.calls.get(what, 0) + 1

    def _live(self, session: str, now: int) -> bool:
        expires = self._sessions.get(session)
        return expires is not None and expires >= now

    def _drop_session(self, session: str) -> None:
        del self._sessions[session]
        owned = self._by_owner.get(session)
        if owned:
            self._claimable |= owned

    async def setup(self, partitions: int) -> None:
        self._count("setup")
        if self.partitions and self.partitions != partitions:
            raise PartitionCountMismatch(
                f"the cluster has {self.partitions} partitions, this node is configured for {partitions}")
        if not self.partitions:
            self.partitions = partitions
            self._owner = [None] * partitions
            self._epoch = [0] * partitions
            self._claimable = set(range(partitions))

    async def register(self, session: str, node_id: str, boot: str, ttl_ms: int) -> None:
        self._count("register")
        if session in self._sessions:
            raise StoreError(f"session {session!r} exists")
        self._sessions[session] = self.clock() + ttl_ms
        # A session reaped and registered again owns its old rows again, as
        # in SQL, where "claimable" means an owner without a session row.
        self._claimable -= self._by_owner.get(session, set())

    async def heartbeat(self, session: str, ttl_ms: int) -> bool:
        self._count("heartbeat")
        now = self.clock()
        if not self._live(session, now):
            return False
        self._sessions[session] = now + ttl_ms
        return True

    async def reap(self) -> list[str]:
        self._count("reap")
        now = self.clock()
        dead = sorted(s for s, expires in self._sessions.items() if expires < now)
        for session in dead:
            self._drop_session(session)
        return dead

    async def unregister(self, session: str) -> None:
        self._count("unregister")
        await self._release(session, list(self._by_owner.get(session, ())))
        for name, (owner, epoch) in list(self._named.items()):
            if owner == session:
                self._named[name] = (None, epoch + 1)
        if session in self._sessions:
            self._drop_session(session)
        self._by_owner.pop(session, None)

    async def live_sessions(self) -> list[str]:
        self._count("live_sessions")
        now = self.clock()
        return sorted(s for s, expires in self._sessions.items() if expires >= now)

    async def owner_counts(self) -> dict[str | None, int]:
        self._count("owner_counts")
        counts: dict[str | None, int] = {s: len(ps) for s, ps in self._by_owner.items() if ps}
        unowned = self.partitions - sum(counts.values())
        if unowned:
            counts[None] = unowned
        return counts

    async def owned_by(self, session: str) -> dict[int, int]:
        self._count("owned_by")
        epoch = self._epoch
        return {p: epoch[p] for p in self._by_owner.get(session, ())}

    async def claimable(self, limit: int) -> list[tuple[int, int]]:
        self._count("claimable")
        epoch = self._epoch
        return [(p, epoch[p]) for p in itertools.islice(self._claimable, max(0, limit))]

    async def claim(self, session: str, candidates: Sequence[tuple[int, int]]) -> dict[int, int]:
        self._count("claim")
        if not self._live(session, self.clock()):
            return {}
        won: dict[int, int] = {}
        owner, epoch, claimable = self._owner, self._epoch, self._claimable
        mine = self._by_owner.setdefault(session, set())
        for p, e in candidates:
            if not 0 <= p < self.partitions or epoch[p] != e or p in won:
                continue
            old = owner[p]
            if old is not None:
                self._by_owner[old].discard(p)
            owner[p] = session
            epoch[p] = e + 1
            mine.add(p)
            claimable.discard(p)
            won[p] = e + 1
        self.rows_written += len(won)
        return won

    async def release(self, session: str, partitions: Iterable[int]) -> list[int]:
        self._count("release")
        return await self._release(session, partitions)

    async def _release(self, session: str, partitions: Iterable[int]) -> list[int]:
        mine = self._by_owner.get(session)
        if not mine:
            return []
        done = []
        for p in partitions:
            if p in mine:
                mine.discard(p)
                self._owner[p] = None
                self._epoch[p] += 1
                self._claimable.add(p)
                done.append(p)
        self.rows_written += len(done)
        return done

    async def acquire_named(self, session: str, name: str) -> int | None:
        self._count("acquire_named")
        check_name(name)
        if not self._live(session, self.clock()):
            return None
        owner, epoch = self._named.get(name, (None, 0))
        if owner == session:
            return epoch
        if owner is not None and owner in self._sessions:
            return None
        self._named[name] = (session, epoch + 1)
        return epoch + 1

    async def release_named(self, session: str, name: str) -> bool:
        self._count("release_named")
        owner, epoch = self._named.get(name, (None, 0))
        if owner != session:
            return False
        self._named[name] = (None, epoch + 1)
        return True

    async def named_held_by(self, session: str) -> dict[str, int]:
        self._count("named_held_by")
        return {name: epoch for name, (owner, epoch) in self._named.items() if owner == session}

    # -- for checks (not part of the table's interface) --

    def owner_of(self, partition: int) -> str | None:
        return self._owner[partition]

    def session_rows(self) -> dict[str, int]:
        return dict(self._sessions)

    def partitions_of(self, session: str) -> set[int]:
        """The session's partitions (the live set: do not modify)."""
        return self._by_owner.get(session, set())
