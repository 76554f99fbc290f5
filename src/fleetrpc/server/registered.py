"""Which devices exist, in memory: the presence registry's ``is_known``.

Presence is kept for registered devices only (``fleetrpc.presence``), so a
flood of made-up device ids can never push a registered device that is
online out of the registry.  The check runs for every presence message and
heartbeat, on the event loop, so it must be a set lookup, not a query:
:class:`RegisteredDevices` holds the ids of every device (about 100 bytes
each: 10 MB for 100,000 devices), loaded when the server starts and kept in
step by

- the device repository's listeners, for what this node creates and
  deletes (at once, before the device can connect: its broker account is
  provisioned by a listener too), and what the other nodes sharing a
  PostgreSQL database create and delete (a moment after their commit:
  the set is a pure cache, so it listens with ``other_nodes=True``);
- on a cluster, in case a notification was missed, a look every
  ``cluster.poll_interval_s`` at the devices created since the last one
  (on any node; a minute of slack for the nodes' clocks), and a full
  reload every ``full_reload_s`` for those deleted on another node; a device an API call finds in the database is known at
  once (:meth:`RegisteredDevices.confirm`).  A device created on another node that connects before this
  node has looked is held aside by presence and promoted when it is found.

A repository that cannot list its ids (a test's stand-in) leaves presence
without a registry view: bounded by ``presence_max_devices`` alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ..errors import StoreUnavailableError

__all__ = ["RegisteredDevices"]

log = logging.getLogger("fleetrpc.server")

#: Slack for the creating nodes' clocks when asking what was created since.
CLOCK_SLACK_MS = 60_000


class RegisteredDevices:
    """The ids of the device registry, for ``PresenceRegistry.is_known``."""

    def __init__(self, devices: Any, *, full_reload_s: float = 300.0) -> None:
        self._devices = devices
        self._ids: set[str] = set()
        self._presence: Any = None
        self._listener: Any = None
        self._since_ms = 0
        self._changed_during_load: list[Any] | None = None
        self.full_reload_s = full_reload_s

    @property
    def available(self) -> bool:
        """Whether the repository can list its devices."""
        return hasattr(self._devices, "all_ids") and hasattr(self._devices, "ids_created_since")

    def __contains__(self, device: object) -> bool:
        return device in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    async def load(self) -> None:
        """Read every device id (again); ids gone since are forgotten by presence."""
        started = int(time.time() * 1000)
        ids: set[str] = set()
        self._changed_during_load = during = []
        try:
            async for batch in self._devices.all_ids():
                ids.update(batch)
        finally:
            self._changed_during_load = None
        gone = self._ids - ids if self._ids else ()
        self._ids = ids
        self._since_ms = started - CLOCK_SLACK_MS
        presence = self._presence
        if presence is not None:
            for device in gone:
                presence.forget(device)
            presence.promote_known()
        # What this node changed while the pages were read may be missing
        # from them (or still in them): apply it again.
        for changes in during:
            self.changed(changes)

    def attach(self, presence: Any) -> None:
        """Keep ``presence`` in step with the repository's changes."""
        self._presence = presence
        if self._listener is None and hasattr(self._devices, "add_listener"):
            # A pure cache of ids: other nodes' creations and deletions too.
            self._listener = self._devices.add_listener(self.changed, other_nodes=True)

    def detach(self) -> None:
        if self._listener is not None:
            self._devices.remove_listener(self._listener)
            self._listener = None
        self._presence = None

    def changed(self, changes: list[Any]) -> None:
        """The repository's listener: created devices join, deleted ones leave."""
        if self._changed_during_load is not None:
            self._changed_during_load.append(changes)
        presence = self._presence
        for change in changes:
            device = str(change.device.id)
            if change.kind == "deleted":
                self._ids.discard(device)
                if presence is not None:
                    presence.forget(device)
            elif device not in self._ids and (change.kind == "created" or not getattr(change, "remote", False)):
                # Another node's "updated" or "assigned" may arrive after a
                # third node's "deleted" of that device: only "created" adds.
                self._ids.add(device)
                if presence is not None:
                    presence.promote(device)

    def confirm(self, device: str) -> None:
        """The database has just shown that ``device`` exists (an API call
        found it): known from now on, without waiting for the next look."""
        if device not in self._ids:
            self._ids.add(device)
            if self._presence is not None:
                self._presence.promote(device)

    async def refresh(self) -> int:
        """Add the devices created since the last look (on any node); returns how many were new."""
        started = int(time.time() * 1000)
        new = [d for d in await self._devices.ids_created_since(self._since_ms) if d not in self._ids]
        self._since_ms = started - CLOCK_SLACK_MS
        self._ids.update(new)
        presence = self._presence
        if presence is not None:
            for device in new:
                presence.promote(device)
        return len(new)

    async def follow(self, interval_s: float) -> None:
        """A cluster node's loop: :meth:`refresh` every ``interval_s``, a
        full :meth:`load` every ``full_reload_s``.  A database error is
        logged and tried again at the next turn."""
        loop = asyncio.get_running_loop()
        next_full = loop.time() + self.full_reload_s
        store_down = False
        while True:
            await asyncio.sleep(interval_s)  # a period, not a synchronisation
            try:
                if loop.time() >= next_full:
                    await self.load()
                    next_full = loop.time() + self.full_reload_s
                else:
                    await self.refresh()
                if store_down:
                    log.info("reading the device registry again")
                    store_down = False
            except StoreUnavailableError as e:
                # An outage: one line when it starts, one when it ends.
                if not store_down:
                    log.warning("cannot read which devices other nodes created (%s); trying every %g s",
                                e, interval_s)
                    store_down = True
            except Exception:
                log.exception("could not read which devices were created on other nodes")
