"""LeaseManagers of two and three nodes on one real PostgreSQL, in one
process: shares, rebalancing, simultaneous claims, fencing, clock skew.

Every test keeps an ownership history (on_acquired / on_lost, on the real
clock) and checks at the end that no partition was ever owned by two nodes
at once; a sampler also checks the managers' ``owns()`` every few
milliseconds while the test runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from fleetrpc.cluster import ClusterSettings, LeaseManager, NodeIdentity
from fleetrpc.cluster.sql import SqlLeaseTable
from fleetrpc.cluster.table import PartitionCountMismatch
from fleetrpc.store.db import open_database

from .history import Cluster, skewed_clock

PARTITIONS = 64
# Short leases keep the tests quick; the ratios are the defaults'.
SETTINGS = ClusterSettings(partitions=PARTITIONS, lease_ttl_s=2.0, margin_s=0.4,
                           renew_interval_s=0.5, claim_interval_s=0.1, release_timeout_s=0.5)


@contextlib.asynccontextmanager
async def databases(dsn: str, n: int):
    dbs = [await open_database(dsn, min_size=1, max_size=2) for _ in range(n)]
    try:
        yield dbs
    finally:
        for db in dbs:
            await db.close()


@contextlib.asynccontextmanager
async def sampler(cluster: Cluster, period: float = 0.005):
    """Checks, every ``period``, that no partition is owned by two managers."""
    violations: list[str] = []
    samples = 0

    async def run() -> None:
        nonlocal samples
        while True:
            seen: dict[int, str] = {}
            for name, m in cluster.managers.items():
                for p in m.owned():
                    if p in seen:
                        violations.append(f"partition {p} owned by {seen[p]} and {name}")
                    seen[p] = name
            samples += 1
            await asyncio.sleep(period)

    task = asyncio.get_running_loop().create_task(run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not violations, violations[:5]
    assert samples > 10


def freeze(m: LeaseManager) -> None:
    """The node stops renewing (its database is unreachable) but lives on:
    its own fence timer must stop it before the others take over."""
    assert m._task is not None
    m._task.cancel()


async def test_three_nodes_share_rebalance_and_leave(fresh_pg_db):
    async with databases(fresh_pg_db, 3) as dbs:
        cluster = Cluster()
        a, b, c = (cluster.add(n, LeaseManager(db, n, SETTINGS)) for n, db in zip("abc", dbs))
        async with sampler(cluster):
            await a.start()
            await cluster.until(lambda: cluster.counts("a") == [PARTITIONS])
            # A second node: a hands half over, without a gap longer than b's
            # claim interval (measured below).
            await b.start()
            await cluster.until(lambda: cluster.balanced(PARTITIONS, "ab"))
            assert sorted(cluster.counts("a", "b")) == [32, 32]
            await c.start()
            await cluster.until(lambda: cluster.balanced(PARTITIONS, "abc"))
            assert sorted(cluster.counts("a", "b", "c")) == [21, 21, 22]
            assert a.status()["live_nodes"] == 3 and a.status()["ready"]
            # A node leaves cleanly: the others take its share at once.
            await b.stop()
            await cluster.until(lambda: cluster.balanced(PARTITIONS, "ac"))
            await a.stop()
            await cluster.until(lambda: cluster.counts("c") == [PARTITIONS])
            await c.stop()
        assert cluster.history.check_no_overlap() > PARTITIONS
        # Every hand-over left the partition unowned only briefly.
        gaps = handover_gaps(cluster)
        assert gaps and max(gaps) < SETTINGS.lease_ttl_s


def handover_gaps(cluster: Cluster) -> list[float]:
    by_partition: dict[int, list] = {}
    for iv in cluster.history.intervals:
        by_partition.setdefault(iv.partition, []).append(iv)
    gaps = []
    for ivs in by_partition.values():
        ivs.sort(key=lambda iv: iv.start)
        gaps += [b.start - a.end for a, b in zip(ivs, ivs[1:]) if a.end is not None]
    return gaps


async def test_takeover_of_a_node_that_stops_renewing(fresh_pg_db):
    """A node cut off from the database fences itself (on_lost at its
    deadline); the others take its partitions once its session expired on
    the database's clock, and never before it stopped."""
    async with databases(fresh_pg_db, 3) as dbs:
        cluster = Cluster()
        ms = [cluster.add(n, LeaseManager(db, n, SETTINGS)) for n, db in zip("abc", dbs)]
        async with sampler(cluster):
            await asyncio.gather(*(m.start() for m in ms))
            await cluster.until(lambda: cluster.balanced(PARTITIONS, "abc"))
            victim = ms[0]
            theirs = set(victim.owned())
            frozen_at = time.monotonic()
            freeze(victim)
            await cluster.until(lambda: cluster.all_owned_once(PARTITIONS, "bc") and not victim.owned())
            took = time.monotonic() - frozen_at
            # its own fence came first: it stopped at its deadline
            assert victim.lapsed_at is not None and victim.status()["owned"] == 0
        cluster.history.check_no_overlap()
        owners = cluster.history.owners()
        assert all(owners[p] in "bc" for p in theirs)
        # Bound: the lease time plus one renewal round, plus scheduling slack.
        print(f"takeover after freeze: {took:.3f} s (lease {SETTINGS.lease_ttl_s} s)")
        assert took < SETTINGS.lease_ttl_s + 3 * SETTINGS.renew_interval + 2.0
        for m in ms[1:]:
            await m.stop()


async def test_two_nodes_claiming_the_same_partitions_at_once(fresh_pg_db):
    """Two sessions read the same claimable rows and claim them in the same
    instant, many times over: each partition goes to exactly one."""
    async with databases(fresh_pg_db, 2) as dbs:
        t1, t2 = SqlLeaseTable(dbs[0]), SqlLeaseTable(dbs[1])
        await t1.setup(PARTITIONS)
        await t1.register("n1.x.1", "n1", "x", 60_000)
        await t2.register("n2.y.1", "n2", "y", 60_000)
        wins = [0, 0]
        for _ in range(30):
            candidates = await t1.claimable(PARTITIONS)
            assert len(candidates) == PARTITIONS
            r1, r2 = await asyncio.gather(t1.claim("n1.x.1", candidates), t2.claim("n2.y.1", candidates))
            assert not set(r1) & set(r2)
            assert set(r1) | set(r2) == set(range(PARTITIONS))
            wins[0] += len(r1)
            wins[1] += len(r2)
            # every partition's owner row agrees with the winner
            assert await t1.owned_by("n1.x.1") == r1 and await t1.owned_by("n2.y.1") == r2
            await t1.release("n1.x.1", r1)
            await t2.release("n2.y.1", r2)
        print(f"simultaneous claims won: {wins}")
        # a claim with a stale epoch wins nothing
        stale = await t1.claimable(4)
        assert await t2.claim("n2.y.1", stale)
        assert await t1.claim("n1.x.1", stale) == {}


async def test_simultaneous_start_of_three_nodes(fresh_pg_db):
    async with databases(fresh_pg_db, 3) as dbs:
        cluster = Cluster()
        ms = [cluster.add(n, LeaseManager(db, n, SETTINGS)) for n, db in zip("abc", dbs)]
        async with sampler(cluster, period=0.002):
            await asyncio.gather(*(m.start() for m in ms))
            await cluster.until(lambda: cluster.balanced(PARTITIONS, "abc"))
            await asyncio.gather(*(m.stop() for m in ms))
        cluster.history.check_no_overlap()


@pytest.mark.parametrize("rate", [0.85, 1.3])
async def test_clock_skew_within_the_margin(fresh_pg_db, rate):
    """One node's clock is an hour ahead and runs 15 % slow (or 30 % fast):
    leases expire on the database's clock, so the offset changes nothing and
    the margin (20 % of the lease) absorbs the rate.  The skewed node is the
    one cut off, the worst case: a slow clock keeps it acting longest."""
    clock, to_real = skewed_clock(offset=3600.0, rate=rate)
    async with databases(fresh_pg_db, 2) as dbs:
        cluster = Cluster()
        skewed = cluster.add("s", LeaseManager(dbs[0], "s", SETTINGS, clock=clock), to_real)
        normal = cluster.add("n", LeaseManager(dbs[1], "n", SETTINGS))
        async with sampler(cluster):
            await skewed.start()
            await normal.start()
            await cluster.until(lambda: cluster.balanced(PARTITIONS, "sn"))
            freeze(skewed)
            await cluster.until(lambda: cluster.counts("n") == [PARTITIONS] and not skewed.owned())
        cluster.history.check_no_overlap()
        await normal.stop()


async def test_named_leases_are_exclusive_and_taken_over(fresh_pg_db):
    async with databases(fresh_pg_db, 2) as dbs:
        a = LeaseManager(dbs[0], "a", SETTINGS)
        b = LeaseManager(dbs[1], "b", SETTINGS)
        lost: list[list[str]] = []
        a.on_named_lost(lost.append)
        await a.start()
        await b.start()
        results = await asyncio.gather(a.acquire_named("job:1"), b.acquire_named("job:1"))
        assert sorted(results) == [False, True]
        holder, other = (a, b) if results[0] else (b, a)
        assert holder.holds_named("job:1") and not other.holds_named("job:1")
        assert await holder.acquire_named("job:1")  # idempotent for the holder
        first = holder.named_token("job:1")
        await holder.release_named("job:1")
        assert await other.acquire_named("job:1")
        assert other.named_token("job:1") > first
        # the holder is cut off: it loses the lease at its deadline, then the
        # other node can take it
        assert await a.acquire_named("job:2")
        freeze(a)
        while not await b.acquire_named("job:2"):
            await asyncio.sleep(SETTINGS.claim_interval)
        assert lost and "job:2" in lost[-1] and not a.holds_named("job:2")
        await b.stop()


async def test_fences_itself_when_the_database_goes_away(pg_server):
    """PostgreSQL stops: renewals fail, the node stops acting before its
    lease could expire, /readyz says so; when the database is back the node
    registers a new session and takes its share again."""
    db = await open_database(pg_server.dsn, min_size=1, max_size=2, connect_timeout=1.0, command_timeout=1.0)
    try:
        cluster = Cluster()
        m = cluster.add("a", LeaseManager(db, "a", SETTINGS))
        await m.start()
        await cluster.until(lambda: cluster.counts("a") == [PARTITIONS])
        first_session = m.session
        await pg_server.stop("immediate")
        await cluster.until(lambda: not m.owned(), timeout=SETTINGS.lease_ttl_s * 3)
        status = m.status()
        assert not status["ready"] and status["owned"] == 0 and status["last_error"]
        await pg_server.start()
        await cluster.until(lambda: cluster.counts("a") == [PARTITIONS], timeout=30)
        assert m.status()["ready"]
        assert m.session is not None
        await m.stop()
        assert first_session is not None
    finally:
        await db.close()
    cluster.history.check_no_overlap()


async def test_partition_count_must_agree(fresh_pg_db):
    async with databases(fresh_pg_db, 2) as dbs:
        a = LeaseManager(dbs[0], "a", SETTINGS)
        await a.start()
        b = LeaseManager(dbs[1], "b", ClusterSettings(partitions=PARTITIONS * 2, lease_ttl_s=2.0))
        with pytest.raises(PartitionCountMismatch, match="64 partitions"):
            await b.start()
        await a.stop()


async def test_sqlite_is_one_node_that_owns_everything(tmp_path):
    db = await open_database(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        assert 400 in await db.applied_migrations()
        m = LeaseManager(db, NodeIdentity.new("solo"), SETTINGS)
        got: list[list[int]] = []
        m.on_acquired(got.append)
        await m.start()
        assert got == [list(range(PARTITIONS))] and m.owns(5) and m.status()["mode"] == "single"
        assert await m.acquire_named("job:1") and m.holds_named("job:1")
        await m.stop()
        assert not m.owns(5)
    finally:
        await db.close()
