"""``fleetrpc bench``: the end-to-end benchmark.

:mod:`fleetrpc.bench.runner` runs the workloads (:func:`run_bench`) against a
simulated fleet (:mod:`fleetrpc.sim`) and a real broker, for fleetrpc's
dispatcher, the plain reference dispatcher (:mod:`.reference`) and the
limit (:mod:`.limit`: MQTT framing and a dict, nothing else);
:mod:`fleetrpc.bench.persistent` measures whole persistent-RPC lifecycles
per second (:func:`~fleetrpc.bench.persistent.run_persistent_bench`, behind
``fleetrpc bench --persistent`` and ``benchmarks/bench_persistent.py``);
:mod:`fleetrpc.bench.command` is the click command around both.
"""

from .runner import TARGETS, WORKLOADS, BenchConfig, ratios, run_bench

__all__ = ["TARGETS", "WORKLOADS", "BenchConfig", "ratios", "run_bench"]
