"""Fixtures of the device endpoint tests: a Dispatcher whose transport is a
DeviceEndpoint on a free port of 127.0.0.1, with a token table."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import pytest

from fleetrpc import Dispatcher, Settings
from fleetrpc.transport.endpoint import DeviceEndpoint, EndpointSettings, Identity

#: access token -> device (what the server's device registry answers)
TOKENS: dict[str, Any] = {
    "token-a": "dev-a",
    "token-b": "dev-b",
    "token-gw": Identity("gw-1", gateway=True),
}


def authenticate(username: str, password: str | None, client_id: str):
    return TOKENS.get(username)


class Rig:
    """A dispatcher on an endpoint; ``online(device)`` awaits presence."""

    def __init__(self, endpoint: DeviceEndpoint, dispatcher: Dispatcher) -> None:
        self.endpoint = endpoint
        self.dispatcher = dispatcher
        self.port = endpoint.ports.get("tcp")
        self._presence: dict[tuple[str, bool], asyncio.Event] = {}
        dispatcher.on_presence(self._on_presence)

    def _on_presence(self, device: str, online: bool) -> None:
        self._event(device, online).set()
        self._event(device, not online).clear()

    def _event(self, device: str, online: bool) -> asyncio.Event:
        return self._presence.setdefault((device, online), asyncio.Event())

    async def online(self, device: str, timeout: float = 10.0) -> None:
        if not self.dispatcher.is_online(device):
            await asyncio.wait_for(self._event(device, True).wait(), timeout)

    async def offline(self, device: str, timeout: float = 10.0) -> None:
        if self.dispatcher.is_online(device):
            await asyncio.wait_for(self._event(device, False).wait(), timeout)


@contextlib.asynccontextmanager
async def make_rig(auth=authenticate, resolve_subdevice=None, settings: Settings | None = None, **endpoint_settings):
    opts = {"host": "127.0.0.1", "port": 0}
    opts.update(endpoint_settings)
    ep = DeviceEndpoint(EndpointSettings(**opts), authenticate=auth, resolve_subdevice=resolve_subdevice)
    d = Dispatcher(settings or Settings(node_id="n1", min_timeout_ms=0, default_timeout_ms=5000), transport=ep)
    await d.start()
    try:
        yield Rig(ep, d)
    finally:
        await d.close()


@pytest.fixture
async def rig():
    async with make_rig() as r:
        yield r


async def wait_thread_event(event: threading.Event, timeout: float = 10.0) -> None:
    """Await a threading.Event set by a client's network thread."""
    if not await asyncio.to_thread(event.wait, timeout):
        raise AssertionError("event not set in time")
