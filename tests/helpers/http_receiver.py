"""A throwaway HTTP server that tests POST to (webhooks, Elves processors)."""

from __future__ import annotations

import contextlib
from typing import AsyncIterator


@contextlib.asynccontextmanager
async def post_receiver(handle, path: str = "/") -> AsyncIterator[int]:
    """An aiohttp server on a free port of 127.0.0.1 with ``handle`` on
    POST ``path``, at aiohttp's default request limit (client_max_size:
    1 MiB); yields its port."""
    from aiohttp import web

    app = web.Application()
    app.router.add_post(path, handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]
    finally:
        await runner.cleanup()
