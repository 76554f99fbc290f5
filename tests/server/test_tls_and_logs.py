"""HTTPS towards clients, MQTT over TLS towards the broker, and the JSON log
output, each through the real thing (a certificate made by openssl in the
test, a throwaway Mosquitto with a TLS listener)."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl

import aiohttp
import pytest

from fleetrpc.broker import free_port, start_broker
from fleetrpc.device import DeviceClient
from fleetrpc.server import Server, ServerContext
from fleetrpc.server.logs import configure_logging
from tests.entities_fixtures import CHEAP_HASHER
from tests.helpers.waiting import wait_until

from .conftest import server_settings
from .tls import make_tls_files

pytestmark = pytest.mark.mqtt


@pytest.fixture(params=["sqlite"])
def store_url(request, sqlite_url):
    """TLS and logs do not depend on the database: SQLite only."""
    return sqlite_url


async def test_https(start_server, world, tmp_path):
    tls = make_tls_files(tmp_path)
    async with start_server(http={"tls_cert": tls.cert, "tls_key": tls.key},
                            ssl=tls.client_context()) as (server, api):
        assert server.ctx.url.startswith("https://127.0.0.1:")
        token = await api.login(world.tenant.email)
        status, body, r = await api.request("GET", "/api/auth/user", token)
        assert status == 200 and json.loads(body)["email"] == world.tenant.email
        assert r.url.scheme == "https"
        port = server.ctx.url.rsplit(":", 1)[1]
        async with aiohttp.ClientSession() as plain:
            # a client that does not trust the certificate is refused ...
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await plain.get(f"{server.ctx.url}/healthz")
            # ... and plain HTTP on the HTTPS port gets no HTTP answer
            with pytest.raises(aiohttp.ClientError):
                await plain.get(f"http://127.0.0.1:{port}/healthz")


async def test_https_settings_are_checked(tmp_path):
    from fleetrpc.config import load_server_settings
    from fleetrpc.errors import ValidationError

    tls = make_tls_files(tmp_path)
    with pytest.raises(ValidationError, match="http.tls_cert and http.tls_key go together"):
        load_server_settings(env={}, overrides={"http": {"tls_cert": tls.cert}})


def _tls_broker_config(port: int, tls) -> list[str]:
    """A second Mosquitto listener, TLS only, beside the plain one."""
    return [f"listener {port} 127.0.0.1", f"cafile {tls.ca}", f"certfile {tls.cert}", f"keyfile {tls.key}",
            "tls_version tlsv1.2"]


async def test_mqtt_over_tls_towards_the_broker(world, tmp_path, sqlite_url):
    tls = make_tls_files(tmp_path)
    other = make_tls_files(tmp_path, "other")
    tls_port = free_port()
    async with start_broker("mosquitto", extra_config=_tls_broker_config(tls_port, tls)) as broker:
        await world.seed(sqlite_url)
        settings = server_settings(f"mqtts://127.0.0.1:{tls_port}", sqlite_url, tmp_path,
                                   mqtt={"tls_ca": tls.ca})
        ctx = ServerContext(settings)
        ctx.password_hasher = CHEAP_HASHER
        async with Server(settings, ctx=ctx):
            # the device on the plain listener, the server on the TLS one:
            # a call that goes through crossed the TLS connection
            dev = DeviceClient(world.dev_t1.id, broker.url)
            dev.add_method("echo", lambda p: p)
            await dev.connect()
            try:
                await wait_until(lambda: ctx.dispatcher.is_online(world.dev_t1.id))
                assert ctx.dispatcher._transport.broker._ssl_context() is not False
                async with aiohttp.ClientSession() as session:
                    async with session.post(f"{ctx.url}/api/auth/login",
                                            json={"username": world.tenant.email, "password": "secret"}) as r:
                        token = (await r.json())["token"]
                    async with session.post(f"{ctx.url}/api/rpc/twoway/{world.dev_t1.id}",
                                            headers={"X-Authorization": f"Bearer {token}"},
                                            json={"method": "echo", "params": {"over": "tls"}}) as r:
                        assert (r.status, await r.json()) == (200, {"over": "tls"})
            finally:
                await dev.close()
        # a broker certificate signed by a CA the server does not trust: refused
        settings = server_settings(f"mqtts://127.0.0.1:{tls_port}", sqlite_url, tmp_path,
                                   mqtt={"tls_ca": other.ca, "reconnect_max": 0.5})
        ctx = ServerContext(settings)
        ctx.password_hasher = CHEAP_HASHER
        server = Server(settings, ctx=ctx)
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
            await asyncio.wait_for(server.start(), 30)  # `fleetrpc serve` prints it as one line


async def test_json_logs(start_server, world, capsys):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("INFO", "json")  # a handler on sys.stderr, which capsys holds
    try:
        async with start_server(http={"access_log": True}) as (server, api):
            token = await api.login(world.tenant.email)
            await api.request("GET", "/api/auth/user", token)
            await api.request("GET", f"/api/device/{world.dev_t2.id}", token)  # 404
            logging.getLogger("fleetrpc.test").error("boom", exc_info=ValueError("bad"), extra={"device": "d1"})
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert all(r["time"].endswith("Z") and "T" in r["time"] for r in records)
    access = [r for r in records if r["logger"] == "fleetrpc.access"]
    user = next(r for r in access if r["message"].startswith("GET /api/auth/user"))
    assert (user["status"], user["user"], user["level"]) == (200, world.tenant.id, "INFO")
    assert user["remote"] == "127.0.0.1" and isinstance(user["ms"], float)
    assert any(r["status"] == 404 and r["message"].startswith(f"GET /api/device/{world.dev_t2.id}") for r in access)
    boom = next(r for r in records if r["logger"] == "fleetrpc.test")
    assert (boom["level"], boom["message"], boom["device"]) == ("ERROR", "boom", "d1")
    assert "ValueError: bad" in boom["exception"]
    assert any(r["logger"] == "fleetrpc.server" and "HTTP API at" in r["message"] for r in records)


async def test_an_oversized_header_is_a_400_not_an_error_log(start_server, caplog):
    """A header line over aiohttp's 8,190 bytes is the client's bad input:
    400, and a line at INFO, not an ERROR with a traceback."""
    caplog.set_level(logging.DEBUG)
    async with start_server(http={"access_log": True}) as (server, api):
        host, port = server.ctx.url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
    assert answer.startswith(b"HTTP/1.0 400 ") or answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    refused = [r for r in caplog.records if "Got more than 8190 bytes" in r.getMessage()]
    assert [(r.levelno, r.exc_info) for r in refused] == [(logging.INFO, None)]


def test_the_http_server_log_keeps_the_servers_own_errors(caplog):
    """Only a malformed request is lowered; a handler's crash stays ERROR."""
    from aiohttp.http_exceptions import BadStatusLine

    from fleetrpc.server.logs import HttpServerLog

    log = HttpServerLog(logging.getLogger("aiohttp.server"))
    caplog.set_level(logging.DEBUG, "aiohttp.server")
    crash = ValueError("bug")
    log.exception("Error handling request from %s", "1.2.3.4", exc_info=crash)
    log.exception("Error handling request from %s", "1.2.3.4", exc_info=BadStatusLine("GARBAGE"))
    (a, b) = caplog.records
    assert (a.levelno, a.exc_info[1], a.getMessage()) == (logging.ERROR, crash, "Error handling request from 1.2.3.4")
    assert (b.levelno, b.exc_info) == (logging.INFO, None)
    assert b.getMessage().startswith("Error handling request from 1.2.3.4: Bad status line")
