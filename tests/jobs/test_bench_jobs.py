"""benchmarks/bench_jobs.py end to end, tiny: a real broker, SQLite and
PostgreSQL, every phase.  Nothing here asserts a speed: only that every
job of the run ended as its devices answered and the report is whole."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.mqtt, pytest.mark.pg]

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_jobs.py"


def test_bench_jobs_quick(tmp_path, mqtt_url, pg_dsn):
    out = tmp_path / "jobs.json"
    result = subprocess.run(
        [sys.executable, str(BENCH), "--url", mqtt_url, "--dsn", pg_dsn, "--db", "memory,sqlite,pg",
         "--devices", "40", "--rounds", "1", "--callers", "10", "--rate", "50", "--rate-seconds", "1",
         "--memory-devices", "2000", "--lifetime", "120", "--json", str(out)],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    for db in ("memory", "sqlite", "pg"):
        light = report[db]["light"]["runs"]
        assert [r["succeeded"] for r in light["floor"]] == [40]
        for what in ("job", "job_all_in_flight"):
            assert [(r["status"], r["succeeded"]) for r in light[what]] == [("COMPLETED", 40)]
    for db in ("sqlite", "pg"):
        runs = report[db]["persistent"]["runs"]
        assert [r["succeeded"] for r in runs["engine"]] == [40]
        assert [(r["status"], r["succeeded"]) for r in runs["job"]] == [("COMPLETED", 40)]
    rate = report["rate"]
    # 50/s for 1 s: 51 targets, 11 of them past the 40 devices
    assert rate["devices"] == 51 and rate["not_connected"] == 11 and rate["succeeded"] == 40
    for size in ("200", "2000"):
        mem = report["job_memory"][size]
        assert mem["status"] == "COMPLETED" and mem["offline"] == mem["rows_stored"] == int(size)
    assert "tracemalloc_peak_kib" in report["job_memory"]["2000_tracemalloc"]
