"""The console's event streams follow a device to its new owner.

The hub remembers each device's (tenant, customer, name) to filter events
by customer; a device moved to another customer (or back to the tenant),
renamed, or left unassigned by its customer's deletion must not keep
sending its calls, their statuses and its presence to the old customer's
users.  On SQLite and PostgreSQL, through the REST routes that move a
device."""

from __future__ import annotations

import asyncio
import json

import pytest

from fleetrpc.store.entities import NULL_UUID, DeviceRepository
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.mqtt


class _Events:
    """What one event stream received, read in the background."""

    def __init__(self, resp) -> None:
        self.seen: list[dict] = []
        self._task = asyncio.ensure_future(self._read(resp))

    async def _read(self, resp) -> None:
        while True:
            line = await resp.content.readline()
            if not line:
                return
            if line.startswith(b"data: "):
                self.seen.append(json.loads(line[6:]))

    def saw(self, mark: str) -> bool:
        return any(mark in json.dumps(e) for e in self.seen)

    def close(self) -> None:
        self._task.cancel()


async def _call(api, token: str, device: str, mark: str) -> None:
    call = {"method": "m", "params": {"mark": mark}, "persistent": True}
    status, body, _ = await api.request("POST", f"/api/rpc/oneway/{device}", token, json=call)
    assert status == 200, body


MOVES = {
    # route -> (method, path, who owns the device after: "c2" or None)
    "owner": ("POST", "/api/owner/CUSTOMER/{c2}/DEVICE/{d}", "c2"),
    "assign": ("POST", "/api/customer/{c2}/device/{d}", "c2"),
    "unassign": ("DELETE", "/api/customer/device/{d}", None),
}


@pytest.mark.parametrize("route", sorted(MOVES))
async def test_a_moved_device_s_events_go_to_its_new_customer_only(start_server, world, route):
    async with start_server() as (server, api):
        ctx = server.ctx
        hub = ctx.console_hub
        tenant = await api.login(world.tenant.email)
        a = await api.login(world.customer.email)
        b = await api.login(world.customer2.email)
        dev = world.dev_c1.id
        async with api.session.get(f"{api.url}/api/console/events?token={a}") as ra, \
                api.session.get(f"{api.url}/api/console/events?token={b}") as rb, \
                api.session.get(f"{api.url}/api/console/events?token={tenant}") as rt:
            ea, eb, et = _Events(ra), _Events(rb), _Events(rt)
            try:
                await wait_until(lambda: len(hub.streams) == 3)
                await _call(api, tenant, dev, "before-move")
                await wait_until(lambda: ea.saw("before-move") and et.saw("before-move"))
                assert not eb.saw("before-move")

                method, path, after = MOVES[route]
                status, body, _ = await api.request(method, path.format(c2=world.c2, d=dev), tenant)
                assert status == 200, body
                owner = (await ctx.devices.get(world.t1, dev)).customer_id
                assert owner == (world.c2 if after == "c2" else NULL_UUID)

                await _call(api, tenant, dev, "after-move")
                await wait_until(lambda: et.saw("after-move"))  # the tenant administrator sees every call
                if after == "c2":
                    await wait_until(lambda: eb.saw("after-move"))
                await asyncio.sleep(0.2)  # what the hub had for A would have come with the tenant's
                assert not ea.saw("after-move"), [e for e in ea.seen if "after-move" in json.dumps(e)]
                assert eb.saw("after-move") == (after == "c2")
            finally:
                for e in (ea, eb, et):
                    e.close()


async def test_a_renamed_device_s_presence_carries_its_new_name(start_server, world):
    async with start_server() as (server, api):
        ctx = server.ctx
        hub = ctx.console_hub
        tenant = await api.login(world.tenant.email)
        dev = world.dev_c1.id
        async with api.session.get(f"{api.url}/api/console/events?token={tenant}") as rt:
            et = _Events(rt)
            try:
                await wait_until(lambda: len(hub.streams) == 1)
                await _call(api, tenant, dev, "cached")  # the hub now knows the device
                await wait_until(lambda: et.saw("cached"))
                await ctx.devices.update(world.t1, dev, name="Renamed C1")
                hub._on_presence(dev, True)
                await wait_until(lambda: any(e["type"] == "PRESENCE" for e in et.seen))
                presence = [e for e in et.seen if e["type"] == "PRESENCE"]
                assert presence[-1]["name"] == "Renamed C1"
            finally:
                et.close()


async def test_a_deleted_customer_s_devices_are_announced_unassigned(start_server, world):
    """The bulk unassignment of a customer's deletion reaches the device
    listeners (the hub, the RPC path's cache) like a single unassignment."""
    async with start_server() as (server, api):
        ctx = server.ctx
        heard: list = []
        ctx.devices.add_listener(heard.extend)
        tenant = await api.login(world.tenant.email)
        assert (await api.request("DELETE", f"/api/customer/{world.c1}", tenant))[0] == 200
        assert [(c.kind, c.device.id, c.device.customer_id) for c in heard] == [
            ("assigned", world.dev_c1.id, NULL_UUID)]
        assert (await ctx.devices.get(world.t1, world.dev_c1.id)).customer_id == NULL_UUID


async def test_another_node_s_move_reaches_the_hub_within_its_ttl(start_server, world):
    """A device moved by another node (no listener of this node's hears
    it): the hub asks the database again once its entry is older than
    ``owner_ttl_s``, as the RPC path's device cache does."""
    async with start_server() as (server, api):
        ctx = server.ctx
        hub = ctx.console_hub
        now = [1000.0]
        hub._clock = lambda: now[0]
        dev = world.dev_c1.id
        assert (await hub._owner(dev))[1] == world.c1
        await DeviceRepository(ctx.db).assign(world.t1, dev, world.c2)  # "another node"
        assert (await hub._owner(dev))[1] == world.c1  # still remembered
        now[0] += hub.owner_ttl_s + 0.1
        assert (await hub._owner(dev))[1] == world.c2
