"""Two persistent engines in one process, each with its own lease manager
on one PostgreSQL: the hand-over path without process start-up costs."""

from __future__ import annotations

import asyncio

import pytest

from fleetrpc.cluster import ClusterSettings, LeaseManager, partition_of
from fleetrpc.errors import QueueFullError
from fleetrpc.store.db import open_database
from tests.test_persistent import Rig

pytestmark = [pytest.mark.mqtt, pytest.mark.pg]

PARTS = 8


async def _node(mqtt_url, dsn, name, **engine):
    db = await open_database(dsn)
    leases = LeaseManager(db, name, ClusterSettings(partitions=PARTS, lease_ttl_s=2.0))
    await leases.start()
    rig = Rig(mqtt_url, dsn, engine_options={"leases": leases, "poll_interval_s": 0.5, **engine})
    return rig, leases, db


async def _balanced(*managers):
    for _ in range(200):
        owned = [len(m.owned()) for m in managers]
        if sum(owned) == PARTS and max(owned) - min(owned) <= 1:
            return
        await asyncio.sleep(0.05)
    raise AssertionError([len(m.owned()) for m in managers])


async def test_a_call_stored_by_another_node_is_sent_by_the_owner(mqtt_url, fresh_pg_db):
    a, la, dba = await _node(mqtt_url, fresh_pg_db, "eng-a", queue_cap=3)
    b, lb, dbb = await _node(mqtt_url, fresh_pg_db, "eng-b", queue_cap=3)
    try:
        await _balanced(la, lb)
        await a.start()
        await b.start()
        dev = await b.device()
        p = partition_of(dev.device_id, PARTS)
        owner, other = (a, b) if la.owns(p) else (b, a)
        rpc_id = await other.engine.call(dev.device_id, "echo", {"x": 1}, timeout_ms=5000)
        assert rpc_id not in other.engine._live  # stored, not driven, by the non-owner
        rec = await other.engine.wait(rpc_id, timeout=10)  # follows it in the database
        assert rec.status.value == "SUCCESSFUL" and rec.response == {"x": 1}
        assert owner.engine.stats.recovered >= 1 and other.engine.stats.handed_to_owner == 1
        # The queue cap, counted in the database by the non-owner: an
        # offline device whose partition the owner holds.
        other_leases = la if other is a else lb
        offline = next(f"offline-{i}" for i in range(1000)
                       if not other_leases.owns(partition_of(f"offline-{i}", PARTS)))
        ids = [await other.engine.call(offline, "echo", {}, timeout_ms=5000) for _ in range(3)]
        with pytest.raises(QueueFullError):
            await other.engine.call(offline, "echo", {}, timeout_ms=5000)
        for _ in range(100):  # the owner loaded them (notified)
            if all(i in owner.engine._live for i in ids):
                break
            await asyncio.sleep(0.05)
        assert all(i in owner.engine._live for i in ids)
        # A delete through the non-owner drops the call at its owner.
        await other.engine.delete(ids[0], tenant_id="default")
        for _ in range(100):
            if ids[0] not in owner.engine._live:
                break
            await asyncio.sleep(0.05)
        assert ids[0] not in owner.engine._live and ids[1] in owner.engine._live
    finally:
        for r in (a, b):
            await r.stop()
        for m in (la, lb):
            await m.stop()
        for db in (dba, dbb):
            await db.close()


@pytest.mark.parametrize("follow", ["wait", "final"])
async def test_a_waiter_follows_its_call_when_the_partition_moves(mqtt_url, fresh_pg_db, follow):
    """A call driven (and waited for) on one node; that node leaves: the
    other takes the partition over and finishes the call; the waiter on the
    first node gets the final record from the database.  ``final``: the
    future a fleet job follows its calls by, no task until the call moves."""
    a, la, dba = await _node(mqtt_url, fresh_pg_db, "eng-a")
    b, lb, dbb = await _node(mqtt_url, fresh_pg_db, "eng-b")
    try:
        await _balanced(la, lb)
        await a.start()
        await b.start()
        name = next(f"moving-{i}" for i in range(1000) if la.owns(partition_of(f"moving-{i}", PARTS)))
        rpc_id = await a.engine.call(name, "echo", {"y": 2}, timeout_ms=5000)
        assert rpc_id in a.engine._live  # offline device: queued on its owner
        if follow == "wait":
            waiter = asyncio.ensure_future(a.engine.wait(rpc_id, timeout=20))
        else:
            waiter = a.engine.final(rpc_id)
            assert not isinstance(waiter, asyncio.Task)
        await asyncio.sleep(0.2)
        await la.stop()  # a leaves: drops its calls, releases; b claims them
        for _ in range(100):
            if rpc_id in b.engine._live:
                break
            await asyncio.sleep(0.05)
        assert rpc_id in b.engine._live and rpc_id not in a.engine._live
        await b.device(name)  # the device comes online: b sends it
        rec = await waiter
        assert rec.status.value == "SUCCESSFUL" and rec.response == {"y": 2}
        assert a.engine.stats.dropped == 1
    finally:
        for r in (a, b):
            await r.stop()
        await lb.stop()
        for db in (dba, dbb):
            await db.close()
