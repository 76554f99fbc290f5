"""Who a device connection is, from the server's device registry, cached.

:class:`DeviceDirectory` gives a :class:`DeviceEndpoint` its
``authenticate`` and ``resolve_subdevice`` callbacks on top of the
registry's :class:`~fleetrpc.store.entities.DeviceRepository`:

- ``authenticate(token, ...)``: ``by_tokens``, kept in a bounded LRU
  cache so that a device that comes back costs the database nothing.  The
  tokens not cached are looked up in batches: one query for every token
  that arrived while the previous query ran (at most :data:`BATCH`), so a
  connection storm of 10,000 devices costs tens of queries, not 10,000,
  while a lone connection is looked up at once.  Concurrent connections
  with the same token share one lookup.  Unknown tokens are cached too (a device with
  a wrong token retrying fast does not reach the database each time).
- The repository's change listener drops the cached entry of every token
  that was created, replaced or deleted, so a new token works at once and
  a revoked one stops working for new connections at once; the open
  connections of a device deleted or given new credentials are closed
  (``on_gone``: the endpoint's ``disconnect_device``).  It hears the
  changes of the other nodes sharing a PostgreSQL database too (their
  notifications carry the tokens), within a moment of their commit.
  Entries also expire after ``ttl`` seconds: the registry tells no
  listener when a device becomes a gateway, so that flag is at most
  ``ttl`` old, and a notification missed (a lost LISTEN connection) is
  wrong here at most that long.
- ``resolve_subdevice(gateway_id, name)``: the device named ``name`` in the
  gateway's tenant (ThingsBoard's rule: a gateway's sub-devices are devices
  of its tenant, by name).  A name the tenant has no device of is created,
  as ThingsBoard does: type "default", the gateway's customer, and
  ``additionalInfo.lastConnectedGateway``; None when it cannot be (a name
  the registry refuses, or a tenant at its limit of devices,
  ``store.max_devices_per_tenant``: ThingsBoard then refuses the
  announcement, "Maximum number of devices reached!"), logged once per
  refused announcement; the name is then not bound to the gateway.

Gateways are devices whose ``additional_info`` has ``"gateway": true``, as
ThingsBoard marks them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any, Callable

from ...dispatch.rejects import RejectLog
from ...errors import AlreadyExistsError, EntitiesLimitExceededError, ValidationError
from ...store.entities.model import NULL_UUID, is_gateway_info
from .server import Identity

__all__ = ["DeviceDirectory"]

#: Most tokens looked up by one query.
BATCH = 500

log = logging.getLogger("fleetrpc.endpoint")


class DeviceDirectory:
    """The endpoint's view of a device registry (see the module docstring)."""

    def __init__(self, devices: Any, *, size: int = 100_000, ttl: float = 300.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_found: Callable[[str], Any] | None = None) -> None:
        if size < 0 or ttl <= 0:
            raise ValueError("size must be >= 0 and ttl > 0")
        self.devices = devices
        self.size = size
        self.ttl = ttl
        self._clock = clock
        #: token -> (Identity or None for an unknown token, tenant id, fetched at)
        self._cache: OrderedDict[str, tuple[Identity | None, str | None, float]] = OrderedDict()
        #: token -> the future its connections wait on, until its batch is answered
        self._lookups: dict[str, asyncio.Future] = {}
        self._queued: list[tuple[str, asyncio.Future]] = []  # (token, its future) for the next batch
        self._batcher: asyncio.Task | None = None
        #: gateway device id -> its tenant (for sub-device lookups)
        self._tenants: dict[str, str] = {}
        #: told the id of every device the registry just showed exists
        #: (the server's RegisteredDevices.confirm: one created on another node)
        self._on_found = on_found
        self.hits = 0
        self.misses = 0
        #: sub-devices created for gateways that announced them
        self.created = 0
        #: announced names not created: the tenant was at its limit of devices
        self.over_limit = 0
        #: refused announcements (tenant at its limit, a name the registry
        #: refuses) in summaries: a gateway reconnecting announces all its
        #: sub-devices at once, again on each reconnect
        self.refusals = RejectLog(log, 10.0)
        #: told the id of a device deleted or given new credentials, so
        #: that its open connections close (the endpoint's disconnect_device)
        self.on_gone: Callable[[str, str], Any] | None = None
        # A pure cache: other nodes' changes too.
        self._listener = devices.add_listener(self._changed, other_nodes=True)

    def close(self) -> None:
        """Stop listening to the repository (and looking tokens up)."""
        self.devices.remove_listener(self._listener)
        self.refusals.close()
        if self._batcher is not None:
            self._batcher.cancel()

    def __len__(self) -> int:
        return len(self._cache)

    # -- the endpoint's callbacks ----------------------------------------------------

    def authenticate(self, username: str, password: str | None, client_id: str):
        """The endpoint's ``authenticate``: the access token is the user
        name.  Returns an Identity, None, or an awaitable of either."""
        entry = self._cache.get(username)
        if entry is not None and self._clock() - entry[2] < self.ttl:
            self._cache.move_to_end(username)
            self.hits += 1
            return entry[0]
        pending = self._lookups.get(username)
        if pending is None:
            pending = self._lookups[username] = asyncio.get_running_loop().create_future()
            self._queued.append((username, pending))
            if self._batcher is None:
                self._batcher = asyncio.ensure_future(self._look_up_queued())
        self.misses += 1
        # shielded: a connection that goes away does not cancel the others' lookup
        return asyncio.shield(pending)

    async def resolve_subdevice(self, gateway_id: str, name: str) -> str | None:
        """The endpoint's ``resolve_subdevice``: the device named ``name`` in
        the gateway's tenant."""
        tenant = self._tenants.get(gateway_id)
        if tenant is None:
            gateway = await self.devices.get_by_id(gateway_id)
            if gateway is None:
                return None
            tenant = gateway.tenant_id
        device = await self.devices.by_name(tenant, name)
        if device is None:
            device = await self._create_subdevice(gateway_id, tenant, name)
            if device is None:
                return None
        self._found(device.id)
        return device.id

    async def _create_subdevice(self, gateway_id: str, tenant: str, name: str) -> Any:
        gateway = await self.devices.get_by_id(gateway_id)
        if gateway is None:
            return None
        customer = gateway.customer_id if gateway.customer_id != NULL_UUID else None
        try:
            device = await self.devices.create(tenant, name, customer_id=customer,
                                               additional_info={"lastConnectedGateway": gateway_id})
        except AlreadyExistsError:  # another gateway (or node) made it meanwhile
            return await self.devices.by_name(tenant, name)
        except EntitiesLimitExceededError as exc:
            self.over_limit += 1
            self.refusals.note("over_limit", "gateway %s announced %r: not created, its tenant %s has reached its "
                               "limit of %d devices", gateway_id, name, tenant, exc.limit)
            return None
        except ValidationError as exc:
            self.refusals.note("refused_name", "gateway %s announced a device the registry refuses (%r): %s",
                               gateway_id, name, exc)
            return None
        self.created += 1
        log.info("gateway %s announced %r: created device %s", gateway_id, name, device.id)
        return device

    def _found(self, device_id: str) -> None:
        if self._on_found is not None:
            self._on_found(str(device_id))

    # -- inside -----------------------------------------------------------------------

    async def _look_up_queued(self) -> None:
        """Answer the queued tokens, a batch per query, until none is left."""
        waiting: list[tuple[str, asyncio.Future]] = []
        try:
            while self._queued:
                await asyncio.sleep(0)  # connections read in this loop turn queue theirs too
                waiting, self._queued = self._queued[:BATCH], self._queued[BATCH:]
                started = self._clock()
                try:
                    found = await self.devices.by_tokens([token for token, _ in waiting])
                except Exception as exc:
                    for token, fut in waiting:
                        self._settle(token, fut, exc=exc)
                    continue
                for token, fut in waiting:
                    identity, tenant = self._identity(found.get(token))
                    # Not cached when a change of this token arrived during the
                    # query (the listener dropped its lookup): the answer may be old.
                    if self.size and self._lookups.get(token) is fut:
                        self._cache[token] = (identity, tenant, started)
                        self._cache.move_to_end(token)
                        while len(self._cache) > self.size:
                            self._cache.popitem(last=False)
                    self._settle(token, fut, identity)
        except asyncio.CancelledError:
            for token, fut in waiting + self._queued:
                self._settle(token, fut, exc=ConnectionError("the directory closed"))
            self._queued.clear()
            raise
        finally:
            self._batcher = None

    def _identity(self, device: Any) -> tuple[Identity | None, str | None]:
        if device is None:
            return None, None
        gateway = is_gateway_info(device.additional_info)
        if gateway:
            self._tenants[device.id] = device.tenant_id
        self._found(device.id)
        return Identity(device.id, gateway=gateway), device.tenant_id

    def _settle(self, token: str, fut: asyncio.Future, identity: Any = None,
                exc: BaseException | None = None) -> None:
        if self._lookups.get(token) is fut:
            del self._lookups[token]
        if not fut.done():
            if exc is not None:
                fut.set_exception(exc)
                fut.exception()  # its connections may all have gone: not an unretrieved error
            else:
                fut.set_result(identity)

    def _changed(self, changes: list) -> None:
        """The repository's listener: forget every token that changed."""
        for change in changes:
            for token in (change.token, change.old_token):
                if token is not None:
                    self._cache.pop(token, None)
                    self._lookups.pop(token, None)  # a query under way may predate the change
            if change.kind == "deleted":
                self._tenants.pop(change.device.id, None)
            if self.on_gone is not None and (
                    change.kind == "deleted" or (change.kind == "credentials" and change.old_token != change.token)):
                self.on_gone(str(change.device.id), f"device {change.kind}")
