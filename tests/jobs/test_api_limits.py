"""The jobs REST API at its limits: input a single RPC would refuse, input
too large or too deep, and a cancel while calls are still in flight.  Each
case is a 400 that names the problem and stores nothing -- not a job
accepted and then failed device by device, not a 500, not a request that
hangs."""

from __future__ import annotations

import asyncio
import json

import pytest

from fleetrpc.errors import StoreUnavailableError
from fleetrpc.jobs import engine as engine_module
from tests.helpers.waiting import wait_until
from tests.jobs.fleet import until, until_finished
from tests.jobs.test_api import refused, rows, submit

pytestmark = pytest.mark.mqtt


async def test_what_a_call_or_the_registry_would_refuse_is_a_400_and_stores_nothing(start_server, world):
    async with start_server() as (server, api):
        token = await api.login(world.tenant.email)
        dev = world.dev_t1.id
        call = {"targets": {"deviceIds": [dev]}, "method": "getVersion"}
        persistent = {**call, "persistent": True}
        cases = [
            # the RPC API's limits on a call's options (every device failed with them)
            ({**call, "timeout": 10**13}, "timeout must be a positive number of milliseconds up to"),
            ({**persistent, "timeout": 10**13}, "timeout must be a positive number of milliseconds up to"),
            ({**persistent, "retries": 10**7}, "retries must be in [0, 1000000]"),
            # every outcome is checked against every criterion
            ({**call, "abort": [{"thresholdPercentage": 50}] * 11}, "abort holds at most 10 criteria, not 11"),
            ({**persistent, "expirationTime": -5}, "expirationTime must be epoch milliseconds"),
            ({**persistent, "expirationTime": 10**16}, "expirationTime must be epoch milliseconds"),
            ({**persistent, "method": "get\x00Version"}, "method cannot be stored: it contains the character U+0000"),
            ({**persistent, "params": {"a": "b\x00"}}, "params cannot be stored: it contains the character U+0000"),
            ({**call, "params": "x" * 300_000}, "over the limit of 262144 (max_payload)"),
            ({**persistent, "params": "x" * 300_000}, "over the limit of 262144 (max_payload)"),
            # a rate whose per-second value is 0.0: the pacer divided by it (job FAILED)
            ({**call, "rollout": {"maxPerMinute": 5e-324}}, "rollout.maxPerMinute must be in [0.001, 6000000]"),
            ({**call, "rollout": {"exponentialRate": {"basePerMinute": 5e-324, "incrementFactor": 2,
                                                      "everySucceeded": 1}}},
             "rollout.exponentialRate.basePerMinute must be in [0.001, 6000000]"),
            # selectors longer than any name, type or label (SQLite: GLOB pattern too complex, job FAILED)
            ({**call, "targets": {"namePattern": "*a" * 30_000}}, "targets.namePattern is longer than 255"),
            ({**call, "targets": {"deviceType": "t" * 256}}, "targets.deviceType is longer than 255"),
            ({**call, "targets": {"deviceIds": [dev, "d" * 256]}}, "targets.deviceIds holds an id longer than 255"),
            ({**call, "name": "n" * 256}, "name is longer than 255"),
        ]
        for body, fragment in cases:
            message = await refused(api, token, 400, body)
            assert fragment in message, (str(body)[:200], message)
        # params nested thousands deep: msgspec's RecursionError was a 500
        deep = (b'{"targets": {"deviceIds": ["%s"]}, "method": "getVersion", "params": ' % dev.encode()
                + b"[" * 5000 + b"]" * 5000 + b"}")
        assert await refused(api, token, 400, data=deep) == "invalid job: the JSON is nested too deeply"
        # one level past MAX_JSON_DEPTH (500), which msgspec alone decodes: the same on every Python
        past = (b'{"targets": {"deviceIds": ["%s"]}, "method": "getVersion", "params": ' % dev.encode()
                + b"[" * 500 + b"]" * 500 + b"}")
        assert await refused(api, token, 400, data=past) == "invalid job: the JSON is nested too deeply"

        # a chunked body (no Content-Length) over the jobs' 8 MiB limit
        async def chunked():
            yield b'{"targets": {"deviceIds": ["%s"]}, "method": "getVersion", "params": "' % dev.encode()
            for _ in range(9):
                yield b"x" * (1 << 20)
            yield b'"}'

        assert await refused(api, token, 400, data=chunked()) == "job body too large"
        status, raw, _ = await api.request("GET", "/api/jobs?pageSize=10&page=0", token)
        assert (status, json.loads(raw)["totalElements"]) == (200, 0)
        # the limits themselves are accepted, and the call is stored and waits
        job = await submit(api, token, {**persistent, "timeout": 10**12, "retries": 1_000_000,
                                        "expirationTime": 10**15, "name": "n" * 255,
                                        "rollout": {"maxPerMinute": 0.001}})
        job = await until(api, token, job["id"]["id"], lambda j: j["result"]["counts"]["inProgress"] == 1)
        page = await rows(api, token, job["id"]["id"], "pageSize=10&page=0&status=IN_PROGRESS")
        assert [r["deviceId"]["id"] for r in page["data"]] == [dev]
        await submit(api, token, {**call, "timeout": 10**12})
        status, raw, _ = await api.request("GET", "/api/jobs?pageSize=10&page=0", token)
        assert (status, json.loads(raw)["totalElements"]) == (200, 2)


async def test_cancel_answers_while_a_call_waits_for_an_offline_device(fleet_server, world, monkeypatch):
    monkeypatch.setattr(engine_module, "CANCEL_WAIT_S", 0.5)
    async with fleet_server() as (server, api, fleet):
        ids = fleet.ids
        token = await api.login(world.tenant.email)
        job = await submit(api, token, {"targets": {"deviceType": "pump"}, "method": "getVersion",
                                        "persistent": True, "timeout": 60_000})
        job_id = job["id"]["id"]
        # the two connected pumps answer; pump-3's call waits for it (up to a minute)
        await until(api, token, job_id, lambda j: j["result"]["counts"]["succeeded"] == 2)
        # the cancel answers (it waited for that call until it expired)
        status, raw, _ = await asyncio.wait_for(api.request("POST", f"/api/job/{job_id}/cancel", token), 10)
        assert status == 200, raw
        job = json.loads(raw)
        assert job["status"] == "RUNNING" and job["result"]["cancellationTs"] is not None
        assert job["result"]["counts"]["inProgress"] == 1
        # the call in flight ends as it would have, then the job is CANCELLED
        await fleet.connect(ids["pump-3"], {"fw": "2.1"})
        job = await until_finished(api, token, job_id)
        assert job["status"] == "CANCELLED"
        assert job["result"]["counts"]["succeeded"] == 3 and job["result"]["counts"]["skipped"] == 0
        page = await rows(api, token, job_id)
        assert {r["status"] for r in page["data"]} == {"SUCCEEDED"} and len(page["data"]) == 3


async def test_a_job_whose_end_could_not_be_stored_is_not_left_running(fleet_server, world, monkeypatch):
    monkeypatch.setattr(engine_module, "CANCEL_WAIT_S", 0.5)
    async with fleet_server() as (server, api, fleet):
        token = await api.login(world.tenant.email)
        repo = server.ctx.jobs.repo
        down = True

        def failing(method):
            async def write(*args, **kwargs):
                if down:
                    raise StoreUnavailableError("the database is down (test)")
                return await method(*args, **kwargs)
            return write

        # one device a minute: the first starts, the others wait
        job = await submit(api, token, {"targets": {"all": True}, "method": "getVersion",
                                        "rollout": {"maxPerMinute": 1}})
        job_id = job["id"]["id"]
        await until(api, token, job_id, lambda j: j["result"]["counts"]["queued"] == 7
                    and j["result"]["counts"]["inProgress"] == 0)
        # the database goes down as the job is cancelled: its end cannot be stored
        monkeypatch.setattr(repo, "record", failing(repo.record))
        monkeypatch.setattr(repo, "save", failing(repo.save))
        status, raw, _ = await asyncio.wait_for(api.request("POST", f"/api/job/{job_id}/cancel", token), 10)
        assert status == 200, raw
        await asyncio.sleep(0.3)
        down = False
        # once it is back, the job's end is stored (it was left RUNNING in the
        # store, with nothing running it, and could be neither cancelled nor
        # deleted until a restart)
        tenant_id = job["tenantId"]["id"]
        await wait_until(lambda: server.ctx.jobs._runs == {}, timeout=10)
        stored = await repo.get(tenant_id, job_id)
        assert stored.status.value == "CANCELLED" and stored.counts.skipped == 7
        job = await until_finished(api, token, job_id)
        assert job["status"] == "CANCELLED" and job["result"]["counts"]["skipped"] == 7
        status, raw, _ = await api.request("DELETE", f"/api/job/{job_id}", token)
        assert status == 200, raw


async def test_the_openapi_document_says_what_the_job_routes_answer(start_server, world):
    async with start_server() as (server, api):
        status, raw, _ = await api.request("GET", "/api/openapi.json")
        assert status == 200, raw
        paths = json.loads(raw)["paths"]
        for path, method in (("/api/job/{job_id}", "get"), ("/api/job/{job_id}", "delete"),
                             ("/api/job/{job_id}/cancel", "post"), ("/api/job/{job_id}/devices", "get")):
            assert "404" in paths[path][method]["responses"], (path, method)
        size = next(p for p in paths["/api/job/{job_id}/devices"]["get"]["parameters"] if p["name"] == "pageSize")
        assert size["description"] == "Rows per page (1-1000)"
        targets = json.loads(raw)["components"]["schemas"]["Targets"]["description"]
        assert "SQL" not in targets and "every other character matches" in targets
