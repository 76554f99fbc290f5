"""The Elves envelope parser and router: aliases, dispatch on arguments,
error replies."""

from __future__ import annotations

import pytest

from fleetrpc.services.elves.envelope import (
    Instruction,
    normalise_mode,
    parse_envelope,
    parse_timeout,
)
from fleetrpc.services.elves.errors import ElvesError
from fleetrpc.services.elves.router import Alias, ElvesCall, ElvesRouter


def _router() -> ElvesRouter:
    r = ElvesRouter()

    def named(name):
        async def handler(env, call):
            return {"ran": name, "function": env.function}

        return handler

    r.register("scheduler", "sendSync", named("sync"))
    r.register(
        "scheduler", "sendAsync", named("async"),
        aliases=[Alias("sendsync", when=lambda env: env.get("async") is True)],
    )
    r.register("supervisor", "checkIpAuthByKey", named("check"))
    r.register(
        "supervisor", "getAppCallbackInfo", named("callback"),
        aliases=[Alias("checkipauthbykey", when=lambda env: env.has("appname"))],
    )

    async def boom(env, call):
        raise RuntimeError("bug")

    r.register("tasklog", "boom", boom)
    return r


def _call(mqs, mqf, **args):
    return {"mqt": "call", "mqs": mqs, "mqf": mqf, **args}


@pytest.mark.parametrize(
    "mqs, mqf, args, ran",
    [
        ("scheduler", "sendSync", {}, "sync"),
        ("sheduler", "sendsync", {}, "sync"),           # seed spelling of the service
        ("SCHEDULER", "SENDSYNC", {}, "sync"),          # case-insensitive
        ("sheduler", "sendsync", {"async": True}, "async"),  # dispatch on arguments
        ("scheduler", "sendAsync", {}, "async"),
        ("supervisor", "checkipauthbykey", {"agentip": "1.2.3.4"}, "check"),
        ("supervisor", "checkipauthbykey", {"appname": "x"}, "callback"),
        ("supervisor", "getAppCallbackInfo", {"appname": "x"}, "callback"),
    ],
)
async def test_aliases_resolve(mqs, mqf, args, ran):
    reply = await _router().dispatch(_call(mqs, mqf, **args), ElvesCall())
    assert reply["flag"] == "true" and reply["error"] == ""
    assert reply["ran"] == ran
    # The reply echoes what the caller wrote, and says back.
    assert (reply["mqt"], reply["mqs"], reply["mqf"]) == ("back", mqs, mqf)


async def test_unknown_service_and_function_are_clear_errors():
    r = _router()
    reply = await r.dispatch(_call("nosuch", "x"), ElvesCall())
    assert reply["flag"] == "false" and reply["error"].startswith("[402.1]")
    reply = await r.dispatch(_call("scheduler", "nosuch"), ElvesCall())
    assert reply["error"].startswith("[402.2]") and "sendSync" in reply["error"]


@pytest.mark.parametrize(
    "body, needle",
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"mqt": "call", "mqs": "scheduler"}', "mqf"),
        (b'{"mqt": "call", "mqs": 5, "mqf": "x"}', "mqs"),
        (b'{"mqt": "ping", "mqs": "a", "mqf": "b"}', "mqt"),
        (b'{"mqt": "back", "mqs": "scheduler", "mqf": "sendSync"}', "back"),
        (b'{"mqt": "call", "mqs": "", "mqf": "b"}', "empty"),
    ],
)
async def test_malformed_envelopes_are_answered(body, needle):
    reply = await _router().dispatch(body, ElvesCall())
    assert reply["mqt"] == "back" and reply["flag"] == "false"
    assert reply["error"].startswith("[403.0]Malformed Envelope") and needle in reply["error"]


async def test_handler_bug_is_a_500_reply():
    reply = await _router().dispatch(_call("tasklog", "boom"), ElvesCall())
    assert reply["error"] == "[500]Internal Error: RuntimeError"


def test_two_unconditional_meanings_are_refused():
    r = ElvesRouter()

    async def h(env, call):
        return {}

    r.register("s", "a", h, aliases=["x"])
    with pytest.raises(ValueError, match="already means a"):
        r.register("s", "b", h, aliases=["x"])


def test_argument_errors_carry_the_field_code():
    env = parse_envelope(_call("scheduler", "sendSync", agentip="1.2.3.4", ins={"app": 5, "func": "f"}))

    import msgspec

    class Args(msgspec.Struct):
        agentip: str
        ins: Instruction

    with pytest.raises(ElvesError) as e:
        env.args(Args)
    assert e.value.code == "403.3" and "$.ins.app" in str(e.value)
    env = parse_envelope(_call("scheduler", "sendSync", ins={"app": "a", "func": "f"}))
    with pytest.raises(ElvesError) as e:
        env.args(Args)
    assert e.value.code == "403.1" and "agentip" in str(e.value)


@pytest.mark.parametrize(
    "written, meant",
    [("", ("NP", None)), ("P", ("P", None)), ("np", ("NP", None)), ("SSnP", ("NP", True)),
     ("SSP", ("P", True)), ("SAnP", ("NP", False)), ("SAP", ("P", False)),
     ("AAnP", ("NP", False)), ("AAP", ("P", False))],
)
def test_modes(written, meant):
    assert normalise_mode(written) == meant


def test_bad_mode_and_timeout():
    with pytest.raises(ElvesError, match=r"^\[403\.4\]"):
        normalise_mode("XYZ")
    assert parse_timeout("") == 90 and parse_timeout(None) == 90
    assert parse_timeout("0") == 0 and parse_timeout(0) == 0 and parse_timeout("2.5") == 3
    for bad in ("-1", "abc", -3, True, [1]):
        with pytest.raises(ElvesError, match=r"^\[403\.8\]"):
            parse_timeout(bad)


async def test_a_value_the_database_refuses_is_a_clear_error_not_a_bug(caplog):
    """A handler's store refusing a value for its content (ValueRefusedError:
    PostgreSQL and U+0000) is the caller's bad input: a 403.0 reply, and no
    traceback at ERROR for each such call."""
    import logging

    from fleetrpc.errors import ValueRefusedError

    r = ElvesRouter()

    async def stores(env, call):
        raise ValueRefusedError("a text holds a character the database cannot store (NUL) [22021]")

    r.register("cron", "cronDetail", stores)
    caplog.set_level(logging.WARNING)
    reply = await r.dispatch({"mqt": "call", "mqs": "cron", "mqf": "cronDetail", "cron_id": "x"}, ElvesCall())
    assert reply["flag"] == "false" and reply["error"].startswith("[403.0]Bad Argument: a text holds"), reply
    assert not caplog.records


def _recording_router() -> tuple[ElvesRouter, list]:
    """A router with one handler, cron.cronDetail, that notes each call."""
    ran: list = []

    async def handler(env, call):
        ran.append(env)
        return {}

    r = ElvesRouter()
    r.register("cron", "cronDetail", handler)
    return r, ran


async def test_a_nul_anywhere_in_a_call_is_refused_before_its_handler():
    r, ran = _recording_router()
    for body in ({"cron_id": "a\x00"}, {"ins": {"param": ["x", "\x00"]}}, {"k\x00": 1}):
        reply = await r.dispatch({"mqt": "call", "mqs": "cron", "mqf": "cronDetail", **body}, ElvesCall())
        assert reply["error"].startswith("[403.0]Bad Argument") and "U+0000" in reply["error"], reply
    assert not ran


async def test_a_call_nested_as_deep_as_json_allows_is_answered(caplog):
    """The NUL check walks the body with a stack: a body nested 900 levels
    deep (msgspec decodes up to about 1,000) ran out of Python's recursion
    there, a 500 reply and a traceback at ERROR."""
    import logging

    r, ran = _recording_router()
    caplog.set_level(logging.WARNING)
    deep = b"[" * 900 + b'"\\u0000"' + b"]" * 900
    body = b'{"mqt": "call", "mqs": "cron", "mqf": "cronDetail", "cron_id": "x", "ins": ' + deep + b"}"
    reply = await r.dispatch(body, ElvesCall())
    assert reply["error"].startswith("[403.0]Bad Argument") and "U+0000" in reply["error"], reply
    reply = await r.dispatch(body.replace(b'"\\u0000"', b"1"), ElvesCall())
    assert reply["flag"] == "true", reply
    assert len(ran) == 1 and not caplog.records
