"""ThingsBoard's demo data, for ``fleetrpc serve --demo`` and trying things out.

The same accounts, customers and devices as ThingsBoard's own demo
(``DefaultSystemDataLoaderService.loadDemoData``), so that its tutorials,
scripts and REST client examples work unchanged:

=============================  ==========  ======================================
login                          password    role
=============================  ==========  ======================================
sysadmin@thingsboard.org       sysadmin    SYS_ADMIN
tenant@thingsboard.org         tenant      TENANT_ADMIN of tenant "Tenant"
customer@thingsboard.org       customer    CUSTOMER_USER of "Customer A"
customerA@thingsboard.org      customer    CUSTOMER_USER of "Customer A"
customerB@thingsboard.org      customer    CUSTOMER_USER of "Customer B"
customerC@thingsboard.org      customer    CUSTOMER_USER of "Customer C"
=============================  ==========  ======================================

Devices "Test Device A1".."A3" (Customer A), "B1" (Customer B), "C1"
(Customer C) with access tokens ``A1_TEST_TOKEN`` ..., and the tenant's
unassigned "DHT11 Demo Device" (``DHT11_DEMO_TOKEN``), "Raspberry Pi Demo
Device" (``RASPBERRY_PI_DEMO_TOKEN``), "Thermostat T1" and "Thermostat T2"
(type ``thermostat``, random tokens).

Loading is idempotent: what exists already (by email, title, name) is kept
as it is, only what is missing is created.  These passwords are public:
never load demo data into a server others can reach.  A production server's
first system administrator comes from :mod:`fleetrpc.admin` instead.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from ..errors import AlreadyExistsError, EntitiesLimitExceededError
from ..store.entities import (
    NULL_UUID,
    CustomerRepository,
    Device,
    DeviceRepository,
    TenantRepository,
    UserRepository,
)

__all__ = ["DemoData", "load_demo_data", "DEMO_USERS", "DEMO_DEVICES"]

log = logging.getLogger("fleetrpc.server.demo")

TENANT_TITLE = "Tenant"
CUSTOMERS = ("Customer A", "Customer B", "Customer C")
#: (email, password, authority, customer title or None)
DEMO_USERS = (
    ("sysadmin@thingsboard.org", "sysadmin", "SYS_ADMIN", None),
    ("tenant@thingsboard.org", "tenant", "TENANT_ADMIN", None),
    ("customer@thingsboard.org", "customer", "CUSTOMER_USER", "Customer A"),
    ("customerA@thingsboard.org", "customer", "CUSTOMER_USER", "Customer A"),
    ("customerB@thingsboard.org", "customer", "CUSTOMER_USER", "Customer B"),
    ("customerC@thingsboard.org", "customer", "CUSTOMER_USER", "Customer C"),
)
#: (name, type, access token or None for a random one, customer title or None, description)
DEMO_DEVICES = (
    ("Test Device A1", "default", "A1_TEST_TOKEN", "Customer A", None),
    ("Test Device A2", "default", "A2_TEST_TOKEN", "Customer A", None),
    ("Test Device A3", "default", "A3_TEST_TOKEN", "Customer A", None),
    ("Test Device B1", "default", "B1_TEST_TOKEN", "Customer B", None),
    ("Test Device C1", "default", "C1_TEST_TOKEN", "Customer C", None),
    ("DHT11 Demo Device", "default", "DHT11_DEMO_TOKEN", None,
     "Demo device that is used in sample applications that upload data from DHT11 temperature and "
     "humidity sensor"),
    ("Raspberry Pi Demo Device", "default", "RASPBERRY_PI_DEMO_TOKEN", None,
     "Demo device that is used in Raspberry Pi GPIO control sample application"),
    ("Thermostat T1", "thermostat", None, None, None),
    ("Thermostat T2", "thermostat", None, None, None),
)


class DemoData(msgspec.Struct, kw_only=True):
    """What the demo consists of after loading (ids for tests and logs)."""

    tenant_id: str
    customer_ids: dict[str, str]
    user_ids: dict[str, str]
    devices: dict[str, Device]
    created: int  # how many entities this call created (0: all existed)


async def load_demo_data(
    *,
    tenants: TenantRepository,
    customers: CustomerRepository,
    users: UserRepository,
    devices: DeviceRepository,
) -> DemoData:
    """Create whatever of ThingsBoard's demo data is missing; see the
    module docstring.  Devices are created through ``devices``, so its
    listeners (the broker's provisioning) hear about them."""
    created = 0
    tenant = await tenants.by_title(TENANT_TITLE)
    if tenant is None:
        tenant = await tenants.create(TENANT_TITLE, region="Global")
        created += 1
    customer_ids: dict[str, str] = {}
    for title in CUSTOMERS:
        customer = await customers.by_title(tenant.id, title)
        if customer is None:
            customer = await customers.create(tenant.id, title)
            created += 1
        customer_ids[title] = customer.id

    user_ids: dict[str, str] = {}
    for email, password, authority, customer_title in DEMO_USERS:
        user = await users.by_email(email)
        if user is None:
            tenant_id = NULL_UUID if authority == "SYS_ADMIN" else tenant.id
            customer_id = customer_ids[customer_title] if customer_title else NULL_UUID
            try:
                user = await users.create(tenant_id, customer_id, email, authority, password=password)
                created += 1
            except AlreadyExistsError:  # another node loading at the same time
                user = await users.by_email(email)
                assert user is not None
        user_ids[email] = user.id

    made: dict[str, Device] = {}
    for k, (name, type_, token, customer_title, description) in enumerate(DEMO_DEVICES):
        device = await devices.by_name(tenant.id, name)
        if device is None:
            try:
                device = await devices.create(
                    tenant.id, name, type=type_, access_token=token,
                    customer_id=customer_ids[customer_title] if customer_title else None,
                    additional_info={"description": description} if description else None,
                )
                created += 1
            except EntitiesLimitExceededError as exc:
                raise await _over_limit(devices, tenant.id, exc, DEMO_DEVICES[k:]) from None
            except AlreadyExistsError:
                device = await devices.by_name(tenant.id, name)
                if device is None:  # the token is another tenant's device's
                    log.warning("demo device %r not created: its token %r is taken", name, token)
                    continue
        made[name] = device
    if created:
        log.warning(
            "loaded ThingsBoard's demo data (%d entities): public passwords such as "
            "sysadmin@thingsboard.org / sysadmin; never expose this server", created,
        )
    return DemoData(tenant_id=tenant.id, customer_ids=customer_ids, user_ids=user_ids, devices=made,
                    created=created)


async def _over_limit(devices: DeviceRepository, tenant_id: str, exc: EntitiesLimitExceededError,
                      rest: tuple[tuple[Any, ...], ...]) -> EntitiesLimitExceededError:
    """The repository's refusal, saying which setting refused it and what
    is missing: whoever loads the demo data (``fleetrpc serve --demo``,
    ``fleetrpc admin load-demo``) is not making one device of their own."""
    missing = 0
    for name, *_ in rest:
        if await devices.by_name(tenant_id, name) is None:
            missing += 1
    return EntitiesLimitExceededError("DEVICE", exc.limit, message=(
        f"store.max_devices_per_tenant is {exc.limit}: tenant {TENANT_TITLE!r} has "
        f"{await devices.count(tenant_id)} devices, and {missing} of ThingsBoard's {len(DEMO_DEVICES)} "
        f"demo devices were not created; raise the setting (0: no limit) and load again"))


def demo_repositories(ctx: Any) -> dict[str, Any]:
    """The four repositories from a :class:`~fleetrpc.server.ServerContext`,
    as :func:`load_demo_data` takes them: ``load_demo_data(**demo_repositories(ctx))``."""
    return {"tenants": ctx.tenants, "customers": ctx.customers, "users": ctx.users, "devices": ctx.devices}
