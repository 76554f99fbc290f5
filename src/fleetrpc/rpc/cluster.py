"""How the persistent engines of several nodes hand calls to each other.

A persistent call is driven only by the node owning its device's partition
(:mod:`fleetrpc.cluster`).  A call stored by any other node (a REST request
that the load balancer sent there, a job's call) reaches the owner by a
PostgreSQL notification (``pg_notify``, sent right after the insert
committed; the owner reads the row by id); a call deleted on another node
is dropped by its owner the same way.  A notification that could not be
sent is sent again; one that a disconnected listener missed is not, so each
node also scans, every ``cluster.poll_interval_s``, the unfinished calls of
its partitions created since its previous scan (less a slack), and all of
them after its listener (re)connects.

A node that leaves (SIGTERM) releases its partitions and sends ``wake``:
the others run a lease round at once and claim them, instead of at their
next renewal.

Payload of a notification: comma-separated ``<kind><partition>:<rpc id>``
items, kind ``n`` (new) or ``d`` (deleted), at most :data:`MAX_PAYLOAD`
bytes (PostgreSQL's limit is 8000); the items of one loop turn go in as
few notifications as fit.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any

from ..store.db import listen

log = logging.getLogger("fleetrpc.rpc.cluster")

__all__ = ["NotifyLink", "WAKE", "announce_leave", "channel_name"]

MAX_PAYLOAD = 7900
#: A node left and released its partitions: claim them now, not at the next round.
WAKE = "wake"


async def announce_leave(db: Any) -> None:
    """Tell the other nodes that this one released its partitions."""
    await db.execute("SELECT pg_notify($1, $2)", channel_name(getattr(db, "schema", None)), WAKE)


def channel_name(schema: str | None) -> str:
    """One channel per database schema (a channel is per database)."""
    return "fleetrpc_rpc" if not schema else f"fleetrpc_rpc_{schema}"[:63]


# At most 8 digits: partitions are below MAX_PARTITIONS (2**24), and int()
# raises on a number of more than 4300 digits anyone may NOTIFY.
_ITEM = re.compile(r"^([nd])(\d{1,8}):(.+)$")


class NotifyLink:
    """Sends and receives the engine's notifications on one PostgreSQL
    database.  ``on_items(kind, [(partition, rpc_id), ...])`` is called on
    the event loop for every notification received; ``on_connected()``
    after the listener (re)connected (the engine then rescans)."""

    def __init__(self, db: Any, on_items: Callable[[str, list[tuple[int, str]]], None],
                 on_connected: Callable[[], None], on_wake: Callable[[], None] | None = None) -> None:
        self.db = db
        self.channel = channel_name(getattr(db, "schema", None))
        self._on_items = on_items
        self._on_connected = on_connected
        self._on_wake = on_wake
        self._outbox: list[str] = []
        self._flushing: asyncio.Task | None = None
        self._listener: asyncio.Task | None = None
        self._closed = False
        self.sent = 0
        self.received = 0

    def start(self) -> None:
        self._listener = asyncio.ensure_future(self._listen())

    async def close(self) -> None:
        self._closed = True
        for task in (self._listener, self._flushing):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    # -- sending ------------------------------------------------------------

    def post(self, kind: str, partition: int, rpc_id: str) -> None:
        """Queue one item; sent with the others of this loop turn."""
        self._outbox.append(f"{kind}{partition}:{rpc_id}")
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # gather the items of this turn
        while self._outbox and not self._closed:
            items, self._outbox = self._outbox, []
            payloads, cur, size = [], [], 0
            for it in items:
                if cur and size + len(it) + 1 > MAX_PAYLOAD:
                    payloads.append(",".join(cur))
                    cur, size = [], 0
                cur.append(it)
                size += len(it) + 1
            if cur:
                payloads.append(",".join(cur))
            try:
                # One statement for all of them: pg_notify per element.
                await self.db.execute("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
                                      self.channel, payloads)
                self.sent += len(payloads)
            except Exception as e:
                # Sent again in a second (the owners' scans find them too).
                log.warning("could not notify the owners of %d calls (%s); trying again", len(items), e)
                self._outbox[:0] = items
                await asyncio.sleep(1.0)

    # -- receiving ----------------------------------------------------------

    def _received(self, payload: str) -> None:
        self.received += 1
        if payload == WAKE:
            if self._on_wake is not None:
                self._on_wake()
            return
        by_kind: dict[str, list[tuple[int, str]]] = {}
        for item in payload.split(","):
            m = _ITEM.match(item)
            if m is None:
                continue
            by_kind.setdefault(m.group(1), []).append((int(m.group(2)), m.group(3)))
        for kind, items in by_kind.items():
            try:
                self._on_items(kind, items)
            except Exception:
                log.exception("handling a cluster notification failed")

    async def _listen(self) -> None:
        await listen(self.db, self.channel, self._received, name="cluster", on_connected=self._on_connected)
