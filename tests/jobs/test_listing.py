"""GET /api/jobs: the page size is bounded lower than in the other
listings (1-1,000, the same messages), and so is what each listed job
weighs: a job's params (up to max_payload), its device ids (up to 100,000),
its abort criteria and its aggregate are shown in a listing only while they
are small (the ``abridged`` field names what was left out or cut).  GET
/api/job/{id} shows the whole job."""

from __future__ import annotations

import json
import time
import uuid

import msgspec
import pytest

from fleetrpc.jobs import JobStatus
from fleetrpc.jobs.aggregate import MAX_DISTINCT, MAX_FIELDS, add_reply
from fleetrpc.jobs.api import MAX_DEVICE_ROWS, MAX_LISTED_JOBS
from fleetrpc.jobs.model import LISTED_PART_BYTES, AbortCriterion, Job, JobSpec, Targets, abridge_job
from fleetrpc.store.db import open_database
from fleetrpc.store.jobs import JobRepository
from tests.jobs.test_api import submit
from tests.jobs.test_engine import TENANT, _spec, db_url  # noqa: F401 (fixture)

pytestmark = pytest.mark.mqtt

#: What one listed job may weigh at most, in bytes of JSON (its bounded
#: parts: ids and names of at most 255 characters, counts, times).
LISTED_JOB_MAX = 6 * LISTED_PART_BYTES


async def test_the_page_size_is_bounded(start_server, world):
    """1-10,000 as in every other listing; the jobs listing 1-1,000: a
    listed job may weigh LISTED_JOB_MAX, and 10,000 of them were a page of
    over 100 MiB; a job's device rows 1-1,000: a row holds its device's
    whole reply (max_payload)."""
    async with start_server() as (server, api):
        token = await api.login(world.tenant.email)
        job = await submit(api, token, {"targets": {"deviceIds": [world.dev_t1.id]}, "method": "getVersion"})
        job_id = job["id"]["id"]
        for path, most in (("/api/tenant/devices", 10_000), ("/api/jobs", MAX_LISTED_JOBS),
                           (f"/api/job/{job_id}/devices", MAX_DEVICE_ROWS)):
            status, raw, _ = await api.request("GET", f"{path}?pageSize={most + 1}&page=0", token)
            assert status == 400 and json.loads(raw)["message"] == f"Parameter 'pageSize' must be at most {most}", path
            status, raw, _ = await api.request("GET", f"{path}?pageSize={most}&page=0", token)
            assert status == 200, (path, raw)
        status, raw, _ = await api.request("GET", "/api/jobs?page=0", token)
        assert status == 400 and "'pageSize'" in json.loads(raw)["message"]
        assert MAX_LISTED_JOBS * LISTED_JOB_MAX <= 32 * 2**20


def test_the_heaviest_listed_job_stays_within_its_bound():
    """Every part at its largest, in the characters that weigh most in JSON
    (a control character is 6 bytes: ``\\u0001``).  Ten device ids of 255
    such characters were never cut (a list of at most 10 was kept whole):
    15 KiB of ids, a listed job of 26 KiB."""
    heavy = "\x01"
    agg: dict = {}  # the largest aggregate a listing shows: just under LISTED_PART_BYTES
    replies = ({f"{k:02d}".ljust(64, heavy): f"{i:02d}".ljust(64, heavy)}
               for k in range(MAX_FIELDS) for i in range(MAX_DISTINCT))
    for reply in replies:
        grown = msgspec.json.decode(msgspec.json.encode(agg))
        add_reply(grown, reply)
        if len(msgspec.json.encode(grown)) > LISTED_PART_BYTES:
            break
        agg = grown
    assert len(msgspec.json.encode(agg)) > LISTED_PART_BYTES - 512
    for ids in ([heavy * 255] * 10, [heavy * 255] * 3, [heavy * 255] * 11, [heavy * 40] * 17):
        spec = JobSpec(targets=Targets(device_ids=ids), method=heavy * 128,
                       params=heavy * (LISTED_PART_BYTES // 6 - 2), name=heavy * 255,
                       abort=[AbortCriterion(threshold_percentage=12.345678901234567, min_executed=2**62)] * 10)
        job = Job(id=str(uuid.uuid4()), tenant_id=TENANT, customer_id=str(uuid.uuid4()), created_by=str(uuid.uuid4()),
                  spec=spec, aggregate=agg, general_error=heavy * 255, created_time=2**62, start_ts=2**62,
                  finish_ts=2**62, cancellation_ts=2**62)
        listed = abridge_job(job)
        assert len(msgspec.json.encode(listed.to_json())) <= LISTED_JOB_MAX, len(ids)
        shown = listed.spec.targets.device_ids
        assert shown == ids[:len(shown)] and len(shown) >= 1
        assert len(msgspec.json.encode(shown)) <= LISTED_PART_BYTES
        assert ("configuration.targets.deviceIds" in listed.abridged) == (shown != ids)


async def test_a_listed_job_shows_large_parts_abridged(start_server, world):
    async with start_server() as (server, api):
        token = await api.login(world.tenant.email)
        big = "x" * 250_000  # under max_payload
        abort = [{"failureType": "ALL", "thresholdPercentage": 100, "minExecuted": i + 1} for i in range(10)]
        heavy = await submit(api, token, {"targets": {"deviceIds": [world.dev_t1.id]}, "method": "getVersion",
                                          "params": {"blob": big}, "abort": abort, "name": "heavy"})
        light = await submit(api, token, {"targets": {"deviceIds": [world.dev_t1.id]}, "method": "getVersion",
                                          "params": {"a": 1}, "name": "light"})
        status, raw, _ = await api.request("GET", f"/api/jobs?pageSize={MAX_LISTED_JOBS}&page=0", token)
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
