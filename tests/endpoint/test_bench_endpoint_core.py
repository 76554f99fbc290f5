"""benchmarks/bench_endpoint_core.py, tiny: every form and QoS, with and
without a dispatcher.  No speed is asserted: only that each round trip
was answered (with ``--dispatcher`` the script raises when a call of a
round's broadcast failed) and the report line is whole."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_endpoint_core.py"


@pytest.mark.parametrize("dispatcher", [False, True], ids=["endpoint", "dispatcher"])
@pytest.mark.parametrize("form", ["fleetrpc", "v1"])
@pytest.mark.parametrize("qos", [0, 1])
def test_every_round_trip_is_answered(dispatcher, form, qos):
    args = [sys.executable, str(BENCH), "--devices", "30", "--rounds", "3", "--qos", str(qos), "--form", form]
    if dispatcher:
        args.append("--dispatcher")
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    m = re.search(r"devices=30: (\d+) round trips, ([\d.]+) us CPU each \((.+?),.*\), ([\d.]+) writes each",
                  result.stdout)
    assert m, result.stdout
    assert int(m[1]) == 90 and float(m[2]) > 0
    assert m[3] == ("dispatcher + endpoint" if dispatcher else "endpoint only")
    assert float(m[4]) == 1.0  # the PUBACK owed to a device leaves with its next request
