"""The lease table in PostgreSQL (semantics: :mod:`fleetrpc.cluster.table`).

Every statement reads the time from the database (``statement_timestamp()``,
fixed for the statement), never from the node, so nodes whose clocks
disagree still agree on who holds what.  Tests may pass ``now_ms`` to run the
same SQL on a virtual clock (``tests/cluster/test_table_model.py``).

Why no two sessions ever win one partition:

- a claim is ``UPDATE ... WHERE partition = p AND epoch = e``: two claimers
  of ``p`` serialise on its row lock, and the second re-checks ``epoch``
  on the row the first committed (READ COMMITTED re-evaluation), finds it
  changed, and skips the row;
- a partition is a candidate only when its owner has no session row, and a
  session row disappears only once expired (:meth:`reap`, a locking DELETE
  that a concurrent renewal either precedes, making the row unexpired, or
  follows, finding no row) or when its own process leaves after releasing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..errors import StoreError
from ..store.db import Database
from .table import LeaseTable, PartitionCountMismatch, check_name

__all__ = ["SqlLeaseTable"]


def _now(n: int) -> str:
    """The database's time in epoch ms, unless parameter ``$n`` gives one."""
    return f"COALESCE(${n}::bigint, floor(extract(epoch FROM statement_timestamp()) * 1000)::bigint)"


_REGISTER = (
    "INSERT INTO cluster_node (session, node_id, boot, started_ms, expires_ms) "
    f"SELECT $1, $2, $3, t.now, t.now + $4 FROM (SELECT {_now(5)} AS now) t"
)
_HEARTBEAT = (
    f"UPDATE cluster_node SET expires_ms = t.now + $2 FROM (SELECT {_now(3)} AS now) t "
    "WHERE session = $1 AND expires_ms >= t.now"
)
_REAP = f"DELETE FROM cluster_node WHERE expires_ms < {_now(1)} RETURNING session"
_LIVE = f"SELECT session FROM cluster_node WHERE expires_ms >= {_now(1)} ORDER BY session"
_OWNER_COUNTS = "SELECT owner, count(*) FROM cluster_partition GROUP BY owner"
_OWNED_BY = "SELECT partition, epoch FROM cluster_partition WHERE owner = $1"
_CLAIMABLE = (
    "SELECT p.partition, p.epoch FROM cluster_partition p "
    "WHERE p.owner IS NULL OR NOT EXISTS (SELECT 1 FROM cluster_node n WHERE n.session = p.owner) "
    # Random order: nodes claiming at once mostly go for different rows.
    "ORDER BY random() LIMIT $1"
)
_CLAIM = (
    f"UPDATE cluster_partition p SET owner = $1, epoch = p.epoch + 1, since_ms = t.now "
    f"FROM (SELECT {_now(4)} AS now) t, unnest($2::int[], $3::bigint[]) AS w(partition, epoch) "
    "WHERE p.partition = w.partition AND p.epoch = w.epoch "
    "AND EXISTS (SELECT 1 FROM cluster_node n WHERE n.session = $1 AND n.expires_ms >= t.now) "
    "RETURNING p.partition, p.epoch"
)
_RELEASE = (
    f"UPDATE cluster_partition SET owner = NULL, epoch = epoch + 1, since_ms = {_now(3)} "
    "WHERE owner = $1 AND partition = ANY($2::int[]) RETURNING partition"
)
_RELEASE_ALL = f"UPDATE cluster_partition SET owner = NULL, epoch = epoch + 1, since_ms = {_now(2)} WHERE owner = $1"
_RELEASE_ALL_NAMED = f"UPDATE cluster_lease SET owner = NULL, epoch = epoch + 1, since_ms = {_now(2)} WHERE owner = $1"
_DELETE_SESSION = "DELETE FROM cluster_node WHERE session = $1"
_NAMED_GET = (
    "SELECT l.owner, l.epoch, l.owner IS NULL OR n.session IS NULL AS free "
    "FROM cluster_lease l LEFT JOIN cluster_node n ON n.session = l.owner WHERE l.name = $1"
)
_LIVE_ONE = f"SELECT EXISTS (SELECT 1 FROM cluster_node WHERE session = $1 AND expires_ms >= {_now(2)})"
_NAMED_INSERT = (
    f"INSERT INTO cluster_lease (name, owner, epoch, since_ms) SELECT $1, $2, 1, t.now "
    f"FROM (SELECT {_now(3)} AS now) t "
    "WHERE EXISTS (SELECT 1 FROM cluster_node n WHERE n.session = $2 AND n.expires_ms >= t.now) "
    "ON CONFLICT (name) DO NOTHING RETURNING epoch"
)
_NAMED_CAS = (
    f"UPDATE cluster_lease l SET owner = $2, epoch = l.epoch + 1, since_ms = t.now "
    f"FROM (SELECT {_now(4)} AS now) t WHERE l.name = $1 AND l.epoch = $3 "
    "AND EXISTS (SELECT 1 FROM cluster_node n WHERE n.session = $2 AND n.expires_ms >= t.now) "
    "RETURNING l.epoch"
)
_NAMED_RELEASE = (
    f"UPDATE cluster_lease SET owner = NULL, epoch = epoch + 1, since_ms = {_now(3)} "
    "WHERE name = $1 AND owner = $2"
)
_NAMED_HELD = "SELECT name, epoch FROM cluster_lease WHERE owner = $1"


class SqlLeaseTable(LeaseTable):
    """The lease table on a PostgreSQL :class:`~fleetrpc.store.db.Database`."""

    def __init__(self, db: Database, *, now_ms: Callable[[], int] | None = None) -> None:
        if db.dialect != "postgresql":
            raise StoreError(f"cluster leases need PostgreSQL (SQLite serves one node), not {db.dialect}")
        self.db = db
        self._now_ms = now_ms

    def _t(self) -> int | None:
        return None if self._now_ms is None else int(self._now_ms())

    async def setup(self, partitions: int) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO cluster_config (key, value) VALUES ('partitions', $1) ON CONFLICT (key) DO NOTHING",
                str(partitions),
            )
            have = int(await conn.fetchval("SELECT value FROM cluster_config WHERE key = 'partitions'"))
            if have != partitions:
                raise PartitionCountMismatch(
                    f"the cluster's database has {have} partitions, this node is configured for "
                    f"{partitions} (cluster.partitions must be the same on every node)"
                )
            if await conn.fetchval("SELECT count(*) FROM cluster_partition") != partitions:
                await conn.execute(
                    "INSERT INTO cluster_partition (partition) SELECT generate_series(0, $1::int - 1) "
                    "ON CONFLICT DO NOTHING",
                    partitions,
                )

    async def register(self, session: str, node_id: str, boot: str, ttl_ms: int) -> None:
        await self.db.execute(_REGISTER, session, node_id, boot, ttl_ms, self._t())

    async def heartbeat(self, session: str, ttl_ms: int) -> bool:
        return await self.db.execute(_HEARTBEAT, session, ttl_ms, self._t()) == 1

    async def reap(self) -> list[str]:
        return sorted(r[0] for r in await self.db.fetch(_REAP, self._t()))

    async def unregister(self, session: str) -> None:
        now = self._t()
        async with self.db.transaction() as conn:
            await conn.execute(_RELEASE_ALL, session, now)
            await conn.execute(_RELEASE_ALL_NAMED, session, now)
            await conn.execute(_DELETE_SESSION, session)

    async def live_sessions(self) -> list[str]:
        return [r[0] for r in await self.db.fetch(_LIVE, self._t())]

    async def owner_counts(self) -> dict[str | None, int]:
        return {r[0]: r[1] for r in await self.db.fetch(_OWNER_COUNTS)}

    async def owned_by(self, session: str) -> dict[int, int]:
        return {r[0]: r[1] for r in await self.db.fetch(_OWNED_BY, session)}

    async def claimable(self, limit: int) -> list[tuple[int, int]]:
        if limit <= 0:
            return []
        return [(r[0], r[1]) for r in await self.db.fetch(_CLAIMABLE, limit)]

    async def claim(self, session: str, candidates: Sequence[tuple[int, int]]) -> dict[int, int]:
        if not candidates:
            return {}
        parts = [c[0] for c in candidates]
        epochs = [c[1] for c in candidates]
        return {r[0]: r[1] for r in await self.db.fetch(_CLAIM, session, parts, epochs, self._t())}

    async def release(self, session: str, partitions: Iterable[int]) -> list[int]:
        parts = list(partitions)
        if not parts:
            return []
        return sorted(r[0] for r in await self.db.fetch(_RELEASE, session, parts, self._t()))

    async def acquire_named(self, session: str, name: str) -> int | None:
        check_name(name)
        now = self._t()
        # A live session only; then the lease row is created on first use,
        # or taken by a compare-and-set on its epoch; a lost race is re-read.
        if not await self._live(session, now):
            return None
        for _ in range(3):
            row: Any = await self.db.fetchrow(_NAMED_GET, name)
            if row is None:
                epoch = await self.db.fetchval(_NAMED_INSERT, name, session, now)
                if epoch is not None:
                    return epoch
                if not await self._live(session, now):
                    return None
                continue  # created by another node meanwhile
            if row["owner"] == session:
                return row["epoch"]
            if not row["free"]:
                return None
            epoch = await self.db.fetchval(_NAMED_CAS, name, session, row["epoch"], now)
            if epoch is not None:
                return epoch
            if not await self._live(session, now):
                return None
        return None

    async def _live(self, session: str, now: int | None) -> bool:
        return bool(await self.db.fetchval(_LIVE_ONE, session, now))

    async def release_named(self, session: str, name: str) -> bool:
        return await self.db.execute(_NAMED_RELEASE, name, session, self._t()) == 1

    async def named_held_by(self, session: str) -> dict[str, int]:
        return {r[0]: r[1] for r in await self.db.fetch(_NAMED_HELD, session)}
