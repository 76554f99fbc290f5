"""The Elves repositories on both dialects of the shared Database."""

from __future__ import annotations

import pytest

from fleetrpc.errors import AlreadyExistsError
from fleetrpc.services.elves import NULL_TENANT, Instruction
from fleetrpc.services.elves.store import SupervisorRepository, TaskRepository
from fleetrpc.services.elves.supervisor import Supervisor
from fleetrpc.services.elves.tasklog import TaskLog
from fleetrpc.store.db import open_database

OTHER = "a1b2c3d4-0000-4000-8000-000000000001"


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/elves.db"
    else:
        url = request.getfixturevalue("fresh_pg_db")
    database = await open_database(url)  # the store's migrations, Elves' 0300-0399 among them
    yield database
    await database.close()


async def test_app_keys_grants_and_tenants(db):
    sup = Supervisor(SupervisorRepository(db))
    key = await sup.create_app(NULL_TENANT, "ops", callback=("10.1.1.1", 8000))
    assert len(key.auth_id) == 16 and len(key.auth_key) == 32
    with pytest.raises(AlreadyExistsError):
        await sup.create_app(NULL_TENANT, "ops")
    other = await sup.create_app(OTHER, "ops")  # same name, another tenant
    await sup.grant(NULL_TENANT, "ops", ips=["10.0.0.1", "10.0.0.2"], main_cats=["web"])
    await sup.grant(NULL_TENANT, "ops", ips=["10.0.0.1"])  # twice is fine
    assert await sup.allowed(key, ["10.0.0.1", "10.0.0.3"]) == {"10.0.0.1": True, "10.0.0.3": False}
    assert await sup.allowed(other, ["10.0.0.1"]) == {"10.0.0.1": False}

    async def cats(tenant, ips):
        return {"10.0.0.3": ("web", None)}

    sup.categories_of = cats
    assert await sup.allowed(key, ["10.0.0.3"]) == {"10.0.0.3": True}
    assert await sup.app_by_key_any_tenant(other.auth_key) == other
    assert await sup.callback_of(NULL_TENANT, "ops") == ("10.1.1.1", 8000)
    assert await sup.callback_of(OTHER, "ops") is None
    assert await sup.repo.delete_app(NULL_TENANT, "ops")
    assert await sup.repo.grants(NULL_TENANT, "ops") == {}


async def test_task_rows_life(db):
    log = TaskLog(TaskRepository(db))
    ins = Instruction("ops", "echo", "P", {"a": 1}, "", "").normalised()
    ids = await log.start(NULL_TENANT, caller="ops", type="cron", ins=ins,
                          targets=[("10.0.0.1", "dev1"), ("10.0.0.2", None)], wire_id="w1")
    assert len(set(ids)) == 2
    await log.sent(NULL_TENANT, [(ids[0], True, "", 3), (ids[1], False, "[414.1]x", 0)])
    row = await log.repo.find_by_wire_any_tenant("dev1", "w1")
    assert row.id == ids[0] and row.param == '{"a":1}' and row.timeout == 90
    await log.worker_results(NULL_TENANT, [(ids[0], log.worker_fields("P", 1, "ok", 5, 123))])
    await log.processor_pushed(NULL_TENANT, ids[0], True, "", 2)
    await log.processor_result(NULL_TENANT, ids[0], ok=True, message="done", costtime=9)
    a, b = await log.get(NULL_TENANT, ids)
    assert (a.result_flag, a.worker_flag, a.agent_callback_time, a.processor_message) == (1, 1, 123, "done")
    assert (b.result_flag, b.agent_sync_flag, b.agent_sync_error) == (0, 0, "[414.1]x")
    assert await log.get(OTHER, ids) == []
    assert await log.purge(a.starttime + 1) == 2


# -- migrations --------------------------------------------------------------------


def test_elves_tables_are_store_migrations_that_ship():
    """The Elves tables are the store's migrations 300-399 in both dialects,
    and every .sql file under the package is matched by the package data
    of pyproject.toml (so a wheel carries it; checked once by building one)."""
    import tomllib
    from pathlib import Path

    from fleetrpc.store import migrations

    for dialect in ("sqlite", "postgresql"):
        elves = [m for m in migrations.load(dialect) if 300 <= m.version < 400]
        assert [m.name for m in elves] == [
            "elves_supervisor", "elves_tasklog", "elves_cron", "elves_queue", "elves_cmdb", "elves_queue_children"]
    root = Path(__file__).resolve().parents[2]
    package = root / "src" / "fleetrpc"
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["fleetrpc"]
    shipped = {p for pattern in patterns for p in package.glob(pattern)}
    sql = set(package.rglob("*.sql"))
    assert sql and sql <= shipped, sorted(str(p.relative_to(package)) for p in sql - shipped)
