"""An Elves call holding U+0000 in a text, through ``fleetrpc serve`` on
SQLite and PostgreSQL, over ``POST /api/elves`` and over MQTT: a clear
error, the same on both databases, and nothing at ERROR."""

from __future__ import annotations

import json
import logging
import uuid

import pytest

from fleetrpc.services.elves.client import ElvesClient
from tests.server.conftest import sqlite_url, start_server, store_url, world  # noqa: F401 (fixtures)

pytestmark = pytest.mark.mqtt

#: Calls whose texts reach the database: an app name, a key, an IP, an id, a param.
CALLS = [
    {"mqs": "supervisor", "mqf": "getAppCallbackInfo", "appname": "o\x00ps"},
    {"mqs": "supervisor", "mqf": "getAuthByKey", "key": "k\x00"},
    {"mqs": "heartbeat", "mqf": "getStatByIpList", "iplist": ["10.0.0.1\x00"]},
    {"mqs": "tasklog", "mqf": "getTaskByIds", "id": ["\x00"]},
    {"mqs": "cron", "mqf": "cronDetail", "cron_id": "\x00"},
    {"mqs": "scheduler", "mqf": "sendAsync", "ip": "10.0.0.1", "app": "ops",
     "ins": {"app": "ops", "func": "f", "param": "a\x00b"}},
]


async def test_a_nul_character_is_a_clear_error_not_a_traceback(start_server, world, mqtt_url, caplog):
    """PostgreSQL refuses U+0000 in a text: each such call was an ERROR with
    a traceback ("Elves handler ... failed") and a [500] answer, as often
    as an app (or anyone able to publish on an app's call topic) sent one."""
    caplog.set_level(logging.WARNING)
    prefix = f"elvesnul{uuid.uuid4().hex[:8]}"
    async with start_server(dispatch={"prefix": prefix}) as (server, api):
        admin = await api.login(world.tenant.email)
        for call in CALLS:
            status, body, _ = await api.request("POST", "/api/elves", admin, json={"mqt": "call", **call})
            reply = json.loads(body)
            assert status == 200 and reply["flag"] == "false", (call, reply)
            assert reply["error"].startswith("[403.0]Bad Argument") and "U+0000" in reply["error"], (call, reply)
        # over MQTT, the app's key itself (looked up before anything else)
        app = ElvesClient("ops", mqtt_url, prefix=prefix, key="k\x00")
        await app.connect()
        try:
            for call in CALLS:
                args = {k: v for k, v in call.items() if k not in ("mqs", "mqf")}
                reply = await app.call(call["mqs"], call["mqf"], **args)
                assert reply["error"].startswith("[403.0]Bad Argument") and "U+0000" in reply["error"], (call, reply)
        finally:
            await app.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_nul_in_a_signed_v2_request_is_refused_like_any_bad_auth_id(start_server, world, caplog):
    """Elves' OpenAPI v2 looks the request's ``auth_id`` up before the
    signature is checked, so anyone can send one: with U+0000 in it
    PostgreSQL refused the query."""
    import time

    caplog.set_level(logging.WARNING)
    async with start_server() as (server, api):
        ts = str(int(time.time()))
        status, body, _ = await api.request(
            "GET", f"/api/v2/info/app?auth_id=a%00b&timestamp={ts}&sign_type=md5&sign={'0' * 32}")
        assert status == 200, body
        assert json.loads(body)["flag"] == "false" and json.loads(body)["error"].startswith("[413.1]"), body
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
