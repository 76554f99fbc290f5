"""Who may touch what: ThingsBoard's roles and ownership, in one place
(its ``SysAdminPermissions``, ``TenantAdminPermissions``,
``CustomerUserPermissions`` and ``AccessValidator``).

- SYS_ADMIN manages tenants, system administrators and tenant
  administrators; it calls no device (the RPC path answers it with a
  bare-text 403) and sees no tenant's devices or customers.
- TENANT_ADMIN does everything within its tenant: customers, their users,
  devices, credentials, assignment.
- CUSTOMER_USER reads (and may rename, WRITE) only the devices assigned to
  its customer, reads its customer and their credentials, calls them;
  creates, deletes and assigns nothing.

Every lookup is scoped by the caller's tenant (``devices.get(tenant_id,
device_id)``): another tenant's device, customer or user is "not found",
exactly as an unknown one, so no request can even learn that it exists.
Within the tenant, another customer's entity is a 403.

The RPC path asks about the same devices over and over: :class:`DeviceCache`
keeps what its check needs for a few seconds, so a call costs a dict lookup
instead of a database query (see its docstring for how it stays right).
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from ..auth import CUSTOMER_USER, NULL_UUID, SYS_ADMIN, TENANT_ADMIN, Principal
from ..errors import DEVICE_NOT_FOUND, NO_PERMISSION, SYSADMIN_NOT_ALLOWED, ApiError

__all__ = [
    "check_uuid",
    "require",
    "device_for_rpc",
    "device_for_read",
    "device_for_write",
    "device_for_tenant_admin",
    "customer_for_read",
    "tenant_for_read",
    "user_for_admin",
    "new_user_owner",
    "NULL_UUID",
    "DeviceCache",
]

_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").fullmatch


def check_uuid(value: str) -> str:
    """A path id as canonical UUID text; 400 "Invalid UUID string: x" otherwise."""
    if _CANONICAL_UUID(value) is not None:
        return value  # what str(uuid.UUID(value)) gives, without its ~7 us
    try:
        if len(value) > 36:
            raise ValueError
        return str(uuid.UUID(value))
    except ValueError:
        raise ApiError.bad_request(f"Invalid UUID string: {value[:64]}") from None


def require(p: Principal, *authorities: str) -> None:
    """ThingsBoard's ``@PreAuthorize("hasAnyAuthority(...)")``: JSON 403 (errorCode 20)."""
    if p.authority not in authorities:
        raise ApiError.forbidden()


#: :meth:`DeviceCache.cached`: not in memory, ask the repository.
MISS: Any = object()


class DeviceCache:
    """The devices the RPC path checks, kept ``ttl`` seconds: a hit is a
    dict lookup instead of a database query.

    It holds what ``devices.get(tenant_id, device_id)`` answered, keyed by
    the device id (ids are unique across tenants: a hit of another tenant
    is "not found", exactly as the repository answers).  Unknown ids are
    not kept, so nobody can fill it with guesses.  It stays right:

    - this node's changes: the repository's listeners (created,
      re-tokened, updated, assigned to a customer or unassigned -- all of
      a customer's devices when it is deleted --, deleted; a tenant's
      deletion announces its devices) drop the device at once; a lookup
      that was in flight across a change is not kept;
    - other nodes' changes (a cluster shares one PostgreSQL database):
      the same, when their notification arrives (a moment after their
      commit); one missed (a lost LISTEN connection) after ``ttl`` at most.

    ``size`` bounds it; the oldest entry goes first.  Used by
    :func:`device_for_rpc` only: the callers of the entity endpoints read
    the repository, so what they show is never stale.
    """

    def __init__(self, ctx: Any, *, size: int = 100_000, ttl: float = 5.0, clock=time.monotonic) -> None:
        self._ctx = ctx
        self._size = size
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str, tuple[Any, float]] = {}
        self._generation = 0  # bumped by every change heard
        self._watched: Any = None  # the repository whose listener we are
        self.hits = 0
        self.misses = 0

    def cached(self, tenant_id: str, device_id: str) -> Any:
        """What :meth:`get` would answer from memory, without a coroutine:
        the device, None (another tenant's), or :data:`MISS`."""
        entry = self._entries.get(device_id)
        if entry is not None:
            device, until = entry
            if self._clock() < until:
                self.hits += 1
                return device if device.tenant_id == tenant_id else None
            del self._entries[device_id]
        return MISS

    async def get(self, tenant_id: str, device_id: str) -> Any:
        device = self.cached(tenant_id, device_id)
        return device if device is not MISS else await self.load(tenant_id, device_id)

    async def load(self, tenant_id: str, device_id: str) -> Any:
        """Ask the repository (and keep the answer)."""
        self.misses += 1
        devices = self._ctx.devices
        if devices is not self._watched:
            self._watch(devices)
        generation = self._generation
        device = await devices.get(tenant_id, device_id)
        if device is not None and generation == self._generation and self._size:
            entries = self._entries
            if len(entries) >= self._size:
                del entries[next(iter(entries))]
            entries[device_id] = (device, self._clock() + self._ttl)
        return device

    def _watch(self, devices: Any) -> None:
        self.close()
        self._entries.clear()
        if hasattr(devices, "add_listener"):
            devices.add_listener(self.changed, other_nodes=True)  # other nodes' changes too
        self._watched = devices

    def changed(self, changes: list[Any]) -> None:
        """The repository's listener: forget every device that changed."""
        self._generation += 1
        for change in changes:
            self._entries.pop(str(change.device.id), None)

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()

    def close(self) -> None:
        """Stop listening (the application's clean-up)."""
        watched, self._watched = self._watched, None
        remove = getattr(watched, "remove_listener", None)
        if remove is not None:
            try:
                remove(self.changed)
            except ValueError:
                pass


async def device_for_rpc(ctx: Any, p: Principal, device_id: str) -> Any:
    """The device ``p`` may call (RPC_CALL), or the RPC path's bare-text
    403 / 404 raised.  Through ``ctx.device_cache`` (a :class:`DeviceCache`,
    set by the API's set-up) when there is one."""
    if p.is_sysadmin:
        raise ApiError.text(403, SYSADMIN_NOT_ALLOWED)
    cache = getattr(ctx, "device_cache", None)
    device = MISS if cache is None else cache.cached(p.tenant_id, device_id)
    if device is MISS:
        device = await (ctx.devices.get(p.tenant_id, device_id) if cache is None
                        else cache.load(p.tenant_id, device_id))
        registered = getattr(ctx, "registered_devices", None)
        if device is not None and registered is not None:
            # Read from the database just now: known to presence from now on
            # (created on another node, not looked for yet).  A cached
            # device was confirmed when it was read.
            registered.confirm(str(device.id))
    if device is None:
        raise ApiError.text(404, DEVICE_NOT_FOUND)
    if p.is_customer_user and str(device.customer_id or NULL_UUID) != p.customer_id:
        raise ApiError.text(403, NO_PERMISSION)
    return device


async def device_for_read(ctx: Any, p: Principal, device_id: str) -> Any:
    """The device ``p`` may read, or ThingsBoard's JSON 403 / 404 raised
    (the entity endpoints' shape)."""
    if p.is_sysadmin:
        raise ApiError.forbidden()
    device = await ctx.devices.get(p.tenant_id, device_id)
    if device is None:
        raise ApiError.not_found(f"Device with id [{device_id}] is not found")
    if p.is_customer_user and str(device.customer_id or NULL_UUID) != p.customer_id:
        raise ApiError.forbidden()
    return device


async def device_for_write(ctx: Any, p: Principal, device_id: str) -> Any:
    """The device ``p`` may change (WRITE: name, type, label, info): the
    tenant administrator's any device of its tenant, a customer user's its
    customer's devices; JSON 403 / 404 otherwise."""
    return await device_for_read(ctx, p, device_id)


async def device_for_tenant_admin(ctx: Any, p: Principal, device_id: str) -> Any:
    """A device of the caller's tenant, for what only a tenant administrator
    may do (delete, assign, set credentials)."""
    require(p, TENANT_ADMIN)
    device = await ctx.devices.get(p.tenant_id, device_id)
    if device is None:
        raise ApiError.not_found(f"Device with id [{device_id}] is not found")
    return device


async def customer_for_read(ctx: Any, p: Principal, customer_id: str) -> Any:
    """The customer ``p`` may read (and list the devices of): any customer
    of the tenant administrator's tenant, the customer user's own one."""
    require(p, TENANT_ADMIN, CUSTOMER_USER)
    if p.is_customer_user and customer_id != p.customer_id:
        raise ApiError.forbidden()
    customer = await ctx.customers.get(p.tenant_id, customer_id)
    if customer is None:
        raise ApiError.not_found(f"Customer with id [{customer_id}] is not found")
    return customer


async def tenant_for_read(ctx: Any, p: Principal, tenant_id: str) -> Any:
    """A tenant: any for the system administrator, its own for a tenant
    administrator (another one is a 403 whether it exists or not)."""
    require(p, SYS_ADMIN, TENANT_ADMIN)
    if p.is_tenant_admin and tenant_id != p.tenant_id:
        raise ApiError.forbidden()
    tenant = await ctx.tenants.get(tenant_id)
    if tenant is None:
        raise ApiError.not_found(f"Tenant with id [{tenant_id}] is not found")
    return tenant


def _may_manage(p: Principal, user: Any) -> bool:
    if p.is_sysadmin:
        return user.authority in (SYS_ADMIN, TENANT_ADMIN)
    if p.is_tenant_admin:
        return user.tenant_id == p.tenant_id and user.authority in (TENANT_ADMIN, CUSTOMER_USER)
    return False


async def user_for_admin(ctx: Any, p: Principal, user_id: str) -> Any:
    """A user ``p`` administers (reads, updates, activates): the system
    administrator's system and tenant administrators, a tenant
    administrator's users of its tenant.  Another tenant's user is not
    found; a user ``p`` may not manage in its reach is a 403."""
    require(p, SYS_ADMIN, TENANT_ADMIN)
    user = await ctx.users.by_id(user_id)
    if user is None or (p.is_tenant_admin and user.tenant_id != p.tenant_id):
        raise ApiError.not_found(f"User with id [{user_id}] is not found")
    if not _may_manage(p, user):
        raise ApiError.forbidden()
    return user


def new_user_owner(p: Principal, authority: str, tenant_id: str, customer_id: str) -> tuple[str, str]:
    """The (tenant, customer) a new user of ``authority`` gets when ``p``
    creates it (``tenant_id``/``customer_id`` from the body): a system
    administrator creates system administrators and tenant administrators
    of the body's tenant; a tenant administrator creates tenant
    administrators and customer users of its own tenant (the body's tenant
    is ignored, as ThingsBoard overwrites it)."""
    if p.is_sysadmin:
        if authority == SYS_ADMIN:
            return NULL_UUID, NULL_UUID
        if authority == TENANT_ADMIN:
            if tenant_id == NULL_UUID:
                raise ApiError.bad_request("Tenant administrator should be assigned to tenant!")
            return tenant_id, NULL_UUID
    elif p.is_tenant_admin:
        if authority == TENANT_ADMIN:
            return p.tenant_id, NULL_UUID
        if authority == CUSTOMER_USER:
            if customer_id == NULL_UUID:
                raise ApiError.bad_request("Customer user should be assigned to customer!")
            return p.tenant_id, customer_id
    raise ApiError.forbidden()
