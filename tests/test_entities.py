"""Entity repositories (store/entities) on SQLite and PostgreSQL: shapes,
uniqueness, paging and search in SQL, tenant isolation, passwords and
lockout, credentials and listeners."""

from __future__ import annotations

import pytest

from fleetrpc.errors import AlreadyExistsError, EntityNotFoundError, ValidationError
from fleetrpc.store.entities import (
    DEVICE_NAME_TAKEN,
    NULL_UUID,
    TOKEN_TAKEN,
    DeviceChange,
    PageData,
)
from fleetrpc.store.base import Page


async def _tenant_with_customer(repos, title="T"):
    t = await repos.tenants.create(title)
    c = await repos.customers.create(t.id, "Customer A")
    return t, c


# -- tenants and customers ----------------------------------------------------------


async def test_tenant_create_get_list_delete(repos):
    t = await repos.tenants.create("Tenant", email="t@example.com", additional_info={"k": [1, 2]})
    got = await repos.tenants.get(t.id)
    assert got == t
    tb = got.to_thingsboard()
    assert tb["id"] == {"entityType": "TENANT", "id": t.id}
    assert tb["title"] == tb["name"] == "Tenant"
    assert tb["email"] == "t@example.com" and tb["additionalInfo"] == {"k": [1, 2]}
    assert isinstance(tb["createdTime"], int)
    await repos.tenants.create("Other")
    page = await repos.tenants.list(10, 0, sort_property="title", sort_order="DESC")
    assert [x.title for x in page.data] == ["Tenant", "Other"]
    assert page.to_thingsboard()["totalElements"] == 2
    await repos.tenants.delete(t.id)
    assert await repos.tenants.get(t.id) is None
    with pytest.raises(EntityNotFoundError, match=r"Tenant with id \[.*\] is not found"):
        await repos.tenants.delete(t.id)


async def test_customer_title_unique_per_tenant_and_scoped(repos):
    t1, c1 = await _tenant_with_customer(repos, "T1")
    t2 = await repos.tenants.create("T2")
    with pytest.raises(AlreadyExistsError, match="Customer with such title already exists!"):
        await repos.customers.create(t1.id, "Customer A")
    c2 = await repos.customers.create(t2.id, "Customer A")  # same title, other tenant: fine
    assert await repos.customers.get(t1.id, c2.id) is None
    assert await repos.customers.get(t2.id, c1.id) is None
    assert (await repos.customers.get(t1.id, c1.id)).title == "Customer A"
    page = await repos.customers.list(t1.id, 10, 0)
    assert [c.id for c in page.data] == [c1.id]
    tb = c1.to_thingsboard()
    assert tb["tenantId"] == {"entityType": "TENANT", "id": t1.id}
    assert tb["id"]["entityType"] == "CUSTOMER"
    with pytest.raises(EntityNotFoundError):
        await repos.customers.delete(t2.id, c1.id)
    with pytest.raises(EntityNotFoundError, match="Tenant with id"):
        await repos.customers.create(NULL_UUID.replace("1", "2"), "X")


async def test_deleting_a_customer_unassigns_its_devices_and_removes_its_users(repos):
    t, c = await _tenant_with_customer(repos)
    d = await repos.devices.create(t.id, "d1", customer_id=c.id)
    u = await repos.users.create(t.id, c.id, "cu@example.com", "CUSTOMER_USER")
    await repos.customers.delete(t.id, c.id)
    assert (await repos.devices.get(t.id, d.id)).customer_id == NULL_UUID
    assert await repos.users.get(u.id) is None


# -- devices -------------------------------------------------------------------------


async def test_device_create_shape_token_and_name_unique_per_tenant(repos):
    t, c = await _tenant_with_customer(repos)
    t2 = await repos.tenants.create("T2")
    d = await repos.devices.create(t.id, "Thermostat", type="thermostat", label="Hall",
                                   additional_info={"description": "x"})
    tb = d.to_thingsboard()
    assert tb["id"] == {"entityType": "DEVICE", "id": d.id}
    assert tb["tenantId"] == {"entityType": "TENANT", "id": t.id}
    assert tb["customerId"] == {"entityType": "CUSTOMER", "id": NULL_UUID}
    assert tb["name"] == "Thermostat" and tb["type"] == "thermostat" and tb["label"] == "Hall"
    assert tb["deviceProfileId"]["entityType"] == "DEVICE_PROFILE"
    assert tb["additionalInfo"] == {"description": "x"} and tb["version"] == 1
    assert await repos.devices.get(t.id, d.id) == d
    creds = await repos.devices.credentials(t.id, d.id)
    assert creds.credentials_type == "ACCESS_TOKEN" and len(creds.credentials_id) == 20
    assert creds.credentials_id.isalnum()
    ctb = creds.to_thingsboard()
    assert ctb["id"] == {"id": creds.id} and ctb["deviceId"] == {"entityType": "DEVICE", "id": d.id}
    assert ctb["credentialsValue"] is None
    assert (await repos.devices.by_token(creds.credentials_id)).id == d.id

    with pytest.raises(AlreadyExistsError) as e:
        await repos.devices.create(t.id, "Thermostat")
    assert str(e.value) == DEVICE_NAME_TAKEN
    await repos.devices.create(t2.id, "Thermostat")  # another tenant may use the name
    with pytest.raises(AlreadyExistsError) as e:
        await repos.devices.create(t2.id, "Other", access_token=creds.credentials_id)
    assert str(e.value) == TOKEN_TAKEN
    # Nothing of the refused device was kept.
    assert await repos.devices.by_name(t2.id, "Other") is None
    with pytest.raises(EntityNotFoundError, match="Customer with id"):
        await repos.devices.create(t2.id, "Other", customer_id=c.id)  # t's customer, not t2's


async def test_tenant_isolation_every_device_method(repos):
    a, ca = await _tenant_with_customer(repos, "A")
    b, cb = await _tenant_with_customer(repos, "B")
    da = await repos.devices.create(a.id, "dev", customer_id=ca.id)
    db_ = await repos.devices.create(b.id, "dev", customer_id=cb.id)
    assert await repos.devices.get(b.id, da.id) is None
    assert await repos.devices.credentials(b.id, da.id) is None
    assert [d.id for d in (await repos.devices.list(b.id, 100, 0)).data] == [db_.id]
    assert (await repos.devices.list(b.id, 100, 0, customer_id=ca.id)).total_elements == 0
    assert await repos.devices.count(b.id) == 1
    assert await repos.devices.names(b.id, [da.id, db_.id, "not-a-uuid", db_.id.upper()]) == {db_.id: "dev"}
    assert await repos.devices.names(a.id, [da.id] * 3 + [str(i) for i in range(2500)], chunk=1000) == {da.id: "dev"}
    for call in (
        repos.devices.delete(b.id, da.id),
        repos.devices.update(b.id, da.id, name="stolen"),
        repos.devices.assign(b.id, da.id, cb.id),
        repos.devices.assign(a.id, da.id, cb.id),  # b's customer for a's device
        repos.devices.set_credentials(b.id, da.id, "newtoken"),
        repos.devices.last_activity(b.id, da.id),
    ):
        with pytest.raises(EntityNotFoundError):
            await call
    # a's device is untouched.
    assert await repos.devices.get(a.id, da.id) == da
    assert (await repos.users.list(b.id, None, 10, 0)).total_elements == 0


async def test_update_assign_unassign_and_versions(repos):
    t, c = await _tenant_with_customer(repos)
    d = await repos.devices.create(t.id, "d1")
    await repos.devices.create(t.id, "d2")
    d = await repos.devices.update(t.id, d.id, label="L", additional_info={"a": 1})
    assert (d.name, d.label, d.additional_info, d.version) == ("d1", "L", {"a": 1}, 2)
    with pytest.raises(AlreadyExistsError, match=DEVICE_NAME_TAKEN):
        await repos.devices.update(t.id, d.id, name="d2")
    d = await repos.devices.assign(t.id, d.id, c.id)
    assert d.customer_id == c.id
    assert d.to_thingsboard()["customerId"] == {"entityType": "CUSTOMER", "id": c.id}
    assert [x.id for x in (await repos.devices.list(t.id, 10, 0, customer_id=c.id)).data] == [d.id]
    assert await repos.devices.count(t.id, c.id) == 1
    # The null UUID lists the unassigned ones (ThingsBoard stores them so).
    assert [x.name for x in (await repos.devices.list(t.id, 10, 0, customer_id=NULL_UUID)).data] == ["d2"]
    assert await repos.devices.count(t.id, NULL_UUID) == 1
    d = await repos.devices.assign(t.id, d.id, NULL_UUID)
    assert d.customer_id == NULL_UUID


async def test_credentials_change_and_listeners(repos):
    t = await repos.tenants.create("T")
    heard: list[DeviceChange] = []

    async def listener(changes):
        heard.extend(changes)

    repos.devices.add_listener(listener)
    repos.devices.add_listener(lambda changes: 1 / 0)  # a failing listener is only logged
    d = await repos.devices.create(t.id, "d", access_token="tok-1")
    creds = await repos.devices.set_credentials(t.id, d.id, "tok-2")
    assert creds.credentials_id == "tok-2" and creds.version == 2
    await repos.devices.set_credentials(t.id, d.id, "tok-2")  # unchanged: no event
    assert await repos.devices.by_token("tok-1") is None
    assert (await repos.devices.by_token("tok-2")).id == d.id
    other = await repos.devices.create(t.id, "other")
    with pytest.raises(AlreadyExistsError, match=TOKEN_TAKEN):
        await repos.devices.set_credentials(t.id, other.id, "tok-2")
    await repos.devices.delete(t.id, d.id)
    assert await repos.devices.by_token("tok-2") is None
    assert [(h.kind, h.device.id, h.token, h.old_token) for h in heard] == [
        ("created", d.id, "tok-1", None),
        ("credentials", d.id, "tok-2", "tok-1"),
        ("created", other.id, heard[2].token, None),
        ("deleted", d.id, None, "tok-2"),
    ]
    # Deleting the tenant deletes (and announces) its remaining devices.
    await repos.tenants.delete(t.id)
    assert (heard[-1].kind, heard[-1].device.id) == ("deleted", other.id)
    assert await repos.devices.get_by_id(other.id) is None


async def test_get_by_id_and_all_credentials_cross_tenants(repos):
    a = await repos.tenants.create("A")
    b = await repos.tenants.create("B")
    made = [await repos.devices.create(t.id, f"d{i}") for i, t in enumerate((a, b, a))]
    assert (await repos.devices.get_by_id(made[1].id)).tenant_id == b.id
    assert await repos.devices.get_by_id("not-a-uuid") is None
    assert await repos.devices.by_token("") is None
    seen = [(d.id, tok) async for d, tok in repos.devices.all_credentials(batch=2)]
    assert sorted(i for i, _ in seen) == sorted(d.id for d in made)
    for device_id, token in seen:
        assert (await repos.devices.by_token(token)).id == device_id


async def test_activity(repos):
    t = await repos.tenants.create("T")
    d = await repos.devices.create(t.id, "d")
    assert await repos.devices.last_activity(t.id, d.id) is None
    await repos.devices.touch_activity(d.id, 2000)
    await repos.devices.touch_activity(d.id, 1000)  # older: ignored
    assert await repos.devices.last_activity(t.id, d.id) == 2000
    assert (await repos.devices.get(t.id, d.id)).last_activity_time == 2000


# -- paging and search ---------------------------------------------------------------


async def test_device_paging_search_sort_and_type(repos):
    t, c = await _tenant_with_customer(repos)
    names = [f"sensor-{i:02d}" for i in range(23)] + ["Pump_1", "pump%2", "VALVE"]
    for i, n in enumerate(names):
        await repos.devices.create(t.id, n, type="sensor" if n.startswith("sensor") else "actuator",
                                   label="Hall" if i % 5 == 0 else None)
    page = await repos.devices.list(t.id, 10, 0, sort_property="name")
    assert isinstance(page, Page) and PageData is Page
    assert (page.total_elements, page.total_pages, page.has_next) == (26, 3, True)
    everything = []
    for p in range(3):
        everything += [d.name for d in (await repos.devices.list(t.id, 10, p, sort_property="name")).data]
    assert everything == sorted(names)  # byte order on both backends
    last = await repos.devices.list(t.id, 10, 2, sort_property="name")
    assert (len(last.data), last.has_next) == (6, False)
    desc = await repos.devices.list(t.id, 5, 0, sort_property="name", sort_order="DESC")
    assert [d.name for d in desc.data] == sorted(names, reverse=True)[:5]
    # Substring, any case; % and _ are literal.
    assert {d.name for d in (await repos.devices.list(t.id, 50, 0, text_search="PUMP")).data} == {"Pump_1", "pump%2"}
    assert [d.name for d in (await repos.devices.list(t.id, 50, 0, text_search="%")).data] == ["pump%2"]
    assert [d.name for d in (await repos.devices.list(t.id, 50, 0, text_search="p_")).data] == ["Pump_1"]
    assert (await repos.devices.list(t.id, 50, 0, text_search="hall")).total_elements == 6  # label
    assert (await repos.devices.list(t.id, 50, 0, type="actuator")).total_elements == 3
    by_type = await repos.devices.list(t.id, 50, 0, sort_property="deviceProfileName")
    assert [d.type for d in by_type.data][:3] == ["actuator"] * 3
    await repos.devices.assign(t.id, by_type.data[-1].id, c.id)
    by_customer = await repos.devices.list(t.id, 50, 0, sort_property="customerTitle", sort_order="DESC")
    assert by_customer.data[0].customer_id == c.id
    empty = await repos.devices.list(t.id, 10, 7)
    assert (empty.data, empty.total_elements, empty.has_next) == ([], 26, False)
    assert empty.to_thingsboard() == {"data": [], "totalPages": 3, "totalElements": 26, "hasNext": False}


@pytest.mark.parametrize("kwargs, message", [
    ({"page_size": 0, "page": 0}, "pageSize"),
    ({"page_size": "10", "page": 0}, "pageSize"),
    ({"page_size": 10, "page": -1}, "page must"),
    ({"page_size": 10, "page": 0, "sort_order": "UP"}, "Unsupported sort order 'UP'"),
    ({"page_size": 10, "page": 0, "sort_property": "id; DROP TABLE device"}, "Unsupported sort property"),
    ({"page_size": 10, "page": 1 << 60}, "out of range"),
    ({"page_size": 10, "page": 0, "text_search": "a\x00"}, "NUL"),
])
async def test_bad_listing_arguments(repos, kwargs, message):
    t = await repos.tenants.create("T")
    with pytest.raises(ValidationError, match=message):
        await repos.devices.list(t.id, **kwargs)


async def test_bad_ids_are_validation_errors(repos):
    with pytest.raises(ValidationError, match="Invalid UUID string: nope"):
        await repos.devices.get("nope", NULL_UUID)
    with pytest.raises(ValidationError, match="Invalid UUID string"):
        await repos.tenants.get("'; DROP TABLE tenant; --")
    t = await repos.tenants.create("T")
    with pytest.raises(ValidationError, match="Device name should be specified!"):
        await repos.devices.create(t.id, "  ")
    with pytest.raises(ValidationError, match="spaces"):
        await repos.devices.create(t.id, "d", access_token="a b")


# -- users -----------------------------------------------------------------------------


async def test_users_roles_email_unique_and_passwords(repos):
    t, c = await _tenant_with_customer(repos)
    admin = await repos.users.create(None, None, "SysAdmin@Example.com", "SYS_ADMIN", password="s3cret")
    assert admin.email == "sysadmin@example.com" and admin.tenant_id == NULL_UUID
    tb = admin.to_thingsboard()
    assert tb["tenantId"] == {"entityType": "TENANT", "id": NULL_UUID}
    assert tb["customerId"] == {"entityType": "CUSTOMER", "id": NULL_UUID}
    assert tb["authority"] == "SYS_ADMIN" and tb["name"] == "sysadmin@example.com"
    assert not any("password" in k.lower() or "hash" in k.lower() for k in (*tb, *tb["additionalInfo"]))
    ta = await repos.users.create(t.id, None, "tenant@example.com", "TENANT_ADMIN", "Ten", "Ant", "pw")
    cu = await repos.users.create(t.id, c.id, "cust@example.com", "CUSTOMER_USER")
    with pytest.raises(AlreadyExistsError, match="already present in database!"):
        await repos.users.create(t.id, None, "TENANT@example.com", "TENANT_ADMIN")
    for tenant, customer, authority in [(t.id, None, "SYS_ADMIN"), (None, None, "TENANT_ADMIN"),
                                        (t.id, None, "CUSTOMER_USER"), (t.id, None, "ROOT")]:
        with pytest.raises(ValidationError):
            await repos.users.create(tenant, customer, "x@example.com", authority)

    assert (await repos.users.verify("TENANT@example.com", "pw")).id == ta.id
    assert await repos.users.verify("tenant@example.com", "PW") is None
    assert await repos.users.verify("nobody@example.com", "pw") is None
    assert await repos.users.verify("cust@example.com", "") is None  # no password set
    await repos.users.set_password(cu.id, "customer")
    assert (await repos.users.verify("cust@example.com", "customer")).customer_id == c.id
    assert (await repos.users.by_email("CUST@example.com")).id == cu.id
    assert await repos.users.count("SYS_ADMIN") == 1

    tenant_users = await repos.users.list(t.id, None, 10, 0, sort_property="email")
    assert [u.email for u in tenant_users.data] == ["cust@example.com", "tenant@example.com"]
    assert [u.id for u in (await repos.users.list(t.id, None, 10, 0, authority="TENANT_ADMIN")).data] == [ta.id]
    assert [u.id for u in (await repos.users.list(t.id, c.id, 10, 0)).data] == [cu.id]
    assert [u.id for u in (await repos.users.list(NULL_UUID, None, 10, 0)).data] == [admin.id]
    assert (await repos.users.list(t.id, None, 10, 0, text_search="ANT")).total_elements == 1


async def test_failed_logins_lock_and_reset(repos):
    u = await repos.users.create(None, None, "a@example.com", "SYS_ADMIN", password="pw")
    for expected in (1, 2):
        u = await repos.users.record_failed_login(u.id, max_attempts=3, lockout_ms=60_000, now=1000)
        assert (u.failed_login_attempts, u.is_locked(1000)) == (expected, False)
    u = await repos.users.record_failed_login(u.id, max_attempts=3, lockout_ms=60_000, now=1000)
    assert u.locked_until == 61_000 and u.is_locked(60_999) and not u.is_locked(61_000)
    assert u.failed_login_attempts == 0
    await repos.users.reset_failed_logins(u.id, login_time=5000)
    u = await repos.users.get(u.id)
    assert (u.locked_until, u.failed_login_attempts, u.last_login_time) == (0, 0, 5000)
    assert u.to_thingsboard()["additionalInfo"]["lastLoginTs"] == 5000
    never = await repos.users.record_failed_login(u.id, max_attempts=0, lockout_ms=60_000)
    assert never.locked_until == 0


async def test_device_listing_uses_indexes_not_sorts(edb):
    """10,000+ devices per tenant: every default listing walks an index in
    its order (no full scan, no sort of the tenant's rows).  On PostgreSQL
    sequential scans are disabled for the EXPLAIN, since on a tiny table the
    planner rightly prefers them: what is checked is that an index serves
    the ordering, so no Sort node appears."""
    queries = [
        ("SELECT d.id FROM device d WHERE d.tenant_id = $1 ORDER BY d.created_time ASC, d.id ASC LIMIT 10", 1),
        ("SELECT d.id FROM device d WHERE d.tenant_id = $1 ORDER BY d.name DESC LIMIT 10", 1),
        ("SELECT d.id FROM device d WHERE d.tenant_id = $1 AND d.customer_id = $2 "
         "ORDER BY d.created_time ASC, d.id ASC LIMIT 10", 2),
        ("SELECT d.id FROM device d WHERE d.tenant_id = $1 AND d.type = $2 "
         "ORDER BY d.created_time ASC, d.id ASC LIMIT 10", 2),
        ("SELECT count(*) FROM device d WHERE d.tenant_id = $1", 1),
        ("SELECT d.id FROM device_credentials c JOIN device d ON d.id = c.device_id WHERE c.credentials_id = $1", 1),
    ]
    for sql, nargs in queries:
        args = ("t", "x")[:nargs]
        if edb.dialect == "sqlite":
            plan = " | ".join(r[3] for r in await edb.fetch("EXPLAIN QUERY PLAN " + sql, *args))
            assert "INDEX" in plan, plan
            assert "TEMP B-TREE" not in plan and "SCAN d " not in plan + " ", plan
        else:
            async with edb.transaction() as conn:
                await conn.execute("SET LOCAL enable_seqscan = off")
                plan = " | ".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *args))
            assert "Index" in plan and "Sort" not in plan and "Seq Scan" not in plan, plan


async def test_lookups_by_a_text_with_nul_find_nothing(repos):
    """No stored text holds NUL (it is refused on the way in); PostgreSQL
    fails a query that carries one, so a lookup answers "not found" before
    asking (GET /api/tenant/devices?deviceName=a%00b was a 500 on
    PostgreSQL, found by a deeper run of the OpenAPI fuzz)."""
    t = await repos.tenants.create("T")
    c = await repos.customers.create(t.id, "C")
    await repos.devices.create(t.id, "d", access_token="tok")
    nul = "d\x00"
    assert await repos.devices.by_name(t.id, nul) is None
    assert await repos.devices.by_token("tok\x00") is None
    assert (await repos.devices.by_tokens(["tok\x00", "tok"])).keys() == {"tok"}
    assert await repos.tenants.by_title("T\x00") is None
    assert await repos.customers.by_title(t.id, "C\x00") is None
    assert c.id and await repos.users.by_email("a\x00@b.c") is None
    assert await repos.users.verify("a\x00@b.c", "secret") is None
