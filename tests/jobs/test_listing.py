"""GET /api/jobs: the page size is bounded as in every other listing
(1-10,000, the same messages), and so is what each listed job weighs: a
job's params (up to max_payload), its device ids (up to 100,000), its abort
criteria and its aggregate are shown in a listing only while they are small
(the ``abridged`` field names what was left out or cut).  GET
/api/job/{id} shows the whole job."""

from __future__ import annotations

import json
import time
import uuid

import msgspec
import pytest

from fleetrpc.jobs import JobStatus
from fleetrpc.jobs.model import LISTED_PART_BYTES, Job, abridge_job
from fleetrpc.store.db import open_database
from fleetrpc.store.jobs import JobRepository
from tests.jobs.test_api import submit
from tests.jobs.test_engine import TENANT, _spec, db_url  # noqa: F401 (fixture)

pytestmark = pytest.mark.mqtt

#: What one listed job may weigh at most, in bytes of JSON (its bounded
#: parts: ids and names of at most 255 characters, counts, times).
LISTED_JOB_MAX = 6 * LISTED_PART_BYTES


async def test_the_page_size_is_bounded_as_in_the_other_listings(start_server, world):
    async with start_server() as (server, api):
        token = await api.login(world.tenant.email)
        job = await submit(api, token, {"targets": {"deviceIds": [world.dev_t1.id]}, "method": "getVersion"})
        job_id = job["id"]["id"]
        for path in ("/api/tenant/devices", "/api/jobs", f"/api/job/{job_id}/devices"):
            status, raw, _ = await api.request("GET", f"{path}?pageSize=10001&page=0", token)
            assert status == 400 and json.loads(raw)["message"] == "Parameter 'pageSize' must be at most 10000", path
            status, raw, _ = await api.request("GET", f"{path}?pageSize=10000&page=0", token)
            assert status == 200, (path, raw)
        status, raw, _ = await api.request("GET", "/api/jobs?page=0", token)
        assert status == 400 and "'pageSize'" in json.loads(raw)["message"]


async def test_a_listed_job_shows_large_parts_abridged(start_server, world):
    async with start_server() as (server, api):
        token = await api.login(world.tenant.email)
        big = "x" * 250_000  # under max_payload
        abort = [{"failureType": "ALL", "thresholdPercentage": 100, "minExecuted": i + 1} for i in range(10)]
        heavy = await submit(api, token, {"targets": {"deviceIds": [world.dev_t1.id]}, "method": "getVersion",
                                          "params": {"blob": big}, "abort": abort, "name": "heavy"})
        light = await submit(api, token, {"targets": {"deviceIds": [world.dev_t1.id]}, "method": "getVersion",
                                          "params": {"a": 1}, "name": "light"})
        status, raw, _ = await api.request("GET", "/api/jobs?pageSize=10000&page=0", token)
        assert status == 200
        listed = {j["key"]: j for j in json.loads(raw)["data"]}
        for job in listed.values():
            assert len(msgspec.json.encode(job)) <= LISTED_JOB_MAX, job["key"]
        assert listed["heavy"]["abridged"] == ["configuration.params"]
        assert "params" not in listed["heavy"]["configuration"]
        assert listed["heavy"]["configuration"]["abort"] == abort  # at most 10: never cut
        assert "abridged" not in listed["light"] and listed["light"]["configuration"]["params"] == {"a": 1}
        # the job itself shows them whole
        status, raw, _ = await api.request("GET", f"/api/job/{heavy['id']['id']}", token)
        whole = json.loads(raw)
        assert whole["configuration"]["params"] == {"blob": big} and whole["configuration"]["abort"] == abort
        assert "abridged" not in whole
        assert light["id"]["id"] in {j["id"]["id"] for j in listed.values()}


async def test_the_repository_lists_large_jobs_abridged(db_url):  # noqa: F811
    """A job of 5,000 device ids and a large aggregate, as stored: the
    listing reads neither whole into the page (the spec alone, then cut;
    the aggregate not at all)."""
    db = await open_database(db_url)
    try:
        repo = JobRepository(db)
        ids = [f"device-{i:05d}-{uuid.uuid4()}" for i in range(5000)]
        aggregate = {f"k{i}": {"count": 1, "values": {"v" * 60 + str(j): 1 for j in range(32)}, "overflow": False}
                     for i in range(16)}
        job = Job(id=str(uuid.uuid4()), tenant_id=TENANT, customer_id=None, created_by=None, spec=_spec(ids),
                  status=JobStatus.COMPLETED, aggregate=aggregate, created_time=int(time.time() * 1000))
        await repo.insert(job)
        await repo.save(job)
        (listed,), total = await repo.list(TENANT, 10_000, 0)
        assert total == 1
        assert listed.abridged == ("result.aggregate", "configuration.targets.deviceIds")
        assert listed.spec.targets.device_ids == ids[:10] and listed.aggregate == {}
        assert len(msgspec.json.encode(listed.to_json())) <= LISTED_JOB_MAX
        whole = await repo.get(TENANT, job.id)
        assert whole.spec.targets.device_ids == ids and whole.aggregate == aggregate and not whole.abridged
        # a running job's live view is abridged the same way
        assert abridge_job(whole).abridged == ("configuration.targets.deviceIds", "result.aggregate")
    finally:
        await db.close()
