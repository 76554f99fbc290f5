"""A call's options are checked once, at the edge, with one error type:
ThingsBoard's REST body rules and the Python API's argument checks."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fleetrpc.config import Settings
from fleetrpc.dispatch.options import (
    CallOptions,
    check_flag,
    check_retries,
    check_timeout_ms,
    check_timeout_s,
    effective_retries,
    effective_timeout_ms,
    parse_rpc_body,
)
from fleetrpc.errors import ValidationError

BAD_FLAGS = [None, "", "false", "true", 0, 1, 1.0, math.nan, [], {}]
BAD_NUMBERS = [True, False, "false", "abc", "1.5", "-3", -1, -0.5, math.nan, math.inf, -math.inf, [], {}, "1e3", "١٢"]


def test_minimal_body():
    assert parse_rpc_body({"method": "m"}) == CallOptions(method="m", params={})


def test_full_body():
    body = {
        "method": "setGPIO", "params": {"pin": 4}, "timeout": 7000, "expirationTime": 1700000000000,
        "persistent": True, "retries": "3", "additionalInfo": {"k": [1]},
        "requestUUID": "6E1F4A2C-1234-4ABC-8DEF-0123456789AB", "unknown": 1,
    }
    o = parse_rpc_body(body, oneway=True)
    assert o == CallOptions(
        method="setGPIO", params={"pin": 4}, timeout_ms=7000, expiration_time=1700000000000,
        oneway=True, persistent=True, retries=3, additional_info={"k": [1]},
        request_uuid="6e1f4a2c-1234-4abc-8def-0123456789ab",
    )


def test_extra_info_is_the_seed_guides_name_for_additional_info():
    assert parse_rpc_body({"method": "m", "extraInfo": {"k": 1}}).additional_info == {"k": 1}
    # ThingsBoard's own name wins when both are there, even as null
    assert parse_rpc_body({"method": "m", "extraInfo": 1, "additionalInfo": {"k": 2}}).additional_info == {"k": 2}
    assert parse_rpc_body({"method": "m", "extraInfo": 1, "additionalInfo": None}).additional_info is None


@pytest.mark.parametrize("body", [None, [], "x", 1, {"params": {}}, {"method": ""}, {"method": 5}, {"method": "x" * 129}])
def test_bad_method_or_body(body):
    with pytest.raises(ValidationError):
        parse_rpc_body(body)


@pytest.mark.parametrize("field", ["persistent", "oneway"])
@pytest.mark.parametrize("value", [v for v in BAD_FLAGS if v is not None])
def test_flags_are_true_only_when_true(field, value):
    with pytest.raises(ValidationError, match=field):
        parse_rpc_body({"method": "m", field: value})


@pytest.mark.parametrize("field", ["persistent", "oneway"])
def test_flags_null_or_absent_are_false(field):
    assert getattr(parse_rpc_body({"method": "m", field: None}), field) is False
    assert getattr(parse_rpc_body({"method": "m", field: True}), field) is True


def test_url_oneway_wins():
    assert parse_rpc_body({"method": "m", "oneway": True}, oneway=False).oneway is False


@pytest.mark.parametrize("value, expected", [(3, 3), (0, 0), ("3", 3), (" 4 ", 4), ("+2", 2), (2.0, 2), ("", None), ("  ", None), (None, None)])
def test_retries_numbers_and_numeric_strings(value, expected):
    assert parse_rpc_body({"method": "m", "retries": value}).retries == expected


@pytest.mark.parametrize("value", BAD_NUMBERS + [2.5])
def test_retries_bad(value):
    with pytest.raises(ValidationError, match="retries"):
        parse_rpc_body({"method": "m", "retries": value})


@pytest.mark.parametrize("value, expected", [(7000, 7000), (0, 0), (1500.9, 1500), ("8000", 8000), ("", None), (None, None)])
def test_timeout_ms(value, expected):
    assert parse_rpc_body({"method": "m", "timeout": value}).timeout_ms == expected


@pytest.mark.parametrize("value", BAD_NUMBERS + [10**13])
def test_timeout_ms_bad(value):
    with pytest.raises(ValidationError, match="timeout"):
        parse_rpc_body({"method": "m", "timeout": value})


@pytest.mark.parametrize("value", BAD_NUMBERS)
def test_expiration_time_bad(value):
    with pytest.raises(ValidationError, match="expirationTime"):
        parse_rpc_body({"method": "m", "expirationTime": value})


@pytest.mark.parametrize("value", ["", "not-a-uuid", 5, True, "6e1f4a2c12344abc8def0123456789ab" * 2])
def test_request_uuid_bad(value):
    with pytest.raises(ValidationError, match="requestUUID"):
        parse_rpc_body({"method": "m", "requestUUID": value})


@pytest.mark.parametrize("value", BAD_FLAGS)
def test_check_flag(value):
    with pytest.raises(ValidationError, match="oneway"):
        check_flag(value, "oneway")


@pytest.mark.parametrize("value", [None, 0, 0.0, 2, 2.5, 1e9])
def test_check_timeout_s_ok(value):
    assert check_timeout_s(value) == value


@pytest.mark.parametrize("value", [True, "", "false", "5", -1, math.nan, math.inf, 1e10, [], {}])
def test_check_timeout_s_bad(value):
    with pytest.raises(ValidationError, match="timeout"):
        check_timeout_s(value)


def test_effective_defaults():
    s = Settings(node_id="n")
    assert effective_timeout_ms(None, s) == 10_000
    assert effective_timeout_ms(0, s) == 5_000  # raised to the minimum
    assert effective_timeout_ms(60_000, s) == 60_000
    assert effective_retries(None, s) == 0  # ThingsBoard retries only when asked
    assert effective_retries(3, s) == 3
    assert effective_retries(99, s) == 5  # capped at max_retries
    s2 = Settings(node_id="n", default_retries=2, max_retries=4)
    assert effective_retries(None, s2) == 2


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=300)
_field_values = st.one_of(_json, st.sampled_from(["", " 7 ", "3", "-1", "true", "1e3", "6e1f4a2c-1234-4abc-8def-0123456789ab"]))


@SETTINGS
@given(st.dictionaries(
    st.sampled_from(["method", "params", "timeout", "expirationTime", "persistent", "oneway",
                     "retries", "additionalInfo", "requestUUID", "other"]),
    _field_values,
))
def test_any_body_parses_or_is_a_validation_error(body):
    try:
        o = parse_rpc_body(body)
    except ValidationError:
        return
    assert type(o.method) is str and o.method
    assert type(o.persistent) is bool and type(o.oneway) is bool
    for n in (o.timeout_ms, o.retries, o.expiration_time):
        assert n is None or (type(n) is int and n >= 0)


@SETTINGS
@given(_json)
def test_check_retries_never_raises_anything_else(value):
    try:
        check_retries(value)
        check_timeout_ms(value)
    except ValidationError:
        pass
