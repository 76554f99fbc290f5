"""``fleetrpc bench --persistent`` end to end, tiny: a real broker, real
PostgreSQL and SQLite.  Nothing here asserts a throughput."""

from __future__ import annotations

import json

import asyncpg
import pytest

from tests.services import run_async

pytestmark = [pytest.mark.mqtt, pytest.mark.pg]


async def _databases(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return {r[0] for r in await conn.fetch("SELECT datname FROM pg_database")}
    finally:
        await conn.close()


def test_bench_persistent_quick(tmp_path, mqtt_url, pg_dsn):
    from click.testing import CliRunner

    from fleetrpc.cli import main

    out = tmp_path / "persistent.json"
    result = CliRunner().invoke(
        main,
        ["bench", "--persistent", "--quick", "--devices", "8", "--url", mqtt_url, "--dsn", pg_dsn,
         "--targets", "pg-group,pg-row,sqlite-group", "--json", str(out)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["meta"]["kind"] == "persistent"
    for name in ("pg-group", "pg-row", "sqlite-group"):
        r = report["results"][name]
        assert "error" not in r, r.get("error")
        phase = r["phases"][0]
        assert phase["lifecycles"] > 0 and not phase["errors"]
        assert phase["commit_wait"].startswith("per call")
        # the database has exactly the lifecycles counted, all SUCCESSFUL
        assert r["db_agrees"], r["db_status_counts"]
    assert report["results"]["pg-row-raw (reference, DB only)"]["phases"][0]["lifecycles"] > 0
    assert "pg_group_over_row" in report["summary"]
    assert "lifecycles/s" in result.output
    # the run had a database of its own, and it is gone
    name = report["meta"]["postgresql"]["database"]
    assert name.startswith("fleetrpc_bench_") and name not in run_async(_databases, pg_dsn)
