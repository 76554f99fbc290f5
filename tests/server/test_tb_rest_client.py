"""ThingsBoard's own Python REST client (tb-rest-client) drives the server:
login, two-way RPC (v1 and v2), a persistent call and reading it back;
creating devices and reading their credentials."""

from __future__ import annotations

import asyncio

import pytest
from tb_rest_client.models.device import Device
from tb_rest_client.models.device_credentials import DeviceCredentials
from tb_rest_client.models.save_device_with_credentials_request import SaveDeviceWithCredentialsRequest
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
            record = await ctx.engine.wait(out["rpc_id"], 10, tenant_id=world.t1)
            assert (record.status.value, record.response) == ("SUCCESSFUL", {"v": 3})
        finally:
            await dev.close()


def _devices(url: str, email: str) -> dict:
    """A tenant administrator's session: create devices, read their
    credentials, change a token, list, delete -- all through the client's
    own models."""
    client = RestClient(base_url=url)
    client.login(username=email, password="secret")
    out: dict = {}
    made = client.save_device(Device(name="TB client device", type="thermostat", label="hall"),
                              access_token="TB_CLIENT_TOKEN")
    out["made"] = made
    creds = client.get_device_credentials_by_device_id(made.id)
    out["creds"] = (creds.credentials_type, creds.credentials_id)
    with_creds = client.save_device_with_credentials(SaveDeviceWithCredentialsRequest(
        device=Device(name="TB client device 2"),
        credentials=DeviceCredentials(credentials_type="ACCESS_TOKEN", credentials_id="TB_CLIENT_TOKEN_2")))
    out["with_creds"] = client.get_device_credentials_by_device_id(with_creds.id)
    creds.credentials_id = "TB_CLIENT_TOKEN_3"
    out["changed"] = client.device_controller.update_device_credentials(body=creds)
    out["page"] = client.get_tenant_devices(page_size=10, page=0, type="thermostat")
    out["got"] = client.get_device_by_id(made.id)
    client.delete_device(with_creds.id)
    try:
        client.get_device_by_id(with_creds.id)
    except ApiException as exc:
        out["deleted"] = exc.status
    client.stop()
    return out


async def test_thingsboard_rest_client_devices(start_server, world):
    async with start_server() as (server, api):
        out = await asyncio.to_thread(_devices, server.ctx.url, world.tenant.email)
        made = out["made"]
        assert (made.name, made.type, made.label) == ("TB client device", "thermostat", "hall")
        assert made.tenant_id.id == world.t1 and made.id.entity_type == "DEVICE"
        assert out["creds"] == ("ACCESS_TOKEN", "TB_CLIENT_TOKEN")
        assert out["with_creds"].credentials_id == "TB_CLIENT_TOKEN_2"
        assert out["changed"].credentials_id == "TB_CLIENT_TOKEN_3"
        assert (await server.ctx.devices.by_token("TB_CLIENT_TOKEN_3")).id == made.id.id
        assert [d.name for d in out["page"].data] == ["TB client device"] and out["page"].total_elements == 1
        assert out["got"].id.id == made.id.id
        assert out["deleted"] == 404
