"""Fixtures of the server's tests: a real server on a free port, a real
broker (tests/services.py), SQLite or PostgreSQL, and an HTTP client."""

from __future__ import annotations

import contextlib
from typing import Any

import aiohttp
import pytest

from fleetrpc.config import load_server_settings
from fleetrpc.server import Server, ServerContext

from .fakes import World

SECRET = "test-secret-" + "x" * 60


def server_settings(mqtt_url: str, store_url: str, tmp_path, **sections: dict[str, Any]):
    overrides: dict[str, dict[str, Any]] = {
        "server": {"data_dir": str(tmp_path / "data"), "drain_timeout_s": 5.0},
        "mqtt": {"url": mqtt_url},
        "store": {"url": store_url, "ttl_enabled": False},
        "dispatch": {"min_timeout_ms": 0},
        "http": {"port": 0, "access_log": False},
        "jwt": {"secret": SECRET},
        "auth": {"failed_login_delay_ms": 0},
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return load_server_settings(env={}, overrides=overrides)


class Api:
    """A keep-alive HTTP client of one server."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session

    async def login(self, email: str, password: str = "secret") -> str:
        async with self.session.post(f"{self.url}/api/auth/login", json={"username": email, "password": password}) as r:
            assert r.status == 200, await r.text()
            return (await r.json())["token"]

    async def request(self, method: str, path: str, token: str | None = None, *, json: Any = None,
                      data: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes, aiohttp.ClientResponse]:
        h = dict(headers or {})
        if token is not None:
            h["X-Authorization"] = f"Bearer {token}"
        async with self.session.request(method, f"{self.url}{path}", json=json, data=data, headers=h) as r:
            return r.status, await r.read(), r


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/server.db"


@pytest.fixture
def start_server(mqtt_url, sqlite_url, tmp_path, world):
    """``async with start_server(**sections) as (server, api)``."""

    @contextlib.asynccontextmanager
    async def start(*, store_url: str | None = None, open_repositories=None, **sections):
        settings = server_settings(mqtt_url, store_url or sqlite_url, tmp_path, **sections)
        ctx = ServerContext(settings)
        ctx.open_repositories = open_repositories or world.open
        server = Server(settings, ctx=ctx)
        await server.start()
        try:
            async with aiohttp.ClientSession() as session:
                yield server, Api(ctx.url, session)
        finally:
            await server.stop()

    return start
