"""`fleetrpc demo --once` end to end: the server on embedded defaults, a
simulated fleet with its tokens, the tour through the REST API."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from fleetrpc.demo import run_demo
from fleetrpc.server.demo_data import DEMO_DEVICES


@pytest.mark.mqtt
async def test_demo_tour_through_the_rest_api(mqtt_url):
    out = io.StringIO()
    rows = await run_demo(devices=12, url=mqtt_url, port=0, once=True, console=Console(file=out, width=200))
    text = out.getvalue()
    assert "console: http://127.0.0.1:" in text and "tenant@thingsboard.org" in text
    online, total = rows["presence"].split()[0].split("/")
    # the dimmers (one kept away for the tour) and every one of ThingsBoard's demo devices
    assert online == total and int(total) == 12 - 1 + len(DEMO_DEVICES)
    assert rows["two-way getValue x400 (REST)"].endswith("calls/s")
    assert rows["one-way setValue 80, read back"] == "200 then 80"
    assert rows["v1 two-way rpcCommand"] == "200"
    assert rows["offline device (v2)"] == "504"
    assert rows["persistent call, device offline"] == "QUEUED"
    assert rows["persistent call, device online"] == "SUCCESSFUL"
    assert rows["job: setValue 50 to every dimmer"] == "12/12 ok"
    assert rows["customer B calls customer A's device"] == "403"
    # ThingsBoard firmware, unchanged, on the device endpoint
    assert "device endpoint: mqtt://127.0.0.1:" in text
    assert rows["ThingsBoard firmware, two-way getTemperature"] == "200"
    assert '"celsius"' in text or "'celsius'" in text
    assert int(rows["ThingsBoard firmware, client-side getCurrentTime"]) > 1_600_000_000_000
    # ... and over ThingsBoard's HTTP device API
    assert rows["ThingsBoard HTTP firmware, two-way getTemperature"] == "200"


async def test_demo_on_the_embedded_broker():
    pytest.importorskip("amqtt", reason="the test command installs the embedded-broker extra")
    rows = await run_demo(devices=4, port=0, once=True, broker="embedded", console=Console(file=io.StringIO()))
    assert rows["persistent call, device online"] == "SUCCESSFUL"
    assert rows["job: setValue 50 to every dimmer"] == "4/4 ok"
    assert rows["ThingsBoard firmware, two-way getTemperature"] == "200"
