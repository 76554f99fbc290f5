"""The jobs REST API through the real server: real HTTP, real devices on a
real broker, the registry's selectors on SQLite and on PostgreSQL, each
role's rights, bad input, cancel, delete and the lists.  (The engine's own
behaviour -- rate, abort, restarts -- is tests/jobs/test_engine.py's.)"""

from __future__ import annotations

import json
import uuid

import pytest

from tests.jobs.fleet import job_of, until, until_finished

pytestmark = pytest.mark.mqtt

NO_PERMISSION = "You don't have permission to perform this operation!"


async def submit(api, token: str, body: dict) -> dict:
    status, raw, _ = await api.request("POST", "/api/jobs", token, json=body)
    assert status == 200, raw
    return json.loads(raw)


async def refused(api, token: str, expected: int, body=None, *, data: bytes | None = None,
                  method: str = "POST", path: str = "/api/jobs") -> str:
    """The request is refused with ``expected``; returns the error's message."""
    headers = {"Content-Type": "application/json"} if data is not None else None
    status, raw, _ = await api.request(method, path, token, json=body, data=data, headers=headers)
    assert status == expected, raw
    error = json.loads(raw)
    assert error["status"] == expected
    return error["message"]


async def rows(api, token: str, job_id: str, query: str = "pageSize=100&page=0") -> dict:
    status, raw, _ = await api.request("GET", f"/api/job/{job_id}/devices?{query}", token)
    assert status == 200, raw
    return json.loads(raw)


async def outcomes(api, token: str, job_id: str) -> dict[str, str]:
    """``{device id: outcome}`` of every per-device row of the job."""
    page = await rows(api, token, job_id)
    assert page["totalElements"] == len(page["data"]) and not page["hasNext"]
    return {r["deviceId"]["id"]: r["status"] for r in page["data"]}


def check_counters(job: dict, expected: dict[str, str]) -> None:
    """ThingsBoard's counters and the counts per outcome agree with the rows."""
    r = job["result"]
    n = {o: list(expected.values()).count(o) for o in ("SUCCEEDED", "FAILED", "TIMED_OUT", "OFFLINE")}
    assert r["totalCount"] == len(expected)
    assert r["successfulCount"] == n["SUCCEEDED"]
    assert r["failedCount"] == n["FAILED"] + n["TIMED_OUT"] + n["OFFLINE"]
    assert r["discardedCount"] == 0
    c = r["counts"]
    assert (c["total"], c["succeeded"], c["failed"], c["timedOut"], c["offline"]) == (
        len(expected), n["SUCCEEDED"], n["FAILED"], n["TIMED_OUT"], n["OFFLINE"])
    assert c["queued"] == c["inProgress"] == c["skipped"] == c["cancelled"] == 0


async def test_each_selector_reaches_exactly_the_matching_devices_of_the_tenant(fleet_server, world):
    async with fleet_server() as (server, api, fleet):
        ids = fleet.ids
        token = await api.login(world.tenant.email)
        ok, failed, offline = "SUCCEEDED", "FAILED", "OFFLINE"
        cases = [
            ({"deviceIds": [ids["pump-1"], ids["Device T1"]]}, {"pump-1": ok, "Device T1": ok}),
            ({"deviceType": "pump"}, {"pump-1": ok, "pump-2": ok, "pump-3": offline}),
            ({"label": "north"}, {"pump-1": ok, "pump-3": offline, "valve-1": failed}),
            ({"namePattern": "pump-*"}, {"pump-1": ok, "pump-2": ok, "pump-3": offline}),
            ({"namePattern": "*-1"}, {"pump-1": ok, "valve-1": failed}),
            ({"namePattern": "pump_*"}, {}),  # SQL's _ is no wildcard here
            ({"namePattern": "PUMP-*"}, {}),  # names match case-sensitively, as types and labels
            ({"customerId": world.c1}, {"Device C1": ok, "pump-1": ok, "valve-1": failed}),
            ({"all": True}, {"Device C1": ok, "Device C2": ok, "Device T1": ok, "pump-1": ok, "pump-2": ok,
                             "pump-3": offline, "valve-1": failed, "pumpx1": ok}),
        ]
        jobs = [await submit(api, token, {"targets": targets, "method": "getVersion", "params": {"n": i},
                                          "timeout": 10000})
                for i, (targets, _) in enumerate(cases)]
        for job, (targets, by_name) in zip(jobs, cases):
            assert job["status"] in ("QUEUED", "RUNNING", "COMPLETED")
            assert job["configuration"]["targets"] == targets
            job = await until_finished(api, token, job["id"]["id"])
            expected = {ids[name]: outcome for name, outcome in by_name.items()}
            assert job["status"] == "COMPLETED", (targets, job)
            assert await outcomes(api, token, job["id"]["id"]) == expected, targets
            check_counters(job, expected)
        # tenant 2's pump was never called; every other connected device once
        # per job that named it
        assert fleet.other_pump not in fleet.calls
        assert len(fleet.calls[ids["pump-1"]]) == 7 and fleet.calls[ids["pumpx1"]] == [{"n": 8}]

        # the per-device rows of the `all` job: a row each, with its outcome
        everything = jobs[-1]["id"]["id"]
        job = await job_of(api, token, everything)
        assert job["result"]["aggregate"]["fw"]["values"] == {"2.0": 2, "1.0": 4}
        page = await rows(api, token, everything, f"pageSize=100&page=0&status={offline}")
        assert [(r["deviceId"]["id"], r["status"], r["error"] is not None) for r in page["data"]] == [
            (ids["pump-3"], offline, True)]
        page = await rows(api, token, everything, "pageSize=100&page=0&status=failed")
        assert [r["deviceId"]["id"] for r in page["data"]] == [ids["valve-1"]]
        assert "flash is worn out" in page["data"][0]["error"]
        page = await rows(api, token, everything, "pageSize=100&page=0&status=SUCCEEDED")
        assert page["totalElements"] == 6
        assert {r["deviceId"]["id"]: r["result"] for r in page["data"]} == {
            ids[n]: {"fw": "2.0" if n.startswith("pump-") else "1.0"}
            for n in ("Device C1", "Device C2", "Device T1", "pump-1", "pump-2", "pumpx1")}
        # paging: 8 rows in device order, 3 a page
        seen = []
        for number, has_next in ((0, True), (1, True), (2, False)):
            page = await rows(api, token, everything, f"pageSize=3&page={number}")
            assert (page["totalElements"], page["totalPages"], page["hasNext"]) == (8, 3, has_next)
            assert len(page["data"]) == (3 if has_next else 2)
            seen += [r["deviceId"]["id"] for r in page["data"]]
        assert seen == sorted(ids[n] for n in cases[-1][1])
        assert (await rows(api, token, everything, "pageSize=3&page=3"))["data"] == []

        # each row names its device as the registry does now; a device
        # deleted since keeps its row, with no name
        named = {r["deviceId"]["id"]: r["deviceName"] for r in (await rows(api, token, everything))["data"]}
        assert named == {ids[n]: n for n in cases[-1][1]}
        status, raw, _ = await api.request("DELETE", f"/api/device/{ids['pump-3']}", token)
        assert status == 200, raw
        named = {r["deviceId"]["id"]: r["deviceName"] for r in (await rows(api, token, everything))["data"]}
        assert named[ids["pump-3"]] is None and named[ids["pump-1"]] == "pump-1" and len(named) == 8


async def test_a_customer_user_reaches_and_sees_only_its_customer(fleet_server, world):
    async with fleet_server() as (server, api, fleet):
        ids = fleet.ids
        tenant = await api.login(world.tenant.email)
        customer = await api.login(world.customer.email)
        customer2 = await api.login(world.customer2.email)
        tenant2 = await api.login(world.tenant2.email)
        sysadmin = await api.login(world.sysadmin.email)
        call = {"method": "getVersion"}

        # another customer's device, a device of no customer, another customer
        for targets in ({"deviceIds": [ids["pump-2"]]}, {"deviceIds": [ids["pump-1"], ids["Device T1"]]},
                        {"customerId": world.c2}):
            assert await refused(api, customer, 403, {"targets": targets, **call}) == NO_PERMISSION
        # another tenant's device is unknown, exactly like an id no device has
        unknown = str(uuid.uuid4())
        for device_id in (fleet.other_pump, unknown):
            message = await refused(api, customer, 400, {"targets": {"deviceIds": [device_id]}, **call})
            assert message == f"unknown device ids: {device_id}"
        # sysadmin runs no job and sees none
        assert await refused(api, sysadmin, 403, {"targets": {"all": True}, **call}) == NO_PERMISSION
        assert await refused(api, sysadmin, 403, method="GET", path="/api/jobs?pageSize=10&page=0")

        # every selector of a customer user reaches its customer's devices only
        mine = {"Device C1": "SUCCEEDED", "pump-1": "SUCCEEDED", "valve-1": "FAILED"}
        cases = [
            ({"all": True}, mine),
            ({"customerId": world.c1}, mine),
            ({"deviceType": "pump"}, {"pump-1": "SUCCEEDED"}),
            ({"label": "north"}, {"pump-1": "SUCCEEDED", "valve-1": "FAILED"}),
            ({"namePattern": "*"}, mine),
            ({"deviceIds": [ids["pump-1"]]}, {"pump-1": "SUCCEEDED"}),
        ]
        customer_jobs = []
        for targets, by_name in cases:
            job = await submit(api, customer, {"targets": targets, **call})
            assert job["customerId"] == {"entityType": "CUSTOMER", "id": world.c1}
            job = await until_finished(api, customer, job["id"]["id"])
            expected = {ids[name]: outcome for name, outcome in by_name.items()}
            assert job["status"] == "COMPLETED"
            assert await outcomes(api, customer, job["id"]["id"]) == expected, targets
            check_counters(job, expected)
            customer_jobs.append(job["id"]["id"])
        assert set(fleet.calls) == {ids["Device C1"], ids["pump-1"], ids["valve-1"]}

        # the tenant's own job: the customer user neither sees nor touches it
        tenant_job = (await submit(api, tenant, {"targets": {"deviceIds": [ids["pump-1"]]}, **call}))["id"]["id"]
        await until_finished(api, tenant, tenant_job)
        for method, path in (("GET", f"/api/job/{tenant_job}"), ("POST", f"/api/job/{tenant_job}/cancel"),
                             ("DELETE", f"/api/job/{tenant_job}"),
                             ("GET", f"/api/job/{tenant_job}/devices?pageSize=10&page=0")):
            assert await refused(api, customer, 403, method=method, path=path) == NO_PERMISSION
        status, raw, _ = await api.request("GET", "/api/jobs?pageSize=100&page=0", customer)
        listed = json.loads(raw)
        assert status == 200 and listed["totalElements"] == len(customer_jobs)
        assert {j["id"]["id"] for j in listed["data"]} == set(customer_jobs)
        # another customer of the same tenant: the customer's job is not its own
        job_path = f"/api/job/{customer_jobs[0]}"
        assert await refused(api, customer2, 403, method="GET", path=job_path) == NO_PERMISSION
        status, raw, _ = await api.request("GET", "/api/jobs?pageSize=100&page=0", customer2)
        assert (status, json.loads(raw)["totalElements"]) == (200, 0)
        # a customer user deletes no job, not even its own
        assert await refused(api, customer, 403, method="DELETE", path=job_path) == NO_PERMISSION
        # the tenant administrator sees them all
        status, raw, _ = await api.request("GET", "/api/jobs?pageSize=100&page=0", tenant)
        assert {j["id"]["id"] for j in json.loads(raw)["data"]} == {*customer_jobs, tenant_job}

        # another tenant: a job of tenant 1 does not exist, exactly like a made-up id
        for job_id in (tenant_job, customer_jobs[0], unknown):
            for method, path in (("GET", f"/api/job/{job_id}"), ("POST", f"/api/job/{job_id}/cancel"),
                                 ("DELETE", f"/api/job/{job_id}"),
                                 ("GET", f"/api/job/{job_id}/devices?pageSize=10&page=0")):
                message = await refused(api, tenant2, 404, method=method, path=path)
                assert message == f"Job with id [{job_id}] is not found"
        status, raw, _ = await api.request("GET", "/api/jobs?pageSize=100&page=0", tenant2)
        assert (status, json.loads(raw)["totalElements"]) == (200, 0)
        # and tenant 2's `all` reaches its own devices only
        job = await submit(api, tenant2, {"targets": {"all": True}, **call})
        job = await until_finished(api, tenant2, job["id"]["id"])
        assert await outcomes(api, tenant2, job["id"]["id"]) == {
            fleet.other_pump: "SUCCEEDED", world.dev_t2.id: "OFFLINE"}
        # nothing above changed tenant 1's job
        assert (await job_of(api, tenant, tenant_job))["status"] == "COMPLETED"


async def test_bad_input_is_a_400_that_names_the_problem(start_server, world):
    async with start_server() as (server, api):
        token = await api.login(world.tenant.email)
        call = {"method": "getVersion"}
        dev = world.dev_t1.id
        unknown = str(uuid.uuid4())
        cases = [
            ({"targets": {"devices": [dev]}, **call}, "unknown field `devices`"),
            ({"targets": {"deviceType": "pump", "label": "north"}, **call},
             "targets must name exactly one of deviceIds, deviceType, label, namePattern, customerId, all "
             "(got deviceType, label)"),
            ({"targets": {}, **call}, "(got none)"),
            ({"targets": {"all": False}, **call}, "(got none)"),
            ({"targets": {"deviceIds": []}, **call}, "targets.deviceIds is empty"),
            ({"targets": {"deviceType": " "}, **call}, "targets.deviceType is empty"),
            ({"targets": {"all": True}, **call, "rollout": {"maxPerMinute": 0}},
             "rollout.maxPerMinute must be in [0.001, 6000000], not 0"),
            ({"targets": {"all": True}, **call, "abort": [{"failureType": "ALL", "thresholdPercentage": 101}]},
             "abort[0].thresholdPercentage must be in [0, 100], not 101"),
            ({"targets": {"all": True}, **call, "abort": [{"failureType": "SOMETIMES"}]}, "`$.abort[0].failureType`"),
            ({"targets": {"deviceIds": [dev, unknown]}, **call}, f"unknown device ids: {unknown}"),
            ({"targets": {"deviceIds": ["not-a-device"]}, **call}, "unknown device ids: not-a-device"),
            ({"targets": {"customerId": unknown}, **call}, f"unknown customer id: {unknown}"),
            ({"targets": {"customerId": world.c3}, **call}, f"unknown customer id: {world.c3}"),  # tenant 2's
            ({"targets": {"all": True}, "method": 5}, "Expected `str`, got `int` - at `$.method`"),
            ({"targets": {"deviceIds": dev}, **call}, "at `$.targets.deviceIds`"),
            ({"targets": {"all": True}, **call, "timeout": "soon"}, "at `$.timeout`"),
            ({"targets": {"all": True}, **call, "timeout": 0}, "timeout must be a positive number"),
            ({"targets": {"all": True}}, "missing required field `method`"),
            ({"targets": {"all": True}, "method": ""}, "method must be 1-128 characters"),
            ({"targets": {"all": True}, **call, "rollout": {"maxInFlight": 0}}, "rollout.maxInFlight"),
            ([1, 2], "invalid job"),
        ]
        for body, fragment in cases:
            message = await refused(api, token, 400, body)
            assert fragment in message, (body, message)
        message = await refused(api, token, 400, data=b'{"targets": {"all": true}, "method": ')
        assert message == "invalid job: the body is not valid JSON"
        # query parameters of the lists
        for path, fragment in (("/api/jobs?page=0", "'pageSize' for method parameter type int is not present"),
                               ("/api/jobs?pageSize=x&page=0", "'pageSize' must be an integer"),
                               ("/api/jobs?pageSize=10&page=0&statuses=RUNNING,DONE", "unknown job status 'DONE'")):
            assert fragment in await refused(api, token, 400, method="GET", path=path)
        # no job was stored by any of these
        status, raw, _ = await api.request("GET", "/api/jobs?pageSize=10&page=0", token)
        assert (status, json.loads(raw)["totalElements"]) == (200, 0)
        job = await submit(api, token, {"targets": {"deviceIds": [dev]}, **call})
        job_id = job["id"]["id"]
        path = f"/api/job/{job_id}/devices?pageSize=10&page=0&status=LOST"
        assert "unknown device status 'LOST'" in await refused(api, token, 400, method="GET", path=path)
        assert await refused(api, token, 404, method="GET", path=f"/api/job/{unknown}") == (
            f"Job with id [{unknown}] is not found")
        # a job id is a UUID, in any case, as every id in a path
        for method, path in (("GET", "/api/job/not-a-uuid"), ("POST", "/api/job/not-a-uuid/cancel"),
                             ("DELETE", "/api/job/not-a-uuid"),
                             ("GET", "/api/job/not-a-uuid/devices?pageSize=1&page=0")):
            assert await refused(api, token, 400, method=method, path=path) == "Invalid UUID string: not-a-uuid"
        assert (await job_of(api, token, job_id.upper()))["id"]["id"] == job_id


async def test_cancel_delete_and_the_list_by_status(fleet_server, world):
    async with fleet_server() as (server, api, fleet):
        ids = fleet.ids
        token = await api.login(world.tenant.email)
        call = {"method": "getVersion"}
        done = (await submit(api, token, {"targets": {"deviceIds": [ids["pump-1"]]}, **call}))["id"]["id"]
        assert (await until_finished(api, token, done))["status"] == "COMPLETED"
        # one device a minute: the first starts at once, the other seven wait
        slow = await submit(api, token, {"targets": {"all": True}, **call, "name": "slow",
                                         "rollout": {"maxPerMinute": 1}})
        slow_id = slow["id"]["id"]
        assert slow["key"] == "slow"
        job = await until(api, token, slow_id, lambda j: j["result"]["counts"]["queued"] == 7
                          and j["result"]["counts"]["inProgress"] == 0)
        assert job["status"] == "RUNNING" and job["result"]["totalCount"] == 8

        # the list: newest first, filtered by status, paged
        async def listed(query: str) -> list[str]:
            status, raw, _ = await api.request("GET", f"/api/jobs?{query}", token)
            assert status == 200, raw
            return [j["id"]["id"] for j in json.loads(raw)["data"]]

        assert await listed("pageSize=10&page=0") == [slow_id, done]
        assert await listed("pageSize=10&page=0&statuses=RUNNING") == [slow_id]
        assert await listed("pageSize=10&page=0&statuses=completed") == [done]
        assert await listed("pageSize=10&page=0&statuses=RUNNING,COMPLETED") == [slow_id, done]
        assert await listed("pageSize=10&page=0&statuses=CANCELLED") == []
        assert await listed("pageSize=1&page=1") == [done]

        # a running job cannot be deleted
        message = await refused(api, token, 400, method="DELETE", path=f"/api/job/{slow_id}")
        assert message == "cancel the job before deleting it"
        # cancel: the device started keeps its outcome, the seven others are skipped
        status, raw, _ = await api.request("POST", f"/api/job/{slow_id}/cancel", token)
        assert status == 200, raw
        job = json.loads(raw)
        r = job["result"]
        assert job["status"] == "CANCELLED" and r["cancellationTs"] is not None
        assert (r["totalCount"], r["successfulCount"] + r["failedCount"], r["discardedCount"]) == (8, 1, 7)
        assert r["counts"]["skipped"] == 7 and r["counts"]["queued"] == r["counts"]["inProgress"] == 0
        assert await job_of(api, token, slow_id) == job
        started = await outcomes(api, token, slow_id)  # no row for a device never started
        assert len(started) == 1
        # pump-1 by the first job, and the one device started if it is connected
        assert sum(map(len, fleet.calls.values())) == 1 + (ids["pump-3"] not in started)
        assert await listed("pageSize=10&page=0&statuses=CANCELLED") == [slow_id]
        # cancelling a finished job changes nothing
        status, raw, _ = await api.request("POST", f"/api/job/{done}/cancel", token)
        assert (status, json.loads(raw)["status"]) == (200, "COMPLETED")

        # a finished job is deleted with its rows
        for job_id in (slow_id, done):
            status, raw, _ = await api.request("DELETE", f"/api/job/{job_id}", token)
            assert (status, raw) == (200, b"")
            for method, path in (("GET", f"/api/job/{job_id}"), ("DELETE", f"/api/job/{job_id}"),
                                 ("GET", f"/api/job/{job_id}/devices?pageSize=10&page=0")):
                assert await refused(api, token, 404, method=method, path=path) == (
                    f"Job with id [{job_id}] is not found")
        assert await listed("pageSize=10&page=0") == []


async def test_a_persistent_job_reaches_an_offline_device_when_it_connects(fleet_server, world):
    async with fleet_server() as (server, api, fleet):
        ids = fleet.ids
        token = await api.login(world.tenant.email)
        job = await submit(api, token, {"targets": {"deviceType": "pump"}, "method": "getVersion",
                                        "persistent": True, "timeout": 10000})
        job_id = job["id"]["id"]
        # the two connected pumps answer; pump-3 is offline, its call waits for it
        job = await until(api, token, job_id, lambda j: j["result"]["counts"]["succeeded"] == 2)
        assert job["status"] == "RUNNING" and job["result"]["counts"]["inProgress"] == 1
        page = await rows(api, token, job_id, "pageSize=10&page=0&status=IN_PROGRESS")
        assert [r["deviceId"]["id"] for r in page["data"]] == [ids["pump-3"]]
        assert page["data"][0]["rpcId"] is not None
        await fleet.connect(ids["pump-3"], {"fw": "2.1"})
        job = await until_finished(api, token, job_id)
        assert job["status"] == "COMPLETED"
        expected = {ids["pump-1"]: "SUCCEEDED", ids["pump-2"]: "SUCCEEDED", ids["pump-3"]: "SUCCEEDED"}
        assert await outcomes(api, token, job_id) == expected
        check_counters(job, expected)
        assert job["result"]["aggregate"]["fw"]["values"] == {"2.0": 2, "2.1": 1}
        # each pump got the call once; the persistent RPC is the server's own
        assert {d: len(fleet.calls[d]) for d in expected} == {d: 1 for d in expected}
        page = await rows(api, token, job_id)
        rpc_id = next(r["rpcId"] for r in page["data"] if r["deviceId"]["id"] == ids["pump-3"])
        status, raw, _ = await api.request("GET", f"/api/rpc/persistent/{rpc_id}", token)
        assert status == 200, raw
        assert json.loads(raw)["status"] == "SUCCESSFUL"
