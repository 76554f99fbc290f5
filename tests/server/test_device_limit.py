"""``store.max_devices_per_tenant``: ThingsBoard's tenant-profile
``maxDevices``, held in the one place every device is made
(``DeviceRepository.create``): the repository on both databases, the REST
API's 403 "Devices limit reached" (errorCode 41), a gateway announcing new
names on the device endpoint, and concurrent creates on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import pytest

from fleetrpc.config import load_server_settings
from fleetrpc.errors import EntitiesLimitExceededError, ValidationError
from fleetrpc.store.db import PostgresDatabase
from fleetrpc.store.entities import DeviceRepository, TenantRepository
from tests.helpers.waiting import wait_until
from tests.server.conftest import sqlite_url, start_server, store_url, world  # noqa: F401 (fixtures)
from tests.services import drop_pg_schema

from ..endpoint import rawmqtt as raw

# -- the repository -----------------------------------------------------------------------


async def test_the_repository_refuses_a_device_past_the_tenants_limit(edb):
    devices = DeviceRepository(edb, max_devices_per_tenant=2)
    tenants = TenantRepository(edb, devices=devices)
    t1, t2 = await tenants.create("T1"), await tenants.create("T2")
    await devices.create(t1.id, "a")
    await devices.create(t1.id, "b")
    with pytest.raises(EntitiesLimitExceededError, match="^Devices limit reached$") as caught:
        await devices.create(t1.id, "c", access_token="token-c")
    assert (caught.value.entity_type, caught.value.limit) == ("DEVICE", 2)
    assert isinstance(caught.value, ValidationError)  # as ThingsBoard's is a DataValidationException
    # nothing of it was stored, its token neither
    assert await devices.count(t1.id) == 2
    assert await devices.by_name(t1.id, "c") is None and await devices.by_token("token-c") is None
    # per tenant
    await devices.create(t2.id, "c")
    # a place freed is a place taken again; changing a device is no create
    await devices.delete(t1.id, (await devices.by_name(t1.id, "a")).id)
    c = await devices.create(t1.id, "c")
    await devices.update(t1.id, c.id, name="c2")
    await devices.set_credentials(t1.id, c.id, "token-c2")
    with pytest.raises(EntitiesLimitExceededError):
        await devices.create(t1.id, "d")
    # 0: no limit (the default)
    unlimited = DeviceRepository(edb)
    for k in range(5):
        await unlimited.create(t1.id, f"u{k}")
    assert await unlimited.count(t1.id) == 7


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_the_limit_is_a_whole_number(bad):
    with pytest.raises(ValueError):
        DeviceRepository(object(), max_devices_per_tenant=bad)


def test_the_setting_reaches_the_servers_repository_by_its_environment_variable():
    settings = load_server_settings(env={"FLEETRPC_STORE_MAX_DEVICES_PER_TENANT": "25"})
    assert settings.store.max_devices_per_tenant == 25
    assert load_server_settings(env={}).store.max_devices_per_tenant == 0
    with pytest.raises(ValidationError, match="store.max_devices_per_tenant"):
        load_server_settings(env={"FLEETRPC_STORE_MAX_DEVICES_PER_TENANT": "-1"})


@pytest.mark.pg
async def test_concurrent_creates_on_postgresql_never_pass_the_limit(pg_dsn):
    """Many connections create devices of one tenant at once: without the
    tenant's row lock each would count the others' uncommitted devices as
    absent and they would all pass."""
    schema = f"e_{uuid.uuid4().hex[:16]}"
    db = PostgresDatabase(pg_dsn, schema=schema, max_size=24)
    await db.open()
    try:
        devices = DeviceRepository(db, max_devices_per_tenant=5)
        tenants = TenantRepository(db, devices=devices)
        for round_ in range(3):
            t = await tenants.create(f"T{round_}")
            await devices.create(t.id, "first")  # (the pool's connections warm)
            results = await asyncio.gather(*(devices.create(t.id, f"d{k}") for k in range(24)),
                                           return_exceptions=True)
            made = [r for r in results if not isinstance(r, BaseException)]
            refused = [r for r in results if isinstance(r, EntitiesLimitExceededError)]
            assert len(made) == 4 and len(refused) == 20, results
            assert await devices.count(t.id) == 5
    finally:
        await db.close()
        drop_pg_schema(pg_dsn, schema)


# -- the REST API -------------------------------------------------------------------------


async def test_rest_creation_past_the_limit_answers_thingsboards_403(start_server, world):
    # tenant 1 has three devices (the world's), tenant 2 one
    async with start_server(store={"max_devices_per_tenant": 4}) as (server, api):
        admin = await api.login(world.tenant.email)
        status, body, _ = await api.request("POST", "/api/device", admin, json={"name": "Fourth"})
        assert status == 200, body
        for path, payload in (("/api/device", {"name": "Fifth"}),
                              ("/api/device-with-credentials",
                               {"device": {"name": "Fifth"},
                                "credentials": {"credentialsType": "ACCESS_TOKEN", "credentialsId": "fifth-token"}})):
            status, body, response = await api.request("POST", path, admin, json=payload)
            assert status == 403, body
            assert response.content_type == "application/json"
            answer = json.loads(body)
            assert isinstance(answer.pop("timestamp"), int)
            assert answer == {"status": 403, "message": "Devices limit reached", "errorCode": 41,
                              "entityType": "DEVICE", "limit": 4}
        status, _, _ = await api.request("GET", "/api/tenant/device?deviceName=Fifth", admin)
        assert status == 404
        # updating a device at the limit is no create
        status, body, _ = await api.request("GET", f"/api/device/{world.dev_t1.id}", admin)
        device = json.loads(body)
        status, body, _ = await api.request("POST", "/api/device", admin, json={**device, "label": "kept"})
        assert status == 200, body
        # the other tenant has its own count
        other = await api.login(world.tenant2.email)
        status, body, _ = await api.request("POST", "/api/device", other, json={"name": "Second"})
        assert status == 200, body


# -- a gateway on the device endpoint -----------------------------------------------------


ENDPOINT = {"enabled": True, "host": "127.0.0.1", "port": 0}


async def _gateway(api, admin: str, ctx, name: str, subscription: tuple[str, int]):
    """A gateway device made through REST, connected to the endpoint and
    subscribed to ``subscription``: its client and its session."""
    status, body, _ = await api.request("POST", "/api/device", admin,
                                        json={"name": name, "additionalInfo": {"gateway": True}})
    assert status == 200, body
    gw_id = json.loads(body)["id"]["id"]
    status, body, _ = await api.request("GET", f"/api/device/{gw_id}/credentials", admin)
    gw = await raw.RawClient.open(ctx.endpoint.ports["tcp"])
    assert (await gw.connect(json.loads(body)["credentialsId"], client_id=name))[1] == b"\x00\x00"
    gw.send(raw.subscribe(1, subscription))
    await gw.read_packet()  # SUBACK
    return gw, ctx.endpoint.sessions_of(gw_id)[0]


@pytest.mark.mqtt
async def test_a_gateway_cannot_create_devices_past_the_limit(start_server, world, caplog):
    # tenant 1: the world's three devices, the gateway, and room for one more
    async with start_server(endpoint=ENDPOINT, store={"max_devices_per_tenant": 5}) as (server, api):
        ctx = server.ctx
        admin = await api.login(world.tenant.email)
        gw, session = await _gateway(api, admin, ctx, "Gateway L", ("v1/gateway/rpc", 1))
        try:
            directory = ctx.endpoint_directory
            gw.send(raw.publish("v1/gateway/connect", b'{"device": "Meter 1"}'))
            await wait_until(lambda: "Meter 1" in (session.subdevices or {}), timeout=20)
            assert directory.created == 1
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="fleetrpc.endpoint"):
                gw.send(raw.publish("v1/gateway/connect", b'{"device": "Meter 2"}'))
                await wait_until(lambda: directory.over_limit == 1, timeout=20)
                # a device that exists is bound at the limit too: no create
                gw.send(raw.publish("v1/gateway/connect", json.dumps({"device": world.dev_t1.name}).encode()))
                await wait_until(lambda: world.dev_t1.name in (session.subdevices or {}), timeout=20)
                # many names past the limit (a gateway reconnecting with its
                # fleet): refused alike, but logged in a summary, not a line each
                for i in range(3, 40):
                    gw.send(raw.publish("v1/gateway/connect", json.dumps({"device": f"Meter {i}"}).encode()))
                await wait_until(lambda: directory.over_limit == 38, timeout=20)
            refusals = [r for r in caplog.records if "'Meter 2'" in r.getMessage()]
            assert [r.levelno for r in refusals] == [logging.WARNING], refusals
            assert "limit of 5 devices" in refusals[0].getMessage()
            lines = [r for r in caplog.records if "limit of 5 devices" in r.getMessage()]
            assert len(lines) == 1, [r.getMessage() for r in lines]
            assert set(session.subdevices) == {"Meter 1", world.dev_t1.name}
            assert directory.created == 1
            status, _, _ = await api.request("GET", "/api/tenant/device?deviceName=Meter%202", admin)
            assert status == 404
            status, body, _ = await api.request("GET", "/api/tenant/devices?pageSize=100&page=0", admin)
            assert json.loads(body)["totalElements"] == 5
        finally:
            gw.close()


async def _answer(client: raw.RawClient) -> tuple[str, bytes]:
    """The next PUBLISH (QoS 0, MQTT 3.1.1): its topic and payload."""
    first, body = await client.read_packet(timeout=20)
    assert first >> 4 == 3, (first, body)
    topic, payload, _ = raw.publish_topic(body, 0, False)
    return topic, payload


@pytest.mark.mqtt
async def test_a_gateways_attribute_request_is_an_announcement_held_to_the_limit(start_server, world):
    """ThingsBoard gets or creates the device a gateway asks attributes of
    (its onDeviceConnect); at the tenant's limit nothing is created, nothing
    bound, and no answer comes: never one for a name the gateway does not
    hold."""
    async with start_server(endpoint=ENDPOINT, store={"max_devices_per_tenant": 5}) as (server, api):
        ctx = server.ctx
        admin = await api.login(world.tenant.email)
        gw, session = await _gateway(api, admin, ctx, "Gateway A", ("v1/gateway/attributes/response", 0))
        try:
            directory = ctx.endpoint_directory
            # room for one: created, bound, answered
            gw.send(raw.publish("v1/gateway/attributes/request",
                                b'{"id": 1, "device": "Meter 1", "client": false, "key": "k"}'))
            topic, payload = await _answer(gw)
            assert (topic, json.loads(payload)) == ("v1/gateway/attributes/response", {"id": 1, "device": "Meter 1"})
            assert "Meter 1" in session.subdevices and directory.created == 1
            # at the limit: a new name is refused, silently for the gateway
            gw.send(raw.publish("v1/gateway/attributes/request",
                                b'{"id": 2, "device": "Meter 2", "client": false, "key": "k"}'))
            await wait_until(lambda: directory.over_limit == 1, timeout=20)
            # the next answer is for a name it holds: none came for Meter 2
            gw.send(raw.publish("v1/gateway/attributes/request",
                                b'{"id": 3, "device": "Meter 1", "client": false, "key": "k"}'))
            topic, payload = await _answer(gw)
            assert json.loads(payload) == {"id": 3, "device": "Meter 1"}
            assert set(session.subdevices) == {"Meter 1"}
            status, _, _ = await api.request("GET", "/api/tenant/device?deviceName=Meter%202", admin)
            assert status == 404
        finally:
            gw.close()
