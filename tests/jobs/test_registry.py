"""The server's job targets (jobs/registry.py) on a real SQLite and
PostgreSQL ``device`` table, with more devices than the REST tests create:
large ``deviceIds`` lists in bounded queries, the same device order for
every selector, and name patterns matched alike on both databases."""

from __future__ import annotations

import random
import uuid

import pytest

from fleetrpc.errors import ValidationError
from fleetrpc.jobs.model import Targets
from fleetrpc.jobs.registry import ID_CHUNK, JobTargets, RegistryTargets
from fleetrpc.store.db import open_database

TENANT, OTHER = str(uuid.uuid4()), str(uuid.uuid4())
CUSTOMER = str(uuid.uuid4())
NO_CUSTOMER = "13814000-1dd2-11b2-8080-808080808080"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
async def db(request, tmp_path):
    url = f"sqlite:///{tmp_path}/registry.db" if request.param == "sqlite" else request.getfixturevalue("fresh_pg_db")
    database = await open_database(url)
    yield database
    await database.close()


async def add_devices(db, devices: list[tuple[str, str, str, str]]) -> None:
    """Rows of the ``device`` table: (id, tenant, customer, name)."""
    await db.executemany(
        "INSERT INTO device (id, tenant_id, customer_id, created_time, name, type) VALUES ($1, $2, $3, 0, $4, 'x')",
        devices,
    )


class CountingDb:
    """The database, with the largest number of arguments any query bound
    and the sum of them all."""

    def __init__(self, db) -> None:
        self.db = db
        self.dialect = db.dialect
        self.most = self.total = 0

    def _count(self, args) -> None:
        self.most = max(self.most, len(args))
        self.total += len(args)

    async def fetch(self, sql, *args):
        self._count(args)
        return await self.db.fetch(sql, *args)

    async def fetchval(self, sql, *args):
        self._count(args)
        return await self.db.fetchval(sql, *args)


async def every_page(source, limit: int) -> list[str]:
    """All of a source's targets, a page after the other as the engine reads them."""
    found: list[str] = []
    while True:
        page = await source.page(found[-1] if found else None, limit)
        assert len(page) <= limit
        found += page
        if len(page) < limit:
            return found


async def test_a_long_device_id_list_is_looked_up_in_bounded_chunks_in_device_order(db):
    mine = [str(uuid.uuid4()) for _ in range(3000)]
    theirs = [str(uuid.uuid4()) for _ in range(300)]
    await add_devices(db, [(d, TENANT, CUSTOMER if i % 3 == 0 else NO_CUSTOMER, f"d{i}") for i, d in enumerate(mine)]
                      + [(d, OTHER, NO_CUSTOMER, f"d{i}") for i, d in enumerate(theirs)])
    asked = mine[:2500]
    unknown = [str(uuid.uuid4()) for _ in range(200)]
    ids = asked + theirs + unknown + asked[:100]  # another tenant's, no one's, twice
    random.Random(11).shuffle(ids)
    counting = CountingDb(db)
    source = RegistryTargets(counting, TENANT, Targets(device_ids=ids))
    assert await source.count() == 2500
    every = await every_page(source, 1000)
    assert every == sorted(asked)
    # every query binds at most a chunk (with the tenant), and the whole run
    # binds each id about once per pass (count, then the pages): not the
    # whole list again for every page
    assert counting.most <= ID_CHUNK + 2
    assert counting.total <= 3 * len(set(ids)) + 100
    # the same order as the registry's own keyset pages (a resumed job
    # continues after its cursor whatever its selector)
    by_table = await every_page(RegistryTargets(db, TENANT, Targets(all=True)), 700)
    assert [d for d in by_table if d in set(asked)] == every
    # resumed after a cursor, in pages smaller than a chunk
    assert await every_page(source, 7) == every
    cursor = every[1234]
    assert await source.page(cursor, 5) == every[1235:1240]
    assert await source.page(every[-1], 5) == []
    # a customer's job: its customer's devices only
    of_customer = RegistryTargets(db, TENANT, Targets(device_ids=ids), CUSTOMER)
    expected = sorted(d for i, d in enumerate(mine[:2500]) if i % 3 == 0)
    assert await of_customer.count() == len(expected)
    assert await every_page(of_customer, 1000) == expected


async def test_the_access_check_of_a_long_list_names_what_is_unknown(db):
    mine = [str(uuid.uuid4()) for _ in range(2500)]
    await add_devices(db, [(d, TENANT, NO_CUSTOMER, f"d{i}") for i, d in enumerate(mine)])
    counting = CountingDb(db)
    check = JobTargets(counting)
    await check.check_access(TENANT, None, Targets(device_ids=mine))
    assert counting.most <= ID_CHUNK + 1
    unknown = [str(uuid.uuid4()) for _ in range(7)]
    with pytest.raises(ValidationError, match=rf"^unknown device ids: {unknown[0]}, .* and 2 more$"):
        await check.check_access(TENANT, None, Targets(device_ids=mine + unknown))
    with pytest.raises(PermissionError):
        await check.check_access(TENANT, CUSTOMER, Targets(device_ids=mine[:1]))


async def test_a_name_pattern_matches_alike_on_both_databases(db):
    names = ["pump-1", "Pump-2", "PUMP-3", "pump_4", "pumpx5", "pump%6", "pump[7]", "pump?8", "a*b", "axb",
             "back\\slash"]
    ids = {name: str(uuid.uuid4()) for name in names}
    await add_devices(db, [(d, TENANT, NO_CUSTOMER, name) for name, d in ids.items()])
    await add_devices(db, [(str(uuid.uuid4()), OTHER, NO_CUSTOMER, "pump-1")])

    async def matched(pattern: str) -> set[str]:
        source = RegistryTargets(db, TENANT, Targets(name_pattern=pattern))
        found = await every_page(source, 1000)
        assert await source.count() == len(found)
        return {name for name, d in ids.items() if d in found}

    # case-sensitive, as deviceType and label are; only * is a wildcard
    assert await matched("pump-*") == {"pump-1"}
    assert await matched("Pump-*") == {"Pump-2"}
    assert await matched("PUMP-3") == {"PUMP-3"}
    assert await matched("pump_*") == {"pump_4"}
    assert await matched("pump%*") == {"pump%6"}
    assert await matched("*[7]") == {"pump[7]"}
    assert await matched("pump?8") == {"pump?8"}
    assert await matched("pump?") == set()
    assert await matched("a*b") == {"a*b", "axb"}
    assert await matched("back\\*") == {"back\\slash"}
    assert await matched("*") == set(names)
    assert await matched("*ump*") == {"pump-1", "Pump-2", "pump_4", "pumpx5", "pump%6", "pump[7]", "pump?8"}
