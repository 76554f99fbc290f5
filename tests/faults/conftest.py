"""Fixtures of the fault probes: the profile (sizes), the figures each
probe records, a server process on the probe's own broker and PostgreSQL,
and its devices."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from . import profile as _profile
from .rig import Api, Device, ServerProcess

REPORT_ENV = "FLEETRPC_FAULTS_REPORT"


class Figures:
    """What each probe measured, by probe name; written as JSON to
    ``$FLEETRPC_FAULTS_REPORT`` at the end of the session (tools/faults
    renders it)."""

    def __init__(self) -> None:
        self.by_probe: dict[str, dict] = {}

    def record(self, probe: str, **values) -> None:
        self.by_probe.setdefault(probe, {}).update(values)


_FIGURES = Figures()


@pytest.fixture(scope="session")
def faults_profile() -> _profile.Profile:
    return _profile.current()


@pytest.fixture
def figures() -> Figures:
    return _FIGURES


def pytest_sessionfinish(session, exitstatus) -> None:
    path = os.environ.get(REPORT_ENV)
    if path and _FIGURES.by_probe:
        Path(path).write_text(json.dumps({"profile": _profile.current().name, "probes": _FIGURES.by_probe},
                                         indent=2, default=str))


@pytest.fixture
def make_server(mqtt_broker, pg_server, tmp_path):
    """``make_server(devices, **sections)``: a :class:`ServerProcess` on this
    test's broker and PostgreSQL; stopped at the end."""
    made: list[ServerProcess] = []

    def make(devices: list[str], node_id: str = "faults-node", **sections) -> ServerProcess:
        s = ServerProcess(tmp_path / f"server{len(made)}", mqtt_url=mqtt_broker.url, store_url=pg_server.dsn,
                          devices=devices, node_id=node_id, sections=sections)
        made.append(s)
        return s

    yield make
    for s in made:
        s.kill9()


@pytest.fixture
async def api_for():
    """``api_for(server)``: an :class:`Api` client; closed at the end."""
    made: list[Api] = []

    def make(server: ServerProcess) -> Api:
        a = Api(server)
        made.append(a)
        return a

    yield make
    for a in made:
        await a.close()


@pytest.fixture
async def devices(mqtt_broker):
    """``await devices.add(id, **behaviour)``: connected :class:`Device` s;
    closed at the end."""

    class Devices(list):
        async def add(self, device_id: str, *, connect: bool = True, **kw) -> Device:
            d = Device(device_id, mqtt_broker.url, **kw)
            self.append(d)
            if connect:
                await d.connect()
            return d

    made = Devices()
    yield made
    for d in made:
        try:
            await d.close()
        except Exception:
            pass
