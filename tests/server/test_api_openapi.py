"""The OpenAPI document describes every route, and a property-based run of
the API generated from it (schemathesis, bounded) finds no 5xx."""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

pytestmark = pytest.mark.mqtt


async def test_document_lists_every_route(start_server):
    async with start_server() as (server, api):
        status, body, _ = await api.request("GET", "/api/openapi.json")
        doc = json.loads(body)
        assert status == 200 and doc["openapi"].startswith("3.")
        routes = {
            (method.upper(), path)
            for path, item in doc["paths"].items() for method in item
        }
        for expected in (
            ("POST", "/api/auth/login"), ("POST", "/api/auth/token"), ("GET", "/api/auth/user"),
            ("POST", "/api/rpc/twoway/{deviceId}"), ("POST", "/api/plugins/rpc/oneway/{deviceId}"),
            ("GET", "/api/rpc/persistent/{rpcId}"), ("DELETE", "/api/rpc/persistent/{rpcId}"),
            ("GET", "/api/rpc/persistent/device/{deviceId}"),
            ("POST", "/api/tenant"), ("GET", "/api/tenants"), ("GET", "/api/tenant/{tenantId}"),
            ("POST", "/api/customer"), ("GET", "/api/customers"), ("GET", "/api/customer/{customerId}"),
            ("POST", "/api/user"), ("GET", "/api/user/{userId}/activationLink"), ("POST", "/api/noauth/activate"),
            ("POST", "/api/device"), ("POST", "/api/device-with-credentials"), ("GET", "/api/device/{deviceId}"),
            ("DELETE", "/api/device/{deviceId}"), ("GET", "/api/tenant/devices"),
            ("GET", "/api/customer/{customerId}/devices"), ("POST", "/api/customer/{customerId}/device/{deviceId}"),
            ("DELETE", "/api/customer/device/{deviceId}"), ("GET", "/api/device/{deviceId}/credentials"),
            ("POST", "/api/device/credentials"), ("GET", "/api/tenant/deviceInfos"),
            ("GET", "/api/customer/{customerId}/deviceInfos"), ("GET", "/api/device/info/{deviceId}"),
        ):
            assert expected in routes, expected
        # every /api route the application serves is described
        served = {
            (r.method, r.resource.canonical) for r in server.ctx.app.router.routes()
            if r.resource is not None and r.resource.canonical.startswith("/api/") and r.method != "HEAD"
            and r.resource.canonical not in ("/api/openapi.json", "/api/docs")
        }
        assert served <= routes, served - routes
        body_schema = doc["paths"]["/api/rpc/twoway/{deviceId}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body_schema == {"$ref": "#/components/schemas/RpcRequest"}
        assert "method" in doc["components"]["schemas"]["RpcRequest"]["required"]
        status, page, r = await api.request("GET", "/api/docs")
        assert status == 200 and r.content_type == "text/html" and b"/api/rpc/twoway/{deviceId}" in page


def _fuzz(doc: dict, base_url: str, token: str, examples: int) -> list[str]:
    """Every operation, ``examples`` generated requests each; returns the 5xx found."""
    schema = schemathesis.openapi.from_dict(doc)
    failures: list[str] = []
    for result in schema.get_all_operations():
        op = result.ok()

        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def run(case) -> None:
            try:
                response = case.call(base_url=base_url, headers={"X-Authorization": f"Bearer {token}"}, timeout=30)
            except requests.exceptions.ReadTimeout:
                # A device's long poll (GET /api/v1/{token}/rpc, .../attributes/updates)
                # waits up to 60 s by default, as ThingsBoard's: once a generated
                # device has a generated token, a poll with it rightly outwaits us.
                if op.method.upper() == "GET" and op.path.startswith("/api/v1/{token}/"):
                    return
                raise
            if response.status_code >= 500 and response.status_code != 503:
                failures.append(f"{op.label}: {response.status_code} {response.text[:200]}")

        run()
    return failures


async def test_property_based_from_openapi(start_server, world):
    """Every operation, as each role (the entity endpoints do different
    things for each), on both databases (PostgreSQL refuses more values
    than SQLite: NUL characters, out-of-range integers)."""
    # Short timeouts: generated calls to offline devices answer quickly. The
    # device endpoint is on, so that ThingsBoard's device API (/api/v1) is
    # fuzzed past its "not enabled" answer.
    async with start_server(rpc={"offline_fail_fast": True},
                            endpoint={"enabled": True, "host": "127.0.0.1", "port": 0}) as (server, api):
        _, body, _ = await api.request("GET", "/api/openapi.json")
        doc = json.loads(body)
        # FLEETRPC_OPENAPI_EXAMPLES=N multiplies the examples for a deep run.
        scale = int(os.environ.get("FLEETRPC_OPENAPI_EXAMPLES", "1"))
        for who, examples in ((world.tenant, 6 * scale), (world.sysadmin, 3 * scale), (world.customer, 3 * scale)):
            token = await api.login(who.email)
            failures = await asyncio.to_thread(_fuzz, doc, server.ctx.url, token, examples)
            assert failures == [], who.email
        # the server still answers, and tenant 2's data is where it was
        token = await api.login(world.tenant2.email)
        status, body, _ = await api.request("GET", "/api/tenant/devices?pageSize=10&page=0", token)
        assert status == 200 and [d["name"] for d in json.loads(body)["data"]] == [world.dev_t2.name]


def _answer_schema(doc: dict, path: str, method: str, status: int) -> dict:
    """The JSON schema of one described answer, with the components its
    $refs point at (OpenAPI 3.0's schemas are draft 4's, near enough)."""
    answer = doc["paths"][path][method]["responses"][str(status)]
    return {**answer["content"]["application/json"]["schema"], "components": doc["components"]}


async def test_routes_creating_devices_describe_the_device_limit_403(start_server, world):
    """POST /api/device and /api/device-with-credentials answer ThingsBoard's
    403 errorCode 41 (with entityType and limit) at store.max_devices_per_tenant;
    the document says so, and the real answer fits what it describes.  A
    route that creates nothing keeps the plain 403 (errorCode 20)."""
    import jsonschema_rs

    async with start_server(store={"max_devices_per_tenant": 3}) as (server, api):  # the world's three
        _, body, _ = await api.request("GET", "/api/openapi.json")
        doc = json.loads(body)
        admin = await api.login(world.tenant.email)
        for path, payload in (("/api/device", {"name": "Fourth"}),
                              ("/api/device-with-credentials",
                               {"device": {"name": "Fourth"},
                                "credentials": {"credentialsType": "ACCESS_TOKEN", "credentialsId": "fourth"}})):
            described = doc["paths"][path]["post"]["responses"]["403"]
            assert "errorCode 41" in described["description"], described
            assert "errorCode 20" in described["description"], described  # a customer user still gets that
            schema = _answer_schema(doc, path, "post", 403)
            status, body, _ = await api.request("POST", path, admin, json=payload)
            assert status == 403 and json.loads(body)["errorCode"] == 41, body
            jsonschema_rs.Draft4Validator(schema).validate(json.loads(body))
            # the limit's fields are described, not merely allowed
            assert "EntitiesLimitBody" in json.dumps(schema["anyOf"])
            assert set(doc["components"]["schemas"]["EntitiesLimitBody"]["required"]) >= {"entityType", "limit"}
        plain = doc["paths"]["/api/device/{deviceId}"]["get"]["responses"]["403"]
        assert plain == {"description": "Permission denied (errorCode 20)",
                         "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}


async def test_bodies_nested_too_deeply_are_a_400(start_server, world):
    """A JSON body nested deeper than the interpreter's recursion limit
    (msgspec raises RecursionError there, not DecodeError) is a 4xx on
    every POST / PUT route of the document, as each role, with the path's
    ids naming entities that exist (so the handlers get as far as the
    body), and the server still answers afterwards."""
    deep = 100_000
    bodies = (b"[" * deep + b"]" * deep,
              b'{"a":' * deep + b"1" + b"}" * deep,
              b'{"method":"m","name":"n","params":' + b"[" * 5000 + b"]" * 5000 + b"}",
              b'{"zz":' + b"[" * 5000 + b"]" * 5000 + b"}")  # an unknown field: skipped by recursing too
    async with start_server(endpoint={"enabled": True, "host": "127.0.0.1", "port": 0}) as (server, api):
        _, body, _ = await api.request("GET", "/api/openapi.json")
        doc = json.loads(body)
        admin = await api.login(world.tenant.email)
        _, creds, _ = await api.request("GET", f"/api/device/{world.dev_c1.id}/credentials", admin)
        _, key, _ = await api.request("POST", "/api/apiKey", admin, json={
            "userId": {"entityType": "USER", "id": world.tenant.id}, "description": "k", "enabled": True})
        ids = {"id": json.loads(key)["id"]["id"], "deviceId": world.dev_c1.id, "customerId": world.c1, "tenantId": world.t1,
               "userId": world.customer.id, "ownerId": world.c1, "entityType": "DEVICE",
               "entityId": world.dev_t1.id, "token": json.loads(creds)["credentialsId"], "enabledValue": "true"}
        routes = [(method.upper(), path) for path, item in doc["paths"].items() for method in item
                  if method in ("post", "put") and path not in ("/api/auth/logout",)]
        assert ("POST", "/api/rpc/twoway/{deviceId}") in routes
        failures = []
        for who in (world.tenant, world.customer, world.sysadmin):
            token = await api.login(who.email)
            for method, path in routes:
                url = re.sub(r"\{(\w+)\}", lambda m: ids.get(m.group(1), str(uuid.uuid4())), path)
                for raw in bodies:
                    status, answer, _ = await api.request(method, url, token, data=raw,
                                                          headers={"Content-Type": "application/json"})
                    if status >= 500:
                        failures.append((who.email, method, path, raw[:12], status, answer[:100]))
        assert failures == []
        # A call's params one level past MAX_JSON_DEPTH: refused on every
        # Python (msgspec alone decodes them from 3.12 on, and they went
        # on to the device)
        past = b'{"method":"m","params":' + b"[" * 500 + b"]" * 500 + b"}"
        for kind in ("oneway", "twoway"):
            status, answer, _ = await api.request("POST", f"/api/rpc/{kind}/{world.dev_t1.id}", admin, data=past,
                                                  headers={"Content-Type": "application/json"})
            assert status == 400, answer
        status, _, _ = await api.request("GET", "/api/auth/user", admin)
        assert status == 200


def _fits(doc: dict, path: str, method: str, status: int, content_type: str, body: bytes) -> None:
    """The answer's status is described for the operation, and when the
    description gives a body, the answer is JSON of that schema."""
    import jsonschema_rs

    described = doc["paths"][path][method]["responses"].get(str(status))
    assert described is not None, (method, path, status, body)
    content = described.get("content")
    if content is None:
        return
    assert content_type in content, (method, path, status, content_type, body)
    schema = {**content[content_type]["schema"], "components": doc["components"]}
    jsonschema_rs.Draft4Validator(schema).validate(json.loads(body))


async def test_error_answers_fit_the_document(start_server, world):
    """Answers a deep run from the document found undescribed: a refused
    refresh token and console stream (401), a deviceName that is no device
    (404), Elves' error envelopes (400 / 403), the RPC path's bare-text 403,
    and the one device (not a page) GET /api/tenant/devices?deviceName= answers."""
    async with start_server(rpc={"offline_fail_fast": True}) as (server, api):
        _, body, _ = await api.request("GET", "/api/openapi.json")
        doc = json.loads(body)
        admin = await api.login(world.tenant.email)
        customer = await api.login(world.customer.email)
        sysadmin = await api.login(world.sysadmin.email)
        cases = [
            (None, "POST", "/api/auth/token", "/api/auth/token", {"refreshToken": "not-a-token"}, None, 401),
            (None, "GET", "/api/console/events", "/api/console/events?token=not-a-token", None, None, 401),
            (admin, "GET", "/api/tenant/devices", "/api/tenant/devices?deviceName=nothing", None, None, 404),
            # with deviceName, the device itself (not a page)
            (admin, "GET", "/api/tenant/devices", "/api/tenant/devices?deviceName=Device%20T1", None, None, 200),
            (admin, "GET", "/api/tenant/devices", "/api/tenant/devices?pageSize=1&page=0", None, None, 200),
            (admin, "POST", "/api/elves", "/api/elves", {"mqt": 1}, None, 400),
            (admin, "POST", "/api/elves/cmdb", "/api/elves/cmdb", None, b"\xff\xfe", 400),
            (customer, "POST", "/api/elves/cmdb", "/api/elves/cmdb", None, b"a,b\n", 403),
            (customer, "GET", "/api/rpc/persistent/device/{deviceId}",
             f"/api/rpc/persistent/device/{world.dev_c2.id}?pageSize=1&page=0", None, None, 403),
        ]
        for prefix in ("/api/plugins/rpc", "/api/rpc"):
            for kind in ("oneway", "twoway"):
                path = f"{prefix}/{kind}/{{deviceId}}"
                cases.append((sysadmin, "POST", path, path.format(deviceId=world.dev_c1.id), {"method": "m"}, None, 403))
                cases.append((customer, "POST", path, path.format(deviceId=world.dev_c2.id), {"method": "m"}, None, 403))
        for token, method, path, url, payload, raw, expected in cases:
            status, answer, r = await api.request(method, url, token, json=payload, data=raw)
            assert status == expected, (method, url, status, answer)
            _fits(doc, path, method.lower(), status, r.content_type, answer)
