"""LeaseManagers on the in-memory table, driven by hypothesis: nodes start,
run rounds, are cut off from the table, are killed, leave; virtual time
advances; each node has its own clock offset and a rate within the margin.

After every step: no partition is acted on by two nodes (each node's
``owned()`` on its own clock lies inside what the table says its session
owns, and the table gives each partition one owner).  At the end, once the
live nodes have run undisturbed for a while: every partition is owned by
exactly one live node, shares within one of each other.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from fleetrpc.cluster import ClusterSettings, LeaseManager, MemoryLeaseTable

from .test_table_model import drive

PARTITIONS = 12
SETTINGS = ClusterSettings(partitions=PARTITIONS, lease_ttl_s=1.0, margin_s=0.2,
                           renew_interval_s=0.25, claim_interval_s=0.05)


class Node:
    def __init__(self, name: str, table: MemoryLeaseTable, now: list[float], offset: float, rate: float) -> None:
        self.offset, self.rate = offset, rate
        self.manager = LeaseManager(table, name, SETTINGS, clock=lambda: offset + rate * now[0])
        self.next_round = now[0]
        self.cut_off = False
        self.dead = False


class ManagersMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self.now = [0.0]  # virtual seconds
        self.table = MemoryLeaseTable(lambda: round(self.now[0] * 1000))
        drive(self.table.setup(PARTITIONS))
        self.nodes: list[Node] = []

    def _round(self, node: Node) -> None:
        delay = drive(node.manager.run_round())
        node.next_round = self.now[0] + delay / node.rate

    @precondition(lambda self: len(self.nodes) < 5)
    @rule(offset=st.sampled_from([0.0, -3600.0, 86400.0]), rate=st.sampled_from([0.85, 1.0, 1.25]))
    def start_node(self, offset, rate):
        node = Node(f"n{len(self.nodes)}", self.table, self.now, offset, rate)
        drive(node.manager.start(background=False))
        node.next_round = self.now[0] + SETTINGS.claim_interval / rate
        self.nodes.append(node)

    @rule(dt=st.sampled_from([0.01, 0.05, 0.1, 0.3, 0.9, 1.5]))
    def advance(self, dt):
        """Time passes; every node not cut off runs its due rounds."""
        end = self.now[0] + dt
        while True:
            due = [n for n in self.nodes if not n.dead and not n.cut_off and n.next_round <= end]
            if not due:
                break
            node = min(due, key=lambda n: n.next_round)
            self.now[0] = max(self.now[0], node.next_round)
            self._check()
            self._round(node)
            self._check()
        self.now[0] = end
        for n in self.nodes:
            if not n.dead:
                n.manager.check_deadline()

    @precondition(lambda self: self.nodes)
    @rule(i=st.integers(0, 4))
    def cut_off(self, i):
        node = self.nodes[i % len(self.nodes)]
        node.cut_off = True

    @precondition(lambda self: self.nodes)
    @rule(i=st.integers(0, 4))
    def heal(self, i):
        node = self.nodes[i % len(self.nodes)]
        if node.cut_off and not node.dead:
            node.cut_off = False
            node.next_round = self.now[0]

    @precondition(lambda self: self.nodes)
    @rule(i=st.integers(0, 4))
    def kill(self, i):
        self.nodes[i % len(self.nodes)].dead = True

    @precondition(lambda self: self.nodes)
    @rule(i=st.integers(0, 4))
    def leave(self, i):
        node = self.nodes[i % len(self.nodes)]
        if not node.dead and not node.cut_off:
            drive(node.manager.stop())
            node.dead = True

    @invariant()
    def no_double_ownership(self):
        if hasattr(self, "nodes"):
            self._check()

    def _check(self):
        seen: dict[int, str] = {}
        for n in self.nodes:
            if n.dead:
                continue  # a killed process acts on nothing
            m = n.manager
            owned = m.owned()
            if owned:
                assert owned <= self.table.partitions_of(m.session), (m.session, owned)
                assert m.session in self.table.session_rows()
            for p in owned:
                assert p not in seen, f"partition {p}: {seen[p]} and {m.session}"
                seen[p] = m.session

    def teardown(self):
        if not hasattr(self, "nodes"):
            return
        live = [n for n in self.nodes if not n.dead]
        for n in live:
            n.cut_off = False
            n.next_round = min(n.next_round, self.now[0])
        if not live:
            return
        # Undisturbed for a while: the lease time for the dead to expire,
        # then rounds enough to claim and rebalance.
        for _ in range(10):
            self.advance(SETTINGS.lease_ttl_s)
        counts = [len(n.manager.owned()) for n in live]
        owned = [p for n in live for p in n.manager.owned()]
        assert sorted(owned) == list(range(PARTITIONS)), counts
        assert max(counts) - min(counts) <= 1, counts


TestManagers = ManagersMachine.TestCase
TestManagers.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
