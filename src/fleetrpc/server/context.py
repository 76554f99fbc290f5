"""What every part of a running server shares: :class:`ServerContext`.

One context per server process (tests may run several side by side).  The
parts (``server/parts.py``) fill it in as they start, in order, and empty it
as they stop; handlers reach it as ``request.app[CTX]``.

Attributes other parts rely on (the brief's contract):

``settings``      :class:`~fleetrpc.config.ServerSettings` (``ctx.settings.http.port`` ...)
``library``       the dispatcher's flat :class:`~fleetrpc.config.Settings`
``db``            the shared :class:`~fleetrpc.store.db.Database` (entities, jobs, ...)
``store``         the persistent-RPC store (group commit)
``dispatcher``    the :class:`~fleetrpc.Dispatcher`
``engine``        the :class:`~fleetrpc.PersistentRpc`
``bus``           the :class:`~fleetrpc.EventBus`
``devices``, ``users``, ``tenants``, ``customers``  the identity repositories
``tokens``        :class:`~fleetrpc.api.auth.TokenService`
``metrics``       :class:`~fleetrpc.api.metrics.Metrics` (its ``registry`` takes more collectors)
``activity``      devices' online state and last activity
``broker``        the broker this server started, or None
``endpoint``      the device endpoint (``[endpoint] enabled``), or None
``provisioner``   the :class:`~fleetrpc.broker_auth.dynsec.DynsecProvisioner`
                  keeping the broker's device accounts in step, or None
``client_rpc``    the :class:`~fleetrpc.server.client_rpc.ClientRpc` answering devices' calls
``url``           the HTTP API's base URL once listening
``features``      extra ``setup(app, ctx)`` functions for ``create_app``, as
                  ``"package.module[:function]"`` names
``node``          this node's :class:`~fleetrpc.cluster.NodeIdentity`
``leases``        its :class:`~fleetrpc.cluster.LeaseManager` (every lease its own on SQLite)
``demo``          ``--demo`` was given: the identity part loads the demo accounts
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

from ..api.auth import RateLimiter, TokenService
from ..api.metrics import Metrics
from ..config import ServerSettings, Settings

__all__ = ["Activity", "ServerContext", "FEATURES"]

#: The parts of the API beyond ThingsBoard's, each a ``setup(app, ctx)``.
FEATURES = ("fleetrpc.jobs.api", "fleetrpc.console")


class Activity:
    """Each device's last activity (epoch ms): presence changes, heartbeats,
    replies seen through the API.  Online state is the dispatcher's.  What
    changed since the last :meth:`take_changes` is written to the devices'
    table now and then (``server.activity_flush_s``), so it outlives a
    restart."""

    def __init__(self, max_devices: int = 100_000) -> None:
        # Bounded like presence (dispatch.presence_max_devices): a flood of
        # made-up device ids must not grow it; the least recently active
        # leave first (a registered device's activity is in its row too).
        self.max_devices = max_devices
        self._last: OrderedDict[str, int] = OrderedDict()
        self._changed: dict[str, int] = {}

    def touch(self, device_id: str, when_ms: int | None = None) -> None:
        ms = when_ms if when_ms is not None else int(time.time() * 1000)
        last = self._last
        last[device_id] = ms
        last.move_to_end(device_id)
        if len(last) > self.max_devices:
            last.popitem(last=False)
        if len(self._changed) < self.max_devices or device_id in self._changed:
            self._changed[device_id] = ms

    def __len__(self) -> int:
        return len(self._last)

    def last(self, device_id: str) -> int | None:
        return self._last.get(device_id)

    def take_changes(self) -> list[tuple[str, int]]:
        """The (device, last activity) pairs changed since the last call."""
        changed, self._changed = self._changed, {}
        return list(changed.items())


class ServerContext:
    """The parts of one server; see the module docstring."""

    def __init__(self, settings: ServerSettings, *, features: tuple[str, ...] | list[str] = FEATURES) -> None:
        self.settings = settings
        self.features = tuple(features)
        self.library: Settings | None = None
        self.broker: Any = None
        self.provisioner: Any = None
        self.client_rpc: Any = None
        self.db: Any = None
        self.store: Any = None
        self.dispatcher: Any = None
        self.engine: Any = None
        self.bus: Any = None
        self.devices: Any = None
        self.users: Any = None
        self.tenants: Any = None
        self.customers: Any = None
        self.tokens: TokenService | None = None
        self.endpoint: Any = None     # the device endpoint, when enabled
        self.endpoint_directory: Any = None  # its token cache on ctx.devices
        self.node: Any = None         # this node's NodeIdentity (the leases part)
        self.leases: Any = None       # its LeaseManager (single-node on SQLite)
        self.jobs: Any = None         # fleet jobs (fleetrpc.jobs.JobEngine)
        self.job_targets: Any = None  # their target resolver (fleetrpc.jobs.registry)
        self.registered_devices: Any = None  # ids presence keeps state for (server/registered.py)
        self.rate_limiter = RateLimiter(settings.rate_limits)
        self.metrics = Metrics()
        self.activity = Activity(settings.dispatch.presence_max_devices)
        self.app: Any = None
        self.url: str | None = None
        #: ``fleetrpc serve --demo``: load ThingsBoard's demo accounts and devices
        self.demo = False
        #: the argon2 PasswordHasher of the users' repository (None: argon2's
        #: defaults; tests pass a cheap one)
        self.password_hasher: Any = None
        #: replaces the identity repositories (the REST bench's directory):
        #: ``async (ctx) -> close()``, filling ctx.devices, ctx.users, ...
        self.open_repositories: Any = None
        #: set once the server stops taking requests (SIGTERM): new ones get 503
        self.draining = False
        self._http_inflight = 0
        self._http_idle: asyncio.Event | None = None

    # -- requests in flight (the drain waits for them) --

    def http_started(self) -> None:
        self._http_inflight += 1

    def http_finished(self) -> None:
        self._http_inflight -= 1
        if self._http_inflight == 0 and self._http_idle is not None:
            self._http_idle.set()

    @property
    def http_inflight(self) -> int:
        return self._http_inflight

    async def wait_http_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if ``timeout`` passed first."""
        if self._http_inflight == 0:
            return True
        self._http_idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._http_idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._http_idle = None

    # -- health --

    def cluster_status(self) -> dict[str, Any] | None:
        """The node's leases for ``/readyz``: partitions owned, whether it is
        fenced (its lease lapsed: it acts on nothing), named leases held."""
        m = self.leases
        if m is None:
            return None
        st = m.status()
        st["fenced"] = not st["ready"] and st["mode"] == "cluster"
        return st

    async def readiness(self) -> dict[str, bool]:
        """``/readyz``: whether the broker and the database can be reached,
        and in a cluster whether the node's leases are valid."""
        d = self.dispatcher
        # The dispatcher keeps its transport private; connected is read-only.
        transport = getattr(d, "_transport", None) if d is not None else None
        broker = bool(transport is not None and getattr(transport, "connected", False))
        database = False
        try:
            if self.db is not None:
                await asyncio.wait_for(self.db.fetchval("SELECT 1"), 2.0)
                database = True
            elif self.store is not None:
                inner = getattr(self.store, "store", self.store)
                await asyncio.wait_for(inner.schema_version(), 2.0)
                database = True
        except Exception:
            database = False
        checks = {"broker": broker, "database": database}
        if self.leases is not None and not self.leases.single_node:
            checks["leases"] = bool(self.leases.status()["ready"])
        return checks
