"""The jobs tests through the real server use the server tests' fixtures
(a server on SQLite and on PostgreSQL, the world of tenants, customers and
users): pytest finds fixtures only in conftest files on a test's path, so
they are imported here, not copied."""

from tests.server.conftest import sqlite_url, start_server, store_url, world  # noqa: F401 (fixtures)
