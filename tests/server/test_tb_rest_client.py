"""ThingsBoard's own Python REST client (tb-rest-client) drives the server:
login, two-way RPC (v1 and v2), a persistent call and reading it back."""

from __future__ import annotations

import asyncio

import pytest
from tb_rest_client.rest import ApiException
from tb_rest_client.rest_client import RestClient

from fleetrpc.device import DeviceClient
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.mqtt


def _session(url: str, email: str, device_id: str) -> dict:
    client = RestClient(base_url=url)
    client.login(username=email, password="secret")
    out = {
        "v1": client.handle_two_way_device_rpc_request(device_id, {"method": "echo", "params": {"v": 1}}),
        "v2": client.handle_two_way_device_rpc_request_v1(device_id, {"method": "echo", "params": {"v": 2}}),
    }
    persisted = client.handle_two_way_device_rpc_request_v1(
        device_id, {"method": "echo", "params": {"v": 3}, "persistent": True})
    out["rpc_id"] = persisted["rpcId"]
    try:
        client.handle_two_way_device_rpc_request_v1("8a7e4f10-0000-4000-8000-000000000000", {"method": "echo"})
    except ApiException as exc:
        out["unknown"] = exc.status
    client.stop()
    return out


async def test_thingsboard_rest_client(start_server, world, mqtt_url):
    async with start_server() as (server, api):
        ctx = server.ctx
        dev = DeviceClient(world.dev_c1.id, mqtt_url)
        dev.add_method("echo", lambda p: p)
        await dev.connect()
        try:
            await wait_until(lambda: ctx.dispatcher.is_online(dev.device_id))
            out = await asyncio.to_thread(_session, ctx.url, world.customer.email, dev.device_id)
            assert out["v1"] == {"v": 1} and out["v2"] == {"v": 2} and out["unknown"] == 404
            record = await ctx.engine.wait(out["rpc_id"], 10)
            assert (record.status.value, record.response) == ("SUCCESSFUL", {"v": 3})
        finally:
            await dev.close()
