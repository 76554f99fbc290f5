"""The services plugin gives real, working servers, and fleetrpc.broker works."""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import gmqtt
import pytest
from gmqtt.mqtt.constants import MQTTv50, MQTTv311

from fleetrpc.broker import (
    Broker,
    BrokerError,
    embedded_available,
    find_mosquitto,
    mosquitto_config,
    run_broker,
    start_broker,
)


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 1883


class _Client:
    """A gmqtt client subscribed to one topic, with a queue of what arrives."""

    def __init__(self, version: int = MQTTv50) -> None:
        self.version = version
        self.topic = f"fleetrpc-test/{uuid.uuid4().hex}"
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.client = gmqtt.Client(f"fleetrpc-test-{uuid.uuid4().hex[:12]}")
        self.client.set_config({"reconnect_retries": 0})
        self.client.on_message = self._on_message

    def _on_message(self, client, topic, payload, qos, properties):
        self.received.put_nowait(payload)
        return 0

    async def connect(self, host: str, port: int) -> None:
        await asyncio.wait_for(self.client.connect(host, port, version=self.version, keepalive=10), 10)
        self.client.subscribe(self.topic, qos=1)
        # A message to ourselves proves the subscription is in place.
        while True:
            self.client.publish(self.topic, b"ping", qos=1)
            try:
                await asyncio.wait_for(self.received.get(), 0.5)
                return
            except asyncio.TimeoutError:
                continue

    async def round_trip(self, payload: bytes, qos: int = 1) -> float:
        started = time.perf_counter()
        self.client.publish(self.topic, payload, qos=qos)
        assert await asyncio.wait_for(self.received.get(), 10) == payload
        return time.perf_counter() - started

    async def close(self) -> None:
        if self.client.is_connected:
            await self.client.disconnect()


async def _round_trip(host: str, port: int, version: int = MQTTv50) -> None:
    client = _Client(version)
    try:
        await client.connect(host, port)
        await client.round_trip(b"hello fleet")
    finally:
        await client.close()


async def _refused(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return True
    writer.close()
    return False


# -- the plugin's fixtures ---------------------------------------------------------


async def test_mqtt_url_round_trip(mqtt_url):
    await _round_trip(*_host_port(mqtt_url))


async def test_pg_dsn_select_one(pg_dsn):
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


async def test_mqtt_broker_restarts_on_the_same_port(mqtt_broker):
    assert mqtt_broker.kind == "mosquitto"
    assert mqtt_broker.url == f"mqtt://127.0.0.1:{mqtt_broker.port}"
    await _round_trip(mqtt_broker.host, mqtt_broker.port)
    port, pid = mqtt_broker.port, mqtt_broker.pid

    await mqtt_broker.stop()
    assert mqtt_broker.pid is None
    assert await _refused(mqtt_broker.host, port)

    await mqtt_broker.start()
    assert mqtt_broker.port == port
    assert mqtt_broker.pid not in (None, pid)
    await _round_trip(mqtt_broker.host, port)


def test_mqtt_broker_may_open_many_files(mqtt_broker):
    """10,000 clients need the broker's open file limit raised to the hard limit."""
    limits = Path(f"/proc/{mqtt_broker.pid}/limits").read_text()
    line = next(ln for ln in limits.splitlines() if ln.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    assert soft == hard


async def test_pg_server_outage_keeps_committed_data(pg_server):
    conn = await asyncpg.connect(pg_server.dsn)
    await conn.execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
    await conn.close()
    port = pg_server.port

    await pg_server.stop()
    assert not pg_server.running
    with pytest.raises((OSError, asyncpg.PostgresError)):
        await asyncpg.connect(pg_server.dsn, timeout=5)

    await pg_server.start()
    assert pg_server.port == port
    conn = await asyncpg.connect(pg_server.dsn)
    await conn.execute("INSERT INTO t VALUES (2)")
    await conn.close()

    # A crash-like stop: committed rows survive recovery (fsync stays on).
    await pg_server.stop("immediate")
    await pg_server.start()
    conn = await asyncpg.connect(pg_server.dsn)
    try:
        assert await conn.fetchval("SELECT array_agg(v ORDER BY v) FROM t") == [1, 2]
    finally:
        await conn.close()


async def test_pg_server_takes_another_port_when_its_own_was_taken_before_it_started(_pg_template):
    """A free port picked for a throwaway PostgreSQL can be taken before the
    server binds it (seen in a full run: 141 tests of one worker errored);
    the first start picks a new one, a restart never does."""
    from tests.services import PgServer

    server = PgServer(_pg_template.bindir, template=_pg_template.data)
    try:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            server.port = taken = busy.getsockname()[1]
            await server.start()
            assert server.port != taken
            conn = await asyncpg.connect(server.dsn)
            await conn.close()
            await server.stop()
            own = server.port
            busy.close()
            with socket.socket() as busy_again:  # now its own port is taken: a clear error
                busy_again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
                busy_again.bind(("127.0.0.1", own))
                busy_again.listen()
                with pytest.raises(RuntimeError, match="already in use"):
                    await server.start()
                assert server.port == own
    finally:
        server.close()


async def test_pg_server_disconnects_clients_when_stopped(pg_server):
    conn = await asyncpg.connect(pg_server.dsn)
    await pg_server.stop()
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
        await conn.fetchval("SELECT 1")
    conn.terminate()


async def test_fresh_pg_db_is_new_and_empty(fresh_pg_db, pg_dsn):
    name = urlsplit(fresh_pg_db).path.lstrip("/")
    assert name.startswith("fleetrpc_t_")
    assert name != urlsplit(pg_dsn).path.lstrip("/")
    conn = await asyncpg.connect(fresh_pg_db)
    try:
        assert await conn.fetchval("SELECT current_database()") == name
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        assert tables == 0
    finally:
        await conn.close()


def test_no_marker_without_service_fixtures(request):
    # The plugin marks tests by the fixtures they use (-m "not pg" works).
    item = request.node
    assert item.get_closest_marker("mqtt") is None
    assert item.get_closest_marker("pg") is None


def test_mqtt_marker_is_added(mqtt_url, request):
    assert request.node.get_closest_marker("mqtt") is not None


# -- fleetrpc.broker --------------------------------------------------------------


def test_tuned_config_has_what_rpc_traffic_needs():
    text = mosquitto_config(12345)
    for line in (
        "listener 12345 127.0.0.1",
        "allow_anonymous true",
        "persistence false",
        "set_tcp_nodelay true",
        "max_queued_messages 0",
        "max_inflight_messages 0",
    ):
        assert line in text.splitlines()
    untuned = mosquitto_config(12345, tuned=False).splitlines()
    assert "set_tcp_nodelay true" not in untuned
    assert "max_queued_messages 0" not in untuned


async def test_tuned_mosquitto_lifts_the_receive_maximum():
    # gmqtt raises OverflowError once (receive maximum - 1) QoS 1 publishes
    # are unacknowledged: 19 with Mosquitto's default, 65534 when tuned.
    for tuned, burst in ((True, 1000), (False, 100)):
        async with start_broker("mosquitto", tuned=tuned) as broker:
            client = _Client()
            try:
                await client.connect(broker.host, broker.port)
                if tuned:
                    for _ in range(burst):
                        client.client.publish(client.topic, b"x", qos=1)
                    for _ in range(burst):
                        await asyncio.wait_for(client.received.get(), 10)
                else:
                    with pytest.raises(OverflowError):
                        for _ in range(burst):
                            client.client.publish(client.topic, b"x", qos=1)
            finally:
                await client.close()


async def test_tuned_mosquitto_round_trips_fast():
    # Without set_tcp_nodelay a QoS 1 round trip takes ~44 ms (Nagle + delayed ACK).
    async with start_broker("mosquitto") as broker:
        client = _Client()
        try:
            await client.connect(broker.host, broker.port)
            times = [await client.round_trip(b"%d" % i) for i in range(30)]
        finally:
            await client.close()
    assert statistics.median(times) < 0.02, times


async def test_embedded_broker_round_trip_and_restart():
    assert embedded_available(), "amqtt is missing: pip install -e '.[test,embedded-broker]'"
    async with start_broker(prefer="embedded") as broker:
        assert broker.kind == "embedded"
        # amqtt speaks MQTT 3.1.1 only.
        await _round_trip(broker.host, broker.port, MQTTv311)
        port = broker.port
        await broker.stop()
        assert await _refused(broker.host, port)
        await broker.start()
        assert broker.port == port
        await _round_trip(broker.host, port, MQTTv311)
        directory = broker.dir
    assert not directory.exists()


async def test_auto_prefers_mosquitto():
    async with start_broker(prefer="auto") as broker:
        assert broker.kind == ("mosquitto" if find_mosquitto() else "embedded")
        await _round_trip(broker.host, broker.port, MQTTv50 if broker.kind == "mosquitto" else MQTTv311)


def test_run_broker_is_the_blocking_twin():
    with run_broker("mosquitto") as broker:
        pid, directory = broker.pid, broker.dir
        with socket.create_connection((broker.host, broker.port), timeout=5):
            pass
    assert not directory.exists()
    assert not Path(f"/proc/{pid}").exists()  # stopped and reaped


async def test_a_busy_port_is_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(BrokerError, match="in use"):
            async with start_broker("mosquitto", port=port):
                pass


def test_no_broker_at_all_says_how_to_install(monkeypatch):
    import fleetrpc.broker as mod

    monkeypatch.setattr(mod, "find_mosquitto", lambda: None)
    monkeypatch.setattr(mod, "embedded_available", lambda: False)
    with pytest.raises(BrokerError, match="apt-get install mosquitto.*embedded-broker"):
        mod.choose_kind("auto")
    with pytest.raises(BrokerError, match="Mosquitto not found"):
        Broker("mosquitto")
    with pytest.raises(BrokerError, match="amqtt"):
        Broker("embedded")
