"""Authentication, tenant isolation, every error code of these services, and
malformed envelopes over MQTT (answered, and the service still up)."""

from __future__ import annotations

import pytest

from fleetrpc._core.codec_py import Message
from fleetrpc._core.constants import Kind
from fleetrpc.services.elves import NULL_TENANT
from fleetrpc.services.elves.mqtt import answer_topic
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.mqtt

INS = {"app": "ops", "func": "hello", "param": ""}
OTHER_TENANT = "a1b2c3d4-0000-4000-8000-000000000001"


async def test_mqtt_callers_need_a_valid_key_for_their_own_topic(rig):
    await rig.agent("10.0.0.1")
    keyless = await rig.client(key=None)
    r = await keyless.call("scheduler", "sendSync", agentip="10.0.0.1", ins=INS)
    assert r["flag"] == "false" and r["error"].startswith("[401.1]Missing Parameter: key")
    wrong = await rig.client(key="0" * 32)
    r = await wrong.call("scheduler", "sendSync", agentip="10.0.0.1", ins=INS)
    assert r["error"] == "[401.5]Auth Key Not Valid"
    # A valid key, but published on another app's topics.
    other = await rig.elves.supervisor.create_app(NULL_TENANT, "other")
    thief = await rig.client("other", key=rig.key.auth_key)
    r = await thief.call("scheduler", "sendSync", agentip="10.0.0.1", ins=INS)
    assert r["error"].startswith("[401.6]Permission Denied: topic app 'other'")
    # The auth id works as the topic level as well as the name.
    by_id = await rig.client(rig.key.auth_id)
    r = await by_id.call("scheduler", "sendSync", agentip="10.0.0.1", ins=INS)
    assert r["flag"] == "true" and r["info"]["worker_result"] == "hello world"
    # An agent the app is not granted; an app that is not the key's.
    r = await rig.app.call("scheduler", "sendSync", agentip="10.0.0.77", ins=INS)
    assert r["error"].startswith("[401.6]Permission Denied: app 'ops' may not act on agent 10.0.0.77")
    r = await rig.app.call("scheduler", "sendAsync", agentip="10.0.0.1", ins={**INS, "app": "other"})
    assert r["error"].startswith("[413.2]App Not Found")
    assert other.app == "other"


async def test_grants_all_and_revoke(rig):
    await rig.agent("10.0.0.1")
    await rig.elves.supervisor.revoke(NULL_TENANT, "ops", ips=["10.0.0.1"])
    r = await rig.app.call("scheduler", "sendSync", agentip="10.0.0.1", ins=INS)
    assert r["error"].startswith("[401.6]")
    await rig.elves.supervisor.grant(NULL_TENANT, "ops", ips=["all"])
    r = await rig.app.call("scheduler", "sendSync", agentip="10.0.0.1", ins=INS)
    assert r["flag"] == "true"


async def test_topic_authentication_mode(rig):
    rig.elves.settings.mqtt_auth = "topic"
    await rig.agent("10.0.0.1")
    app = await rig.client(rig.key.auth_id, key=None)
    r = await app.call("scheduler", "sendSync", agentip="10.0.0.1", ins=INS)
    assert r["flag"] == "true", r
    stranger = await rig.client("nosuchauthid", key=None)
    r = await stranger.call("heartbeat", "getOnlineStat")
    assert r["error"] == "[413.1]AuthId Not Found: 'nosuchauthid'"


async def test_tenants_do_not_see_each_other(rig):
    await rig.agent("10.0.0.1")
    r = await rig.app.call("scheduler", "sendSync", agentip="10.0.0.1", ins=INS)
    task_id = r["info"]["id"]
    other = await rig.elves.supervisor.create_app(OTHER_TENANT, "ops")
    await rig.elves.supervisor.grant(OTHER_TENANT, "ops", ips=["10.0.0.2"])
    c = await rig.client(other.auth_id, key=other.auth_key)
    r = await c.call("tasklog", "getTaskByIds", id=[task_id])
    assert r["info"] == [] and r["notfound"] == [task_id]
    r = await c.call("supervisor", "getAuthByKey", key=rig.key.auth_key)
    assert r["error"] == "[401.5]Auth Key Not Valid"
    r = await c.call("supervisor", "checkIpAuthByKey", agentip="10.0.0.1", token=rig.key.auth_id, key=rig.key.auth_key)
    assert r["status"] == "false"
    r = await c.call("tasklog", "appProcessorResult", id=task_id, info={"processor_sync_flag": 1})
    assert r["error"].startswith("[415.1]Task Not Found")
    # Same app name in both tenants, one key each: the other tenant's app
    # may not touch this tenant's agent.
    r = await c.call("scheduler", "sendSync", agentip="10.0.0.1", ins=INS)
    assert r["error"].startswith("[401.6]")


@pytest.mark.parametrize(
    "args, code",
    [
        ({"agentip": "not-an-ip", "ins": INS}, "[403.1]"),
        ({"agentip": 17, "ins": INS}, "[403.1]"),
        ({"ins": INS}, "[403.1]"),
        ({"agentip": "10.0.0.1", "ins": {**INS, "mode": "XX"}}, "[403.4]"),
        ({"agentip": "10.0.0.1", "ins": {**INS, "timeout": "-5"}}, "[403.8]"),
        ({"agentip": "10.0.0.1", "ins": {**INS, "func": ""}}, "[403.7]"),
        ({"agentip": "10.0.0.1", "ins": {"func": "x"}}, "[403.3]"),
        ({"agentip": "10.0.0.1", "ins": "run it"}, "[403.0]"),
        ({"agentip": [], "ins": INS}, "[403.1]"),
    ],
)
async def test_bad_arguments(rig, args, code):
    r = await rig.app.call("scheduler", "sendSync", **args)
    assert r["flag"] == "false" and r["error"].startswith(code), r


async def test_malformed_envelopes_get_a_clear_error_and_the_service_stays_up(rig):
    await rig.agent("10.0.0.1")
    key = rig.key.auth_key
    for raw, code in [
        (b'{"mqt": "back", "mqs": "scheduler", "mqf": "sendSync"}', "[403.0]Malformed Envelope"),
        (b'{"mqt": "call", "mqs": "scheduler", "mqf": "nope", "key": "%s"}' % key.encode(), "[402.2]Unknown Function"),
        (b'{"mqt": "call", "mqs": "nope", "mqf": "x", "key": "%s"}' % key.encode(), "[402.1]Unknown Service"),
        (b'{"mqt": "call", "mqs": "heartbeat", "mqf": "getStatByIpList", "iplist": "x", "key": "%s"}' % key.encode(), "[403.1]"),
    ]:
        r = await rig.app.send_raw(raw)
        assert r["flag"] == "false" and r["error"].startswith(code), r
    # Payloads the codec itself refuses (not JSON, no mqs) are dropped and
    # counted by the dispatcher before they reach Elves ...
    malformed = rig.d.stats.malformed
    rig.app._transport.publish(f"{rig.prefix}/elves/ops/call/999", b"not json", 1)
    rig.app._transport.publish(f"{rig.prefix}/elves/ops/call/998", b'{"mqt": "call"}', 1)
    await wait_until(lambda: rig.d.stats.malformed >= malformed + 2)
    # ... and the service still answers.
    r = await rig.app.call("scheduler", "sendSync", agentip="10.0.0.1", ins=INS)
    assert r["flag"] == "true"


async def test_a_message_the_codec_flagged_is_answered(rig):
    """When the dispatcher hands over an ELVES message with an error (the
    feature asked of the dispatch core), the app gets a clear answer."""
    got = []
    rig.app._waiting[4242] = fut = __import__("asyncio").get_running_loop().create_future()
    msg = Message(Kind.ELVES, "ops", "call/4242", 0, None, "payload is not JSON")
    await rig.elves.mqtt._on_message(msg, None)
    reply = await fut
    got.append(reply)
    assert reply["flag"] == "false" and reply["error"] == "[403.0]Malformed Envelope: payload is not JSON"


def test_answers_stay_inside_the_apps_own_topics():
    assert answer_topic("p", "ops", "call/7", None) == ("p/elves/ops/back/7", None)
    assert answer_topic("p", "ops", "call", None) == ("p/elves/ops/back", None)
    props = {"response_topic": ["p/elves/ops/back/mine"], "correlation_data": [b"x"]}
    assert answer_topic("p", "ops", "call/7", props) == ("p/elves/ops/back/mine", {"correlation_data": b"x"})
    for evil in ("p/elves/other/back", "p/elves/ops/call/1", "p/d/dev/req/n/1", "p/elves/ops/backdoor"):
        assert answer_topic("p", "ops", "call/7", {"response_topic": [evil]}) == ("p/elves/ops/back/7", None)


async def test_task_log_retention(rig):
    await rig.agent("10.0.0.1")
    r = await rig.app.call("scheduler", "sendSync", agentip="10.0.0.1", ins=INS)
    task_id = r["info"]["id"]
    assert await rig.elves.tasklog.purge(0) == 0
    import time

    assert await rig.elves.tasklog.purge(int(time.time() * 1000) + 1000) == 1
    r = await rig.app.call("tasklog", "getTaskByIds", id=task_id)
    assert r["info"] == [] and r["notfound"] == [task_id]
