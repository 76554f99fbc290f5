"""The request-body parsers of the entities (``from_thingsboard``): what
ThingsBoard's clients send is accepted, anything else is a clear
ValidationError, and no input makes them raise anything else."""

from __future__ import annotations

import uuid

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetrpc.errors import ValidationError
from fleetrpc.store.entities import (
    NULL_UUID,
    CredentialsInput,
    Customer,
    Device,
    DeviceCredentials,
    Tenant,
    User,
)

PARSERS = [Tenant.from_thingsboard, Customer.from_thingsboard, User.from_thingsboard,
           Device.from_thingsboard, DeviceCredentials.from_thingsboard]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
field_names = st.sampled_from([
    "id", "name", "title", "type", "label", "email", "authority", "tenantId", "customerId", "deviceId",
    "additionalInfo", "credentialsType", "credentialsId", "firstName", "version", "entityType",
])
bodies = st.dictionaries(field_names, json_values | st.fixed_dictionaries(
    {"entityType": st.sampled_from(["DEVICE", "TENANT", "CUSTOMER", "USER"]),
     "id": st.one_of(st.uuids().map(str), st.text(max_size=40))}), max_size=8)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(body=bodies | json_values, as_bytes=st.booleans())
def test_parsers_accept_or_raise_validation_error_only(body, as_bytes):
    raw = msgspec.json.encode(body) if as_bytes else body
    for parse in PARSERS:
        try:
            out = parse(raw)
        except ValidationError as e:
            assert str(e)  # always says something
            continue
        # Whatever is accepted is clean: canonical ids, checked texts.
        for name in ("id", "device_id"):
            value = getattr(out, name, None)
            assert value is None or (value == str(uuid.UUID(value)) and value != NULL_UUID)
        for name in ("tenant_id", "customer_id"):
            if hasattr(out, name):
                assert getattr(out, name) == str(uuid.UUID(getattr(out, name)))


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=64))
def test_parsers_on_arbitrary_bytes(garbage):
    for parse in PARSERS:
        try:
            parse(garbage)
        except ValidationError:
            pass


@settings(max_examples=200, deadline=None)
@given(name=st.text(min_size=1, max_size=255).filter(lambda s: s.strip() and "\x00" not in s),
       type_=st.text(max_size=30).filter(lambda s: "\x00" not in s),
       info=json_values)
def test_device_round_trip(name, type_, info):
    body = {"name": name, "type": type_, "label": None, "additionalInfo": info,
            "customerId": {"entityType": "CUSTOMER", "id": NULL_UUID}}
    try:
        parsed = Device.from_thingsboard(msgspec.json.encode(body))
    except ValidationError as e:  # only NUL nested inside additionalInfo
        assert "NUL" in str(e)
        return
    assert parsed.name == name and parsed.customer_id == NULL_UUID and parsed.id is None
    assert parsed.type == (type_ or "default")
    device = Device(id=str(uuid.uuid4()), tenant_id=str(uuid.uuid4()), customer_id=NULL_UUID, created_time=1,
                    name=parsed.name, type=parsed.type, additional_info=parsed.additional_info)
    again = Device.from_thingsboard(msgspec.json.encode(device.to_thingsboard()))
    assert (again.id, again.name, again.type, again.additional_info) == (device.id, name, parsed.type, info)


def test_what_thingsboard_clients_send():
    d = Device.from_thingsboard(b'{"name":"A1","type":"thermostat","label":"L","tenantId":{"id":"'
                                + NULL_UUID.encode() + b'","entityType":"TENANT"},"additionalInfo":{"x":1}}')
    assert (d.name, d.type, d.label, d.additional_info, d.id) == ("A1", "thermostat", "L", {"x": 1}, None)
    u = User.from_thingsboard({"email": "Customer@X.org", "authority": "CUSTOMER_USER",
                               "customerId": {"entityType": "CUSTOMER", "id": "6D0C4E80-0000-11EE-8080-808080808080"},
                               "firstName": "C", "additionalInfo": {}})
    assert u.email == "customer@x.org" and u.customer_id == "6d0c4e80-0000-11ee-8080-808080808080"
    c = DeviceCredentials.from_thingsboard({"deviceId": {"entityType": "DEVICE", "id": NULL_UUID.replace("8", "9")},
                                            "credentialsType": "ACCESS_TOKEN", "credentialsId": "tok"})
    assert isinstance(c, CredentialsInput) and c.token == "tok"
    assert Tenant.from_thingsboard({"title": "T", "email": "a@b"}).contact["email"] == "a@b"


@pytest.mark.parametrize("parse, body, message", [
    (Device.from_thingsboard, b"{", "Invalid request body"),
    (Device.from_thingsboard, b"[]", "must be a JSON object"),
    (Device.from_thingsboard, {}, "Device name should be specified!"),
    (Device.from_thingsboard, {"name": 5}, "must be a string"),
    (Device.from_thingsboard, {"name": "x", "type": 5}, r"Expected `str \| null`, got `int` - at `\$.type`"),
    (Device.from_thingsboard, {"name": "x" * 256}, "at most 255"),
    (Device.from_thingsboard, {"name": "x", "id": {"id": "nope"}}, "Invalid UUID string: nope"),
    (Device.from_thingsboard, {"name": "x", "id": {"entityType": "TENANT", "id": NULL_UUID}}, "expected entityType"),
    (Device.from_thingsboard, {"name": "x", "additionalInfo": {"a": "\x00"}}, "NUL"),
    (User.from_thingsboard, {"email": "no-at-sign", "authority": "SYS_ADMIN"}, "Invalid email address"),
    (User.from_thingsboard, {"email": "a@b", "authority": "ROOT"}, "authority must be one of"),
    (DeviceCredentials.from_thingsboard, {"credentialsType": "X509_CERTIFICATE", "credentialsId": "x"},
     "only ACCESS_TOKEN"),
    (DeviceCredentials.from_thingsboard, {"credentialsId": "has space"}, "spaces"),
    (DeviceCredentials.from_thingsboard, {}, "should be specified"),
    (Customer.from_thingsboard, {"title": ""}, "Customer title should be specified!"),
])
def test_bad_bodies(parse, body, message):
    with pytest.raises(ValidationError, match=message):
        parse(body)
