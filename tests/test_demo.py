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


@pytest.mark.parametrize("limit, devices, advice", [
    # ThingsBoard's 9 demo devices, 3 thermostats and 4 dimmers: 16 needed
    (15, 4, "--devices 3 or fewer"),
    # not even the fewest dimmers (2) fit: only the setting can change
    (13, 4, "at least 16"),
])
def test_demo_over_the_device_limit_fails_with_one_clear_message(tmp_path, monkeypatch, limit, devices, advice):
    """The demo reads ./fleetrpc.toml; a store.max_devices_per_tenant lower
    than the devices the demo makes stops it before anything starts, with
    one line naming the setting and what to do (not a traceback)."""
    from click.testing import CliRunner

    from fleetrpc.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "fleetrpc.toml").write_text(f"[store]\nmax_devices_per_tenant = {limit}\n")
    result = CliRunner().invoke(main, ["demo", "--once", "--port", "0", "--devices", str(devices),
                                       "--url", "mqtt://127.0.0.1:1"])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fleetrpc demo: "), result.output
    assert "Traceback" not in result.output
    assert f"store.max_devices_per_tenant is {limit}" in lines[0] and "fleetrpc.toml" in lines[0]
    assert "16 devices" in lines[0] and advice in lines[0]


@pytest.mark.mqtt
async def test_demo_runs_at_a_limit_it_fits_in(mqtt_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fleetrpc.toml").write_text("[store]\nmax_devices_per_tenant = 16\n")
    rows = await run_demo(devices=4, url=mqtt_url, port=0, once=True, console=Console(file=io.StringIO()))
    assert rows["job: setValue 50 to every dimmer"] == "4/4 ok"
