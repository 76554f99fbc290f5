"""A small run of the cluster simulation (benchmarks/sim_cluster.py runs
10 nodes and 1,000,000 partitions): it checks every acquisition against
every node that may still act, so a run that ends is a run without double
ownership; the figures must match the bounds docs/scaling.md states."""

from __future__ import annotations

import pytest

from fleetrpc.cluster import ClusterSettings
from fleetrpc.cluster.sim import DoubleOwnership, Simulation, run_scenario


@pytest.mark.parametrize("nodes,partitions", [(3, 64), (10, 20_000)])
def test_scenario(nodes, partitions):
    s = ClusterSettings(partitions=partitions)
    out = run_scenario(nodes, partitions, s, seed=nodes)
    bound = s.lease_ttl_s + s.renew_interval  # expiry, then the next round
    assert out["kill"]["taken_over_after_s"] <= bound
    assert out["kill"]["taken_over_after_last_renewal_s"] <= bound + 1e-6
    assert out["cut_off"]["taken_over_after_s"] <= bound / out["cut_off"]["clock_rate"]
    # a join moves exactly the newcomer's share, each hand-over within one
    # claim interval of the release
    assert out["join"]["moved"] in (out["join"]["moved_ideal"], out["join"]["moved_ideal"] + 1)
    assert out["join"]["handover_gap_max_s"] <= s.claim_interval + 1e-6
    assert out["cold_start"]["partition_rows_written"] == partitions  # no partition claimed twice
    for phase in ("cold_start", "kill", "join", "leave", "cut_off", "heal"):
        low, high = out[phase]["shares"]
        assert high - low <= 1 or phase == "cut_off", (phase, out[phase])


def test_the_check_catches_a_clock_slower_than_the_margin_allows():
    """The simulation's check is not vacuous: a node cut off whose clock
    runs at half speed, with no margin, still acts after the others took
    over, and the simulation says so."""
    s = ClusterSettings(partitions=100, lease_ttl_s=5.0, margin_s=0.0)
    sim = Simulation(100, s, max_rate_skew=0.0)
    a, b = sim.add_node("a"), sim.add_node("b")
    sim.run_until(10.0)
    a.set_rate(0.5)
    sim.cut_off(a)
    with pytest.raises(DoubleOwnership):
        sim.run_until(30.0)
