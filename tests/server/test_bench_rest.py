"""fleetrpc bench --rest runs end to end (a tiny run, no figures asserted)."""

from __future__ import annotations

import pytest

from fleetrpc.bench.rest import RestBenchConfig, format_report, run_rest_bench

pytestmark = pytest.mark.mqtt


async def test_rest_bench_tiny_run(mqtt_url):
    report = await run_rest_bench(RestBenchConfig(devices=4, window=4, duration=0.3, url=mqtt_url, processes=1))
    for path in ("library", "rest"):
        assert report[path]["calls"] > 0 and report[path]["errors"] == 0
    assert report["rest"]["statuses"] == {"200": report["rest"]["calls"]}
    assert "REST reaches" in format_report(report)
