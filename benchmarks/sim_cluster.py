"""The cluster's lease and takeover logic for many nodes and partitions, in
one process, no network (fleetrpc/cluster/sim.py): cold start, kill -9, a
replacement joining, a clean leave, a node cut off from the database with a
slow clock, then healed.  Checks at every acquisition that no node takes a
partition another node may still act on; prints the figures docs/scaling.md
quotes.

    .venv/bin/python benchmarks/sim_cluster.py                 # 10 nodes, 1,000,000 partitions
    .venv/bin/python benchmarks/sim_cluster.py --nodes 3 --partitions 1024 --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging

from fleetrpc.cluster import ClusterSettings
from fleetrpc.cluster.sim import run_scenario


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--partitions", type=int, default=1_000_000)
    ap.add_argument("--lease-ttl", type=float, default=5.0)
    ap.add_argument("--seeds", type=int, default=1, help="runs with seeds 1..N (takeover min/median/max)")
    ap.add_argument("--json", help="write every run's figures here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    settings = ClusterSettings(partitions=args.partitions, lease_ttl_s=args.lease_ttl)
    runs = [run_scenario(args.nodes, args.partitions, settings, seed=seed) for seed in range(1, args.seeds + 1)]
    first = runs[0]
    print(f"{args.nodes} nodes, {args.partitions:,} partitions, lease {settings.lease_ttl_s} s, "
          f"renew every {settings.renew_interval} s, claim every {settings.claim_interval} s while short, "
          f"margin {settings.margin} s")
    print(f"{'phase':<11} {'taken over':>11} {'balanced':>9} {'moved':>9} {'rows':>9} {'max gap':>8} "
          f"{'stmts':>6} {'shares':>15}")
    for phase in ("cold_start", "kill", "join", "leave", "cut_off", "heal"):
        f = first[phase]
        taken = "" if f.get("taken_over_after_s") is None else f"{f['taken_over_after_s']:.3f} s"
        gap = "" if f["handover_gap_max_s"] is None else f"{f['handover_gap_max_s']:.3f} s"
        print(f"{phase:<11} {taken:>11} {f['balanced_after_s']:>7.3f} s {f['moved']:>9,} "
              f"{f['partition_rows_written']:>9,} {gap:>8} {f['statements']:>6} {str(f['shares']):>15}")
    print(f"steady state: {first['steady_statements_per_node_s']} statements per node and second")
    if len(runs) > 1:
        for key in ("kill", "cut_off"):
            values = sorted(r[key]["taken_over_after_s"] for r in runs)
            print(f"{key} takeover over {len(runs)} runs: min {values[0]:.3f} median "
                  f"{values[len(values) // 2]:.3f} max {values[-1]:.3f} s")
    print(f"no double ownership at any of {sum(r['acquisitions'] for r in runs):,} acquisitions; "
          f"{sum(r['virtual_s'] for r in runs):.0f} virtual s in {sum(r['wall_s'] for r in runs):.1f} wall s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)


if __name__ == "__main__":
    main()
