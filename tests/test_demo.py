"""`fleetrpc demo` end to end (against the test broker, and the embedded one)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from fleetrpc.demo import run_demo


@pytest.mark.mqtt
async def test_demo_runs_every_scenario(mqtt_url):
    out = io.StringIO()
    rows = await run_demo(devices=12, url=mqtt_url, console=Console(file=out, width=200))
    assert rows["presence"] == "12/12 devices online"
    assert rows["broadcast getTemperature"] == "12/12 ok"
    assert rows["stuck device"] == "RpcTimeoutError"
    assert rows["offline device"] == "DeviceOfflineError"
    assert rows["sequential device"] == str(list(range(10)))
    assert rows["client-side unknown method"] == "RemoteError"
    assert rows["device killed"] == "offline"
    assert rows["persistent call, device offline"] == "QUEUED"
    assert rows["persistent call, device online"] == "SUCCESSFUL"
    assert "fleetrpc demo" in out.getvalue()


async def test_demo_on_the_embedded_broker():
    pytest.importorskip("amqtt", reason="the test command installs the embedded-broker extra")
    rows = await run_demo(devices=8, console=Console(file=io.StringIO()), broker="embedded")
    assert rows["presence"] == "8/8 devices online"
    assert rows["persistent call, device online"] == "SUCCESSFUL"
