"""A small fleet for the jobs tests through the real server: devices of
several types, labels and owners, created through the REST device API and
connected to the broker as real devices.

Tenant 1 (the World's tenant), besides the World's three devices:

    name     type   label  owner        on the broker  answers getVersion
    pump-1   pump   north  customer 1   yes            {"fw": "2.0"}
    pump-2   pump   south  customer 2   yes            {"fw": "2.0"}
    pump-3   pump   north  -            no (OFFLINE)
    valve-1  valve  north  customer 1   yes            an error (FAILED)
    pumpx1   other  -      -            yes            {"fw": "1.0"}

The World's ``Device C1``, ``Device C2`` and ``Device T1`` (type ``default``)
are connected and answer ``{"fw": "1.0"}``.  Tenant 2 has ``pump-1`` too
(type pump, label north, connected): no job of tenant 1 may reach it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fleetrpc.device import DeviceClient
from tests.helpers.waiting import wait_until

TERMINAL = ("COMPLETED", "ABORTED", "CANCELLED", "FAILED")


class Fleet:
    """The devices above on one running server; ``ids[name]`` is a device's
    id (``other_pump`` is tenant 2's ``pump-1``)."""

    def __init__(self, server: Any, api: Any, world: Any, mqtt_url: str) -> None:
        self.server = server
        self.api = api
        self.world = world
        self.mqtt_url = mqtt_url
        self.ids: dict[str, str] = {
            "Device C1": world.dev_c1.id, "Device C2": world.dev_c2.id, "Device T1": world.dev_t1.id,
        }
        self.clients: list[DeviceClient] = []
        #: The params of every call each connected device answered.
        self.calls: dict[str, list] = {}
        self.other_pump = ""

    async def build(self) -> "Fleet":
        api, w = self.api, self.world
        tenant = await api.login(w.tenant.email)
        tenant2 = await api.login(w.tenant2.email)
        for name, type_, label, customer in (
            ("pump-1", "pump", "north", w.c1), ("pump-2", "pump", "south", w.c2),
            ("pump-3", "pump", "north", None), ("valve-1", "valve", "north", w.c1),
            ("pumpx1", "other", None, None),
        ):
            self.ids[name] = await self.create(tenant, name, type_, label, customer)
        self.other_pump = await self.create(tenant2, "pump-1", "pump", "north", None)
        for name in ("pump-1", "pump-2", "pumpx1", "Device C1", "Device C2", "Device T1"):
            await self.connect(self.ids[name], {"fw": "2.0" if name.startswith("pump-") else "1.0"})
        await self.connect(self.ids["valve-1"], None)
        await self.connect(self.other_pump, {"fw": "9.9"})
        return self

    async def create(self, token: str, name: str, type_: str, label: str | None, customer: str | None) -> str:
        body: dict[str, Any] = {"name": name, "type": type_, "label": label}
        if customer is not None:
            body["customerId"] = {"entityType": "CUSTOMER", "id": customer}
        status, raw, _ = await self.api.request("POST", "/api/device", token, json=body)
        assert status == 200, raw
        device = json.loads(raw)
        assert device["customerId"]["id"] == (customer or "13814000-1dd2-11b2-8080-808080808080")
        return device["id"]["id"]

    async def connect(self, device_id: str, version: dict | None) -> DeviceClient:
        """A device that answers ``getVersion`` with ``version`` (None: an error)."""
        dev = DeviceClient(device_id, self.mqtt_url)

        def get_version(params: Any) -> Any:
            self.calls.setdefault(device_id, []).append(params)
            if version is None:
                raise RuntimeError("flash is worn out")
            return version

        dev.add_method("getVersion", get_version)
        await dev.connect()
        self.clients.append(dev)
        await wait_until(lambda: self.server.ctx.dispatcher.is_online(device_id))
        return dev

    async def close(self) -> None:
        for dev in self.clients:
            await dev.close()


async def job_of(api: Any, token: str, job_id: str) -> dict:
    status, raw, _ = await api.request("GET", f"/api/job/{job_id}", token)
    assert status == 200, raw
    return json.loads(raw)


async def until_finished(api: Any, token: str, job_id: str, timeout: float = 20.0) -> dict:
    """Poll ``GET /api/job/{id}`` until the job has ended; returns it."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        job = await job_of(api, token, job_id)
        if job["status"] in TERMINAL:
            return job
        assert loop.time() < end, f"job still {job['status']}: {job['result']['counts']}"
        await asyncio.sleep(0.02)


async def until(api: Any, token: str, job_id: str, predicate, timeout: float = 20.0) -> dict:
    """Poll ``GET /api/job/{id}`` until ``predicate(job)``; returns it."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        job = await job_of(api, token, job_id)
        if predicate(job):
            return job
        assert loop.time() < end, f"condition not reached: {job['status']} {job['result']['counts']}"
        await asyncio.sleep(0.02)
