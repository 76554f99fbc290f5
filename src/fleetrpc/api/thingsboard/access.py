"""Who may touch which device: ThingsBoard's roles and ownership, in one place.

- SYS_ADMIN manages tenants and tenant administrators; it calls no device
  (the RPC path answers it with a bare-text 403).
- TENANT_ADMIN does everything within its tenant.
- CUSTOMER_USER reaches only the devices assigned to its customer.

Every device lookup is scoped by the caller's tenant (``devices.get(
tenant_id, device_id)``): another tenant's device is "not found", exactly as
an unknown one, so no request can even learn that it exists.
"""

from __future__ import annotations

import uuid
from typing import Any

from ..auth import NULL_UUID, Principal
from ..errors import DEVICE_NOT_FOUND, NO_PERMISSION, SYSADMIN_NOT_ALLOWED, ApiError

__all__ = ["check_uuid", "require", "device_for_rpc", "device_for_read", "NULL_UUID"]


def check_uuid(value: str) -> str:
    """A path id as canonical UUID text; 400 "Invalid UUID string: x" otherwise."""
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


async def device_for_rpc(ctx: Any, p: Principal, device_id: str) -> Any:
    """The device ``p`` may call (RPC_CALL), or the RPC path's bare-text
    403 / 404 raised."""
    if p.is_sysadmin:
        raise ApiError.text(403, SYSADMIN_NOT_ALLOWED)
    device = await ctx.devices.get(p.tenant_id, device_id)
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
