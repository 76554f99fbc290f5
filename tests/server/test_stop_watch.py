"""A server whose stop hangs says which part it is waiting for."""

from __future__ import annotations

import asyncio
import logging

from fleetrpc.config import ServerSettings
from fleetrpc.server import process
from fleetrpc.server.context import ServerContext
from fleetrpc.server.process import Server


async def test_a_part_slow_to_stop_is_named_until_it_has_stopped(monkeypatch, caplog):
    monkeypatch.setattr(process, "STOP_WARN_S", 0.05)
    stopped = []

    async def quick(ctx):
        yield
        stopped.append("quick")

    async def slow(ctx):
        yield
        await asyncio.sleep(0.18)
        stopped.append("slow")

    server = Server(ServerSettings(), ctx=ServerContext(ServerSettings()), parts=(("quick", quick), ("slow", slow)))
    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "has been stopping" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="fleetrpc.server"):
        await server.start()
        await server.stop()
        told = warnings()
        await asyncio.sleep(0.2)
    assert stopped == ["slow", "quick"]
    assert len(told) >= 2 and all(w.startswith("the slow part has been stopping for") for w in told)
    assert warnings() == told  # nothing more once stopped
