"""fleetrpc bench --rest runs end to end (a tiny run, no figures asserted)."""

from __future__ import annotations

import pytest

from fleetrpc.bench.http_load import _content_length
from fleetrpc.bench.rest import PATHS, RestBenchConfig, format_report, run_rest_bench

pytestmark = pytest.mark.mqtt


@pytest.mark.parametrize("generator", ["raw", "aiohttp"])
async def test_rest_bench_tiny_run(mqtt_url, generator):
    report = await run_rest_bench(RestBenchConfig(devices=4, window=4, duration=0.3, url=mqtt_url, processes=1,
                                                  generator=generator, clients=2))
    for path in PATHS:
        assert report[path]["calls"] > 0 and report[path]["errors"] == 0
        if path != "library":
            assert report[path]["statuses"] == {"200": report[path]["calls"]}
    assert report["http_cpu_us_per_call"] == pytest.approx(
        report["aiohttp_cpu_us_per_call"] + report["unbatched_dispatch_cpu_us_per_call"]
        + report["ours_cpu_us_per_call"])
    assert "REST reaches" in format_report(report)


def test_raw_generator_reads_content_length_framing():
    assert _content_length(b"http/1.1 200 ok\r\ncontent-type: application/json\r\ncontent-length: 12") == 12
    assert _content_length(b"http/1.1 200 ok\r\ncontent-length: 3\r\nserver: x") == 3
    assert _content_length(b"http/1.1 200 ok\r\nserver: x") == 0
    with pytest.raises(RuntimeError):
        _content_length(b"http/1.1 200 ok\r\ntransfer-encoding: chunked")
