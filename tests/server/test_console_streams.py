"""The console's event streams against clients that misbehave: a browser
that stops reading (its socket open, its window full) and a user who opens
stream after stream.  Through the server's HTTP port, on SQLite."""

from __future__ import annotations

import asyncio
import logging
import socket
from urllib.parse import urlsplit

import pytest

from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.mqtt


async def _stalled_stream(url: str, token: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An event stream whose client reads the headers, then nothing more
    (a small receive window, so the server's writes back up soon)."""
    parts = urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
    writer.write(f"GET /api/console/events?token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    return reader, writer


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_a_stream_whose_browser_stopped_reading_ends(start_server, world, caplog):
    """A tab that stops reading (suspended, or a client that never reads)
    kept its stream forever: the write waited on a full socket, so neither
    the keep-alive's expiry check nor a revocation was ever reached, and
    the slot (of MAX_STREAMS) and the bytes waiting in its transport were
    held for good.  A write that waits longer than write_timeout_s ends it."""
    async with start_server() as (server, api):
        hub = server.ctx.console_hub
        hub.write_timeout_s = 0.5
        token = await api.login(world.tenant.email)
        reader, writer = await _stalled_stream(api.url, token)
        try:
            await wait_until(lambda: len(hub.streams) == 1)
            big = {"pad": "x" * 65536}
            for i in range(200):  # ~13 MB: past every socket buffer on the way
                hub._publish({"type": "TEST", "n": i, "body": big}, world.t1, None)
                await asyncio.sleep(0)
            await wait_until(lambda: not hub.streams, timeout=10)
            await asyncio.sleep(0.1)  # (aiohttp finishes the response)
        finally:
            writer.close()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_one_user_cannot_take_every_stream(start_server, world):
    """MAX_STREAMS is shared by every tenant: one user (one stolen or
    scripted token) opening streams until it is reached would lock every
    other tenant's console out.  A user has at most max_streams_per_user."""
    async with start_server() as (server, api):
        hub = server.ctx.console_hub
        token = await api.login(world.tenant.email)
        url = f"{api.url}/api/console/events?token="
        opened = []
        try:
            for _ in range(hub.max_streams_per_user):
                opened.append(await api.session.get(url + token))
                assert opened[-1].status == 200
            extra = await api.session.get(url + token)
            assert extra.status == 429
            extra.release()
            other = await api.login(world.customer.email)  # someone else still gets one
            opened.append(await api.session.get(url + other))
            assert opened[-1].status == 200
        finally:
            for r in opened:
                r.close()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_a_device_s_presence_changes_keep_their_order_while_its_owner_is_looked_up(start_server, world):
    """Each presence change looked the device's owner up on its own: a
    device connecting and dropping at once (or flapping while the database
    is slow) started a query per change, and on a pool of connections the
    answers could come back in another order, leaving the device counted
    online once it was gone.  Changes of one device share one lookup and
    are applied in order."""
    async with start_server() as (server, api):
        ctx = server.ctx
        hub = ctx.console_hub
        dev = world.dev_c1.id
        get_by_id = ctx.devices.get_by_id
        delays = [0.3, 0.0]  # the first query answers last, as a pool may
        asked = []

        async def slow_get_by_id(device_id):
            asked.append(device_id)
            await asyncio.sleep(delays.pop(0) if delays else 0)
            return await get_by_id(device_id)

        ctx.devices.get_by_id = slow_get_by_id
        hub.forget(dev)
        hub._on_presence(dev, True)
        hub._on_presence(dev, False)
        await wait_until(lambda: not hub._tasks)
        assert hub.online_count(str(world.t1)) == 0
        assert asked == [dev]


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_a_slow_stream_s_buffer_is_bounded_in_bytes(start_server, world):
    """The buffer of a tab that reads slower than events come was bounded
    in events (1000), and an event carries its call's params and answer (up
    to max_payload each): a slow tab could hold 1000 x 512 KiB.  It is
    bounded in bytes too (the oldest dropped, and counted as dropped)."""
    from fleetrpc.console.hub import MAX_BUFFER_BYTES

    async with start_server() as (server, api):
        hub = server.ctx.console_hub
        token = await api.login(world.tenant.email)
        reader, writer = await _stalled_stream(api.url, token)
        try:
            await wait_until(lambda: len(hub.streams) == 1)
            big = {"pad": "x" * 65536}
            for i in range(300):  # ~19 MB
                hub._publish({"type": "TEST", "n": i, "body": big}, world.t1, None)
                await asyncio.sleep(0)
            (stream,) = hub.streams
            assert sum(map(len, stream.queue)) <= MAX_BUFFER_BYTES
            assert stream.dropped > 0
        finally:
            writer.close()
