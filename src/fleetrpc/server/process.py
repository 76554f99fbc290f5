"""A server: its parts started in order, stopped in reverse; ``fleetrpc serve``.

    async with Server(settings) as server:      # every part started
        print(server.ctx.url)
    # every part stopped (drained, flushed)

:func:`serve` runs one until SIGTERM or SIGINT, then stops it gracefully.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from ..config import ServerSettings
from .context import ServerContext
from .parts import PARTS, Part

__all__ = ["Server", "serve"]

log = logging.getLogger("fleetrpc.server")

#: A part still stopping after this many seconds is named in a warning,
#: and again every as many seconds: a stop that hangs says where.
STOP_WARN_S = 10.0


class _Stopping:
    """While a part stops: a warning every :data:`STOP_WARN_S` naming it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()
        self.handle = self.loop.call_later(STOP_WARN_S, self._warn)

    def _warn(self) -> None:
        log.warning("the %s part has been stopping for %.0f s", self.name, self.loop.time() - self.started)
        self.handle = self.loop.call_later(STOP_WARN_S, self._warn)

    def done(self) -> None:
        self.handle.cancel()


class Server:
    """One server.  ``parts`` defaults to :data:`~fleetrpc.server.parts.PARTS`;
    ``ctx`` may be given pre-filled (tests plug fakes in)."""

    def __init__(
        self,
        settings: ServerSettings,
        *,
        ctx: ServerContext | None = None,
        parts: tuple[tuple[str, Part], ...] = PARTS,
    ) -> None:
        self.ctx = ctx or ServerContext(settings)
        self.parts = parts
        self._running: list[tuple[str, AsyncIterator[None]]] = []

    async def start(self) -> None:
        """Start every part in order; on a failure, stop those started and raise."""
        for name, part in self.parts:
            gen = part(self.ctx)
            try:
                await gen.__anext__()
            except BaseException:
                log.error("the %s part failed to start", name)
                await self.stop()
                raise
            self._running.append((name, gen))
            log.debug("%s started", name)

    async def stop(self) -> None:
        """Stop the started parts in reverse order; a part that fails to stop
        is logged and the others still stop."""
        while self._running:
            name, gen = self._running.pop()
            stopping = _Stopping(name)
            try:
                await gen.__anext__()
            except StopAsyncIteration:
                log.debug("%s stopped", name)
            except Exception:
                log.exception("the %s part failed to stop cleanly", name)
            else:
                log.error("the %s part yielded twice", name)
                await gen.aclose()
            finally:
                stopping.done()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(settings: ServerSettings, *, ready: Callable[[Server], None] | None = None,
                ctx: ServerContext | None = None) -> None:
    """Run a server until SIGTERM or SIGINT; then drain and stop it."""
    from ..runner import freeze_startup_heap, raise_gc_threshold, stop_on_signals

    with stop_on_signals(asyncio.Event()) as stop:
        async with Server(settings, ctx=ctx) as server:
            freeze_startup_heap()
            raise_gc_threshold()
            log.info("fleetrpc serving at %s", server.ctx.url)
            if ready is not None:
                ready(server)
            await stop.wait()
            log.info("stopping: draining requests (at most %.1f s)", settings.server.drain_timeout_s)
    log.info("stopped")
