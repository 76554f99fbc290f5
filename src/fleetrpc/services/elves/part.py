"""Elves in ``fleetrpc serve``: the server part that runs it.

:func:`elves_part` is the ``elves`` part of ``server/parts.py`` (after the
persistent engine, before the HTTP API).  It builds the
:class:`~.service.ElvesService` on the server's dispatcher (its presence is
the agents' online state), its shared ``Database`` (the Elves tables are the
store's migrations 0300-0399) and its event bus, with agents found in the
device registry (:func:`~.directory.device_registry`: an agent is a device
of the tenant whose name is its IP), from the ``[elves]`` settings; starts
it (the MQTT binding, the agents' async results, task-log retention, center
cron firing) and puts it on ``ctx.elves``; lists :mod:`.http` in
``ctx.features`` so that ``create_app`` adds its routes.  Stopping stops the
cron loop and the scheduler's background work, after the HTTP API drained.

Several nodes: set ``dispatch.share_group`` (the same on every node) so
that each Elves call and each agent result reaches one node of the group;
center crons fire once per run whatever the number of nodes: one node of a
cluster runs the firing loop (the ``elves:cron`` named lease, taken over
when it fails), and each firing is claimed by a row in the shared database.

A test may set ``ctx.elves_clock`` (a :class:`~.cron.ManualClock`) before
the server starts: the cron loop then runs on it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["elves_part", "FEATURE"]

log = logging.getLogger("fleetrpc.elves")

#: What ``create_app`` calls for the Elves routes (``ctx.features``).
FEATURE = "fleetrpc.services.elves.http"


async def elves_part(ctx: Any) -> AsyncIterator[None]:
    settings = ctx.settings.elves
    if not settings.enabled:
        yield
        return
    from .directory import device_registry
    from .service import ElvesService

    bus = getattr(ctx, "bus", None)
    service = ElvesService(
        ctx.dispatcher,
        ctx.db,
        settings=settings.elves(),
        directory=device_registry(ctx.db),
        cron_settings=settings.cron(),
        cmdb_settings=settings.cmdb(),
        clock=getattr(ctx, "elves_clock", None),
        bus=bus,
    )
    leases = getattr(ctx, "leases", None)
    if leases is not None and not leases.single_node:
        # One center-cron firing loop per cluster: the holder of this lease.
        async def cron_gate() -> bool:
            try:
                return await leases.acquire_named("elves:cron")
            except Exception as e:  # the database is down: stand by
                log.warning("cron lease: %s", e)
                return False

        service.cron_gate = cron_gate
    await service.start()
    ctx.elves = service
    if FEATURE not in ctx.features:
        ctx.features = (*ctx.features, FEATURE)
    log.info("Elves served (%s)", ", ".join(["scheduler", "heartbeat", "supervisor", "tasklog", *service.parts]))
    try:
        yield
    finally:
        ctx.elves = None
        await service.close()
