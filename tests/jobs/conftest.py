"""The jobs tests through the real server use the server tests' fixtures
(a server on SQLite and on PostgreSQL, the world of tenants, customers and
users): pytest finds fixtures only in conftest files on a test's path, so
they are imported here, not copied."""

import contextlib

import pytest

from tests.jobs.fleet import Fleet
from tests.server.conftest import sqlite_url, start_server, store_url, world  # noqa: F401 (fixtures)


@pytest.fixture
def fleet_server(start_server, world, mqtt_url):  # noqa: F811 (the imported fixtures)
    """``async with fleet_server() as (server, api, fleet)``: a server with
    the test fleet (tests/jobs/fleet.py) created and connected."""

    @contextlib.asynccontextmanager
    async def start():
        async with start_server() as (server, api):
            fleet = await Fleet(server, api, world, mqtt_url).build()
            try:
                yield server, api, fleet
            finally:
                await fleet.close()

    return start
