"""The lease table against a plain model: the in-memory table (hypothesis
stateful, many runs) and the PostgreSQL one (the same random operations on
a virtual clock, fewer runs).  They share the model, so the simulation's
table behaves as the SQL does."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from fleetrpc.cluster import MemoryLeaseTable
from fleetrpc.cluster.sql import SqlLeaseTable
from fleetrpc.store.db import open_database

from .model import ModelTable, apply, operations

PARTITIONS = 6


def drive(coro):
    """Run a coroutine that never suspends (the in-memory table's)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("the in-memory table suspended")


class MemoryTableMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self.clock = [0]
        self.table = MemoryLeaseTable(lambda: self.clock[0])
        self.model = ModelTable(PARTITIONS)
        drive(self.table.setup(PARTITIONS))

    @rule(op=operations(PARTITIONS))
    def step(self, op):
        drive(apply(op, self.table, self.model, self.clock))

    @precondition(lambda self: hasattr(self, "table"))
    @rule()
    def indexes_agree(self):
        # the table's indexes say what its rows say
        for s in list(self.model.sessions) + [None]:
            if s is not None:
                assert self.table.partitions_of(s) == {p for p, o in enumerate(self.model.owner) if o == s}
        assert {p for p, _ in self.model.claimable()} == set(self.table._claimable)


TestMemoryTable = MemoryTableMachine.TestCase
TestMemoryTable.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operations(PARTITIONS), min_size=5, max_size=40))
@example(ops=[("register", "a.x.1"), ("advance", 1001), ("heartbeat", "a.x.1"), ("reap",),
              ("register", "b.y.1"), ("claim_claimable", "b.y.1", 3), ("acquire_named", "a.x.1", "job:1")])
# found here: one partition named twice in one claim, the second time with
# the epoch the first claim makes (the SQL takes it once, the model took it twice)
@example(ops=[("register", "a.x.1"), ("claim_stale", "a.x.1", [(0, 0), (0, 1)]), ("owned_by", "a.x.1")])
def test_postgresql_table_matches_the_model(fresh_pg_db, ops):
    async def run() -> None:
        db = await open_database(fresh_pg_db, min_size=1, max_size=1)
        try:
            await db.execute("TRUNCATE cluster_node, cluster_partition, cluster_lease, cluster_config")
            clock = [0]
            table = SqlLeaseTable(db, now_ms=lambda: clock[0])
            await table.setup(PARTITIONS)
            model = ModelTable(PARTITIONS)
            for op in ops:
                await apply(op, table, model, clock)
        finally:
            await db.close()

    asyncio.run(run())


def test_a_session_registered_again_owns_its_old_rows():
    # Found by the state machine: once reaped, b.y.1's partition was
    # claimable; registered again, the session owns it again (as in SQL).
    clock = [0]
    table, model = MemoryLeaseTable(lambda: clock[0]), ModelTable(PARTITIONS)
    drive(table.setup(PARTITIONS))
    for op in [("register", "b.y.1"), ("claim_claimable", "b.y.1", 1), ("advance", 1001), ("reap",),
               ("register", "b.y.1"), ("claim_claimable", "a.x.1", 1)]:
        drive(apply(op, table, model, clock))
