"""ThingsBoard's demo data and the production first start: the demo loads
idempotently on both databases; a system administrator comes from the
settings or ``fleetrpc admin``, never from a default password."""

from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner

from fleetrpc.admin import admin, ensure_sysadmin
from fleetrpc.cli import main
from fleetrpc.errors import ValidationError
from fleetrpc.server.demo_data import DEMO_DEVICES, DEMO_USERS, demo_repositories, load_demo_data
from fleetrpc.store.entities import NULL_UUID


async def test_demo_loads_once_and_logs_in_as_thingsboard(repos):
    first = await load_demo_data(**demo_repositories(repos))
    assert first.created == 1 + 3 + len(DEMO_USERS) + len(DEMO_DEVICES)
    again = await load_demo_data(**demo_repositories(repos))
    assert again.created == 0
    assert (again.tenant_id, again.user_ids, again.customer_ids) == (first.tenant_id, first.user_ids, first.customer_ids)
    assert (await repos.tenants.list(10, 0)).total_elements == 1

    sysadmin = await repos.users.verify("sysadmin@thingsboard.org", "sysadmin")
    assert sysadmin.authority == "SYS_ADMIN" and sysadmin.tenant_id == NULL_UUID
    tenant = await repos.users.verify("tenant@thingsboard.org", "tenant")
    assert (tenant.authority, tenant.tenant_id, tenant.customer_id) == ("TENANT_ADMIN", first.tenant_id, NULL_UUID)
    for letter in "ABC":
        user = await repos.users.verify(f"customer{letter}@thingsboard.org", "customer")
        assert user.customer_id == first.customer_ids[f"Customer {letter}"]
    assert await repos.users.verify("tenant@thingsboard.org", "sysadmin") is None

    a1 = await repos.devices.by_token("A1_TEST_TOKEN")
    assert a1.name == "Test Device A1" and a1.customer_id == first.customer_ids["Customer A"]
    dht = await repos.devices.by_token("DHT11_DEMO_TOKEN")
    assert dht.customer_id == NULL_UUID and "DHT11" in dht.additional_info["description"]
    assert (await repos.devices.list(first.tenant_id, 50, 0, type="thermostat")).total_elements == 2
    assert await repos.devices.count(first.tenant_id, first.customer_ids["Customer A"]) == 3


async def test_demo_completes_what_is_missing(repos):
    first = await load_demo_data(**demo_repositories(repos))
    await repos.devices.delete(first.tenant_id, first.devices["Test Device B1"].id)
    await repos.users.delete(first.user_ids["customerB@thingsboard.org"])
    again = await load_demo_data(**demo_repositories(repos))
    assert again.created == 2
    assert (await repos.devices.by_token("B1_TEST_TOKEN")).name == "Test Device B1"


async def test_first_start_creates_the_sysadmin_only_from_settings(repos, caplog):
    with caplog.at_level(logging.WARNING, "fleetrpc.admin"):
        assert await ensure_sysadmin(repos.users, None, None) is None
    assert "no system administrator exists" in caplog.text
    assert await repos.users.count("SYS_ADMIN") == 0  # nothing invented
    with pytest.raises(ValidationError, match="at least 8"):
        await ensure_sysadmin(repos.users, "root@example.com", "short")
    user = await ensure_sysadmin(repos.users, "root@example.com", "correct horse")
    assert user.authority == "SYS_ADMIN"
    assert (await repos.users.verify("root@example.com", "correct horse")).id == user.id
    assert await ensure_sysadmin(repos.users, "other@example.com", "correct horse") is None


async def test_first_start_refuses_an_email_of_another_role(repos):
    t = await repos.tenants.create("T")
    await repos.users.create(t.id, None, "boss@example.com", "TENANT_ADMIN")
    with pytest.raises(ValidationError, match="not a system administrator"):
        await ensure_sysadmin(repos.users, "boss@example.com", "correct horse")


def test_admin_command(tmp_path):
    db = f"sqlite:///{tmp_path / 'server.db'}"
    secret = tmp_path / "pw"
    secret.write_text("correct horse battery\n")
    runner = CliRunner()
    assert "admin" in runner.invoke(main, ["--help"]).output

    r = runner.invoke(main, ["admin", "create-sysadmin", "--db", db, "--email", "Root@Example.com",
                             "--password-file", str(secret)])
    assert r.exit_code == 0, r.output
    assert "created system administrator root@example.com" in r.output
    r = runner.invoke(admin, ["create-sysadmin", "--db", db, "--email", "root@example.com",
                              "--password-file", str(secret)])
    assert r.exit_code == 1 and "already present" in r.output
    r = runner.invoke(admin, ["create-sysadmin", "--db", db, "--email", "x@example.com", "--password-file", "-"],
                      input="weak\n")
    assert r.exit_code == 1 and "at least 8 characters" in r.output
    r = runner.invoke(admin, ["create-sysadmin", "--db", db, "--email", "x@example.com"], input="")
    assert r.exit_code == 2 and "--password-file" in r.output
    r = runner.invoke(admin, ["create-sysadmin", "--email", "x@example.com", "--password-file", str(secret)],
                      env={"FLEETRPC_STORE_URL": db})
    assert r.exit_code == 0, r.output

    r = runner.invoke(admin, ["set-password", "--db", db, "--email", "root@example.com", "--password-file", "-"],
                      input="another good one\n")
    assert r.exit_code == 0, r.output
    r = runner.invoke(admin, ["set-password", "--db", db, "--email", "nobody@example.com", "--password-file", "-"],
                      input="another good one\n")
    assert r.exit_code == 1 and "no user" in r.output
    r = runner.invoke(admin, ["load-demo", "--db", db])
    assert r.exit_code == 0 and "entities created" in r.output, r.output

    async def check():
        from fleetrpc.store.db import open_database
        from fleetrpc.store.entities import UserRepository

        database = await open_database(db)
        try:
            users = UserRepository(database)
            assert await users.verify("root@example.com", "another good one") is not None
            assert await users.verify("tenant@thingsboard.org", "tenant") is not None
            return await users.count("SYS_ADMIN")
        finally:
            await database.close()

    from tests.services import run_async

    assert run_async(check) == 3  # root, x, and the demo's sysadmin


async def test_demo_data_stops_at_the_device_limit_naming_the_setting(repos):
    """``fleetrpc serve --demo`` and ``fleetrpc admin load-demo`` load
    through the repository the server uses: its limit holds, and the
    refusal says which setting to raise rather than ThingsBoard's bare
    "Devices limit reached"."""
    from fleetrpc.errors import EntitiesLimitExceededError

    repos.devices.max_devices_per_tenant = 5
    with pytest.raises(EntitiesLimitExceededError, match=r"store\.max_devices_per_tenant is 5") as caught:
        await load_demo_data(**demo_repositories(repos))
    assert "4 of ThingsBoard's 9 demo devices were not created" in str(caught.value)
    tenant = await repos.tenants.by_title("Tenant")
    assert await repos.devices.count(tenant.id) == 5
    # raised: loading again completes it
    repos.devices.max_devices_per_tenant = 9
    again = await load_demo_data(**demo_repositories(repos))
    assert again.created == 4 and len(again.devices) == len(DEMO_DEVICES)


def test_admin_load_demo_honours_the_device_limit(tmp_path, monkeypatch):
    """The admin command reads the limit as ``fleetrpc serve`` does
    (--config, $FLEETRPC_CONFIG, ./fleetrpc.toml, then
    $FLEETRPC_STORE_MAX_DEVICES_PER_TENANT) and refuses with one clear line."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLEETRPC_CONFIG", raising=False)
    monkeypatch.delenv("FLEETRPC_STORE_MAX_DEVICES_PER_TENANT", raising=False)
    db = f"sqlite:///{tmp_path / 'server.db'}"
    runner = CliRunner()

    def devices() -> int:
        async def count():
            from fleetrpc.store.db import open_database
            from fleetrpc.store.entities import DeviceRepository, TenantRepository

            database = await open_database(db)
            try:
                tenant = await TenantRepository(database).by_title("Tenant")
                return await DeviceRepository(database).count(tenant.id)
            finally:
                await database.close()

        from tests.services import run_async

        return run_async(count)

    r = runner.invoke(admin, ["load-demo", "--db", db], env={"FLEETRPC_STORE_MAX_DEVICES_PER_TENANT": "5"})
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and r.output.count("\n") == 1, r.output
    assert "store.max_devices_per_tenant is 5" in r.output
    assert devices() == 5
    (tmp_path / "fleetrpc.toml").write_text("[store]\nmax_devices_per_tenant = 7\n")
    r = runner.invoke(admin, ["load-demo", "--db", db])
    assert r.exit_code == 1 and "store.max_devices_per_tenant is 7" in r.output, r.output
    assert devices() == 7
    other = tmp_path / "other.toml"
    other.write_text("[store]\nmax_devices_per_tenant = 0\n")
    r = runner.invoke(admin, ["load-demo", "--db", db, "--config", str(other)])
    assert r.exit_code == 0 and "2 entities created" in r.output, r.output
    assert devices() == len(DEMO_DEVICES)
    # a bad setting is a clear error too
    r = runner.invoke(admin, ["load-demo", "--db", db], env={"FLEETRPC_STORE_MAX_DEVICES_PER_TENANT": "-1"})
    assert r.exit_code == 1 and "store.max_devices_per_tenant" in r.output and "Traceback" not in r.output
