"""TEMPORARY stub (replaced by the real services plugin): points tests at the
machine's own Mosquitto and PostgreSQL."""
import os
import pytest


@pytest.fixture(scope="session")
def mqtt_url():
    return os.environ.get("FLEETRPC_MQTT_URL", "mqtt://127.0.0.1:1883")


@pytest.fixture(scope="session")
def pg_dsn():
    return os.environ.get("FLEETRPC_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
