"""The server's in-memory view of which devices exist (presence keeps state
for these only), on SQLite and PostgreSQL: loaded at start, kept in step by
the repository's listeners, and on a cluster by looking at what other nodes
created and deleted."""

from __future__ import annotations

from fleetrpc.presence import PresenceRegistry
from fleetrpc.server.registered import RegisteredDevices
from fleetrpc.store.entities import DeviceRepository


async def test_loaded_at_start_then_kept_in_step_by_this_nodes_changes(repos):
    t = await repos.tenants.create("T")
    before = [await repos.devices.create(t.id, f"d{i}") for i in range(3)]
    registered = RegisteredDevices(repos.devices)
    assert registered.available
    await registered.load()
    assert all(d.id in registered for d in before) and len(registered) == 3
    presence = PresenceRegistry(is_known=registered.__contains__)
    registered.attach(presence)
    # A device connects a moment before this node hears of its creation.
    new_id = "0f000000-0000-4000-8000-000000000001"
    presence.set_online(new_id, True)
    assert not presence.is_online(new_id)
    await repos.devices.create(t.id, "new", id=new_id)
    assert new_id in registered and presence.is_online(new_id)
    await repos.devices.delete(t.id, new_id)
    assert new_id not in registered and not presence.is_online(new_id) and new_id not in presence
    registered.detach()
    await repos.devices.create(t.id, "after-detach")
    assert len(registered) == 3


async def test_a_cluster_node_learns_what_other_nodes_created_and_deleted(repos):
    t = await repos.tenants.create("T")
    kept = await repos.devices.create(t.id, "kept")
    gone = await repos.devices.create(t.id, "gone")
    here = RegisteredDevices(repos.devices)  # this node
    await here.load()
    presence = PresenceRegistry(is_known=here.__contains__)
    here.attach(presence)
    presence.set_online(gone.id, True)
    other_node = DeviceRepository(repos.db)  # another node: its listeners are its own
    created = await other_node.create(t.id, "elsewhere")
    presence.set_online(created.id, True)  # held: not known here yet
    assert created.id not in here and not presence.is_online(created.id)
    assert await here.refresh() == 1
    assert created.id in here and presence.is_online(created.id)
    assert await here.refresh() == 0  # the slack re-reads it, nothing new
    await other_node.delete(t.id, gone.id)
    assert gone.id in here  # deletions elsewhere wait for the full reload
    await here.load()
    assert gone.id not in here and not presence.is_online(gone.id) and kept.id in here


async def test_an_api_call_that_found_the_device_makes_it_known(repos):
    t = await repos.tenants.create("T")
    here = RegisteredDevices(repos.devices)
    await here.load()
    presence = PresenceRegistry(is_known=here.__contains__)
    here.attach(presence)
    device = await DeviceRepository(repos.db).create(t.id, "elsewhere")
    presence.set_online(device.id, True)
    here.confirm(device.id)
    assert presence.is_online(device.id)


async def test_ids_are_read_in_pages(repos):
    t = await repos.tenants.create("T")
    made = {(await repos.devices.create(t.id, f"d{i}")).id for i in range(7)}
    pages = [page async for page in repos.devices.all_ids(batch=3)]
    assert [len(p) for p in pages] == [3, 3, 1] and set().union(*pages) == made


def test_a_repository_that_cannot_list_its_ids_gives_no_view():
    class Stand_in:
        async def get(self, tenant_id, device_id):
            return None

    assert not RegisteredDevices(Stand_in()).available


async def test_following_a_cluster_picks_up_other_nodes_devices(repos):
    import asyncio

    from tests.helpers.waiting import wait_until

    t = await repos.tenants.create("T")
    here = RegisteredDevices(repos.devices, full_reload_s=0.2)
    await here.load()
    presence = PresenceRegistry(is_known=here.__contains__)
    here.attach(presence)
    follower = asyncio.ensure_future(here.follow(0.05))
    try:
        other_node = DeviceRepository(repos.db)
        created = await other_node.create(t.id, "elsewhere")
        presence.set_online(created.id, True)
        await wait_until(lambda: presence.is_online(created.id), timeout=10)
        await other_node.delete(t.id, created.id)
        await wait_until(lambda: created.id not in here, timeout=10)  # the full reload
        assert not presence.is_online(created.id)
    finally:
        follower.cancel()


async def test_a_database_outage_while_following_is_two_log_lines(caplog):
    import asyncio
    import logging

    from fleetrpc.errors import StoreUnavailableError

    class Flaky:
        calls = 0

        async def all_ids(self):
            yield []

        async def ids_created_since(self, ms):
            Flaky.calls += 1
            if Flaky.calls <= 5:
                raise StoreUnavailableError("PostgreSQL is unavailable (connection refused)")
            return []

    here = RegisteredDevices(Flaky())
    await here.load()
    caplog.set_level(logging.INFO, logger="fleetrpc.server")
    follower = asyncio.ensure_future(here.follow(0.01))
    try:
        end = asyncio.get_running_loop().time() + 10
        while Flaky.calls < 8:
            assert asyncio.get_running_loop().time() < end
            await asyncio.sleep(0.01)
    finally:
        follower.cancel()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "fleetrpc.server"]
    assert [level for level, _ in lines] == ["WARNING", "INFO"], lines
