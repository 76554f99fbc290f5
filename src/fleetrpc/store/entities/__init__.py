"""Tenants, customers, users, devices and device credentials: what the
server's identities and devices stand on (ThingsBoard's entities).

    db = await open_database(url)              # applies migrations 100+
    tenants = TenantRepository(db)
    devices = DeviceRepository(db)
    t = await tenants.create("Tenant")
    d = await devices.create(t.id, "Thermostat A", type="thermostat")
    page = await devices.list(t.id, page_size=20, page=0, text_search="therm")
    page.to_thingsboard()    # {"data": [...], "totalPages", "totalElements", "hasNext"}

Every method that reaches a tenant's data takes ``tenant_id``; another
tenant's entity is "not found".  Structs: :mod:`.model`; paging:
:mod:`.paging`; one module per repository.
"""

from .devices import UNSET, DEVICE_NAME_TAKEN, TOKEN_TAKEN, DeviceChange, DeviceRepository
from .model import (
    AUTHORITIES,
    NULL_UUID,
    CredentialsInput,
    Customer,
    CustomerInput,
    Device,
    DeviceCredentials,
    DeviceInput,
    Tenant,
    TenantInput,
    User,
    UserInput,
    check_token,
    check_uuid,
    is_gateway_info,
    new_access_token,
    owner_id,
)
from .paging import MAX_PAGE_SIZE, PageData
from .tenants import CustomerRepository, TenantRepository
from .users import UserRepository, default_password_hasher

__all__ = [
    "AUTHORITIES",
    "NULL_UUID",
    "UNSET",
    "DEVICE_NAME_TAKEN",
    "TOKEN_TAKEN",
    "MAX_PAGE_SIZE",
    "PageData",
    "Tenant",
    "Customer",
    "User",
    "Device",
    "DeviceCredentials",
    "DeviceChange",
    "TenantInput",
    "CustomerInput",
    "UserInput",
    "DeviceInput",
    "CredentialsInput",
    "TenantRepository",
    "CustomerRepository",
    "UserRepository",
    "DeviceRepository",
    "default_password_hasher",
    "check_token",
    "check_uuid",
    "is_gateway_info",
    "owner_id",
    "new_access_token",
]
