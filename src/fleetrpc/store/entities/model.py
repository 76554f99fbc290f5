"""The entities as Python values and as ThingsBoard writes them.

Each entity is a msgspec Struct with ``to_thingsboard()`` (ThingsBoard's JSON
shape: ids as ``{"entityType", "id"}``, ``createdTime``, the null UUID for a
missing tenant or customer, ``additionalInfo``) and, where ThingsBoard takes
it as a request body, ``from_thingsboard(body)``, which validates a body
(bytes, str or an already decoded object) and returns an ``...Input``
struct whose fields are what the repositories take.  Bad input raises
:class:`~fleetrpc.errors.ValidationError` naming the field.

A missing tenant or customer is ThingsBoard's null UUID (:data:`NULL_UUID`)
everywhere, as in ThingsBoard: in the structs, the database and on the wire
(the parsers read an absent reference as the null UUID too).
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from typing import Any, Literal

import msgspec

from ...errors import ValidationError

__all__ = [
    "NULL_UUID",
    "is_gateway_info",
    "AUTHORITIES",
    "Authority",
    "CONTACT_FIELDS",
    "Contact",
    "Tenant",
    "Customer",
    "User",
    "Device",
    "DeviceCredentials",
    "TenantInput",
    "CustomerInput",
    "UserInput",
    "DeviceInput",
    "CredentialsInput",
    "check_uuid",
    "owner_id",
    "check_token",
    "new_access_token",
    "device_profile_id",
]

#: ThingsBoard's "no tenant / no customer" id (``EntityId.NULL_UUID``).
NULL_UUID = "13814000-1dd2-11b2-8080-808080808080"

Authority = Literal["SYS_ADMIN", "TENANT_ADMIN", "CUSTOMER_USER"]
AUTHORITIES: tuple[str, ...] = ("SYS_ADMIN", "TENANT_ADMIN", "CUSTOMER_USER")

#: Longest name, title, type, label, email or token accepted (ThingsBoard's
#: ``@Length`` default on entity names is 255).
MAX_TEXT = 255

# Device profiles are not modelled: a device's profile is named after its
# type, and its id is derived from (tenant, type) so that it is stable.
_PROFILE_NAMESPACE = uuid.UUID("6f1c2a43-8f0e-4d4c-9d51-f1ee7a0c0001")

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# ThingsBoard generates 20 random alphanumerics (StringUtils.randomAlphanumeric).
_TOKEN_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_TOKEN_LENGTH = 20
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id() -> str:
    return str(uuid.uuid4())


def new_access_token() -> str:
    """A random access token as ThingsBoard makes them: 20 alphanumerics
    (~119 bits from :mod:`secrets`)."""
    return "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(_TOKEN_LENGTH))


def device_profile_id(tenant_id: str, type_: str) -> str:
    """The id fleetrpc shows as a device's ``deviceProfileId``: derived from
    its tenant and type (profiles are not modelled; one per type)."""
    return str(uuid.uuid5(_PROFILE_NAMESPACE, f"{tenant_id}/{type_}"))


# -- checks -------------------------------------------------------------------------


def check_uuid(what: str, value: object) -> str:
    """``value`` as a canonical (lower-case) UUID string, or ValidationError
    with ThingsBoard's message ``Invalid UUID string: ...``."""
    if not isinstance(value, str) or not _UUID.match(value):
        shown = value if isinstance(value, str) and len(value) <= 100 else repr(value)[:100]
        raise ValidationError(f"{what}: Invalid UUID string: {shown}")
    return value.lower()


def owner_id(what: str, value: object) -> str:
    """A tenant or customer id: like :func:`check_uuid`, but ``None`` (no
    owner) gives :data:`NULL_UUID`."""
    return NULL_UUID if value is None else check_uuid(what, value)


def findable(value: object) -> bool:
    """Whether a lookup by ``value`` could find anything: a string without
    NUL, which no stored text holds (``_check_text`` refuses it, and
    PostgreSQL fails the query instead of finding nothing)."""
    return isinstance(value, str) and "\x00" not in value


def _check_text(what: str, value: object, *, required: bool, max_len: int = MAX_TEXT) -> str | None:
    if value is None:
        if required:
            raise ValidationError(f"{what} should be specified!")
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise ValidationError(f"{what} should be specified!")
    if len(value) > max_len:
        raise ValidationError(f"{what} length must be at most {max_len} characters")
    if "\x00" in value:
        # PostgreSQL refuses NUL in text; refuse it everywhere alike.
        raise ValidationError(f"{what} must not contain the NUL character")
    return value


def check_token(token: object) -> str:
    """An access token: 1-255 characters, no whitespace or control
    characters (it is an MQTT username and goes into broker ACLs)."""
    _check_text("Device credentials id", token, required=True)
    assert isinstance(token, str)
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in token):
        raise ValidationError("Device credentials id must not contain spaces or control characters")
    return token


def _check_json(what: str, value: Any, depth: int = 0) -> Any:
    """Any JSON value without NUL characters (PostgreSQL's jsonb refuses
    them), at most 64 levels deep."""
    if depth > 64:
        raise ValidationError(f"{what} is nested too deeply")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValidationError(f"{what} must not contain the NUL character")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_json(what, k, depth + 1)
            _check_json(what, v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_json(what, v, depth + 1)
    return value


def encode_json(value: Any) -> str | None:
    """A JSON column's text (None stays SQL NULL)."""
    return None if value is None else _json_encode(value).decode()


def decode_json(text: Any) -> Any:
    if text is None:
        return None
    return _json_decode(text)


def _entity(entity_type: str, id_: str) -> dict[str, str]:
    return {"entityType": entity_type, "id": id_}


# -- entities -------------------------------------------------------------------------


class Contact(msgspec.Struct, kw_only=True):
    """The address fields tenants and customers share (ThingsBoard's
    ``ContactBased``): in the entities, their request bodies and the API's
    JSON shapes alike."""

    country: str | None = None
    state: str | None = None
    city: str | None = None
    address: str | None = None
    address2: str | None = None
    zip: str | None = None
    phone: str | None = None
    email: str | None = None


CONTACT_FIELDS: tuple[str, ...] = Contact.__struct_fields__


class Tenant(Contact, kw_only=True):
    """A tenant (ThingsBoard's ``Tenant``); the address fields are
    :class:`Contact`'s."""

    id: str
    created_time: int
    title: str
    region: str | None = None
    additional_info: Any = None
    version: int = 1

    def to_thingsboard(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": _entity("TENANT", self.id),
            "createdTime": self.created_time,
            "title": self.title,
            "name": self.title,
            "region": self.region,
            "tenantProfileId": _entity("TENANT_PROFILE", device_profile_id(NULL_UUID, "default")),
        }
        for field in CONTACT_FIELDS:
            out[field] = getattr(self, field)
        out["additionalInfo"] = self.additional_info
        out["version"] = self.version
        return out

    @staticmethod
    def from_thingsboard(body: Any) -> TenantInput:
        return TenantInput.parse(body)


class Customer(Contact, kw_only=True):
    """A customer of a tenant (ThingsBoard's ``Customer``); the address
    fields are :class:`Contact`'s."""

    id: str
    tenant_id: str
    created_time: int
    title: str
    additional_info: Any = None
    version: int = 1

    def to_thingsboard(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": _entity("CUSTOMER", self.id),
            "createdTime": self.created_time,
            "title": self.title,
            "name": self.title,
            "tenantId": _entity("TENANT", self.tenant_id),
        }
        for field in CONTACT_FIELDS:
            out[field] = getattr(self, field)
        out["additionalInfo"] = self.additional_info
        out["externalId"] = None
        out["version"] = self.version
        return out

    @staticmethod
    def from_thingsboard(body: Any) -> CustomerInput:
        return CustomerInput.parse(body)


class User(msgspec.Struct, kw_only=True):
    """A user (ThingsBoard's ``User``); never carries the password hash.

    ``tenant_id`` is :data:`NULL_UUID` for a system administrator,
    ``customer_id`` :data:`NULL_UUID` for everyone but customer users.  ``locked_until`` (epoch ms, 0 when
    never locked) and ``failed_login_attempts`` are the lockout bookkeeping
    (:meth:`UserRepository.record_failed_login`).
    """

    id: str
    tenant_id: str
    customer_id: str
    created_time: int
    email: str
    authority: str
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    additional_info: Any = None
    enabled: bool = True
    has_password: bool = False
    failed_login_attempts: int = 0
    locked_until: int = 0
    last_login_time: int | None = None
    version: int = 1

    def is_locked(self, now: int | None = None) -> bool:
        """Whether the account is locked at ``now`` (epoch ms)."""
        return self.locked_until > (now_ms() if now is None else now)

    def to_thingsboard(self) -> dict[str, Any]:
        info = dict(self.additional_info) if isinstance(self.additional_info, dict) else {}
        if self.last_login_time is not None:
            info.setdefault("lastLoginTs", self.last_login_time)
        info.setdefault("failedLoginAttempts", self.failed_login_attempts)
        info.setdefault("userCredentialsEnabled", self.enabled and self.has_password)
        return {
            "id": _entity("USER", self.id),
            "createdTime": self.created_time,
            "tenantId": _entity("TENANT", self.tenant_id),
            "customerId": _entity("CUSTOMER", self.customer_id),
            "email": self.email,
            "authority": self.authority,
            "firstName": self.first_name,
            "lastName": self.last_name,
            "phone": self.phone,
            "name": self.email,
            "additionalInfo": info,
            "version": self.version,
        }

    @staticmethod
    def from_thingsboard(body: Any) -> UserInput:
        return UserInput.parse(body)


def is_gateway_info(additional_info: Any) -> bool:
    """Whether a device's ``additionalInfo`` makes it a gateway."""
    return isinstance(additional_info, dict) and additional_info.get("gateway") is True


class Device(msgspec.Struct, kw_only=True):
    """A device (ThingsBoard's ``Device``).

    ``last_activity_time`` is the last time (epoch ms) the server saw the
    device (:meth:`DeviceRepository.touch_activity`), None when never.
    """

    id: str
    tenant_id: str
    customer_id: str
    created_time: int
    name: str
    type: str = "default"
    label: str | None = None
    additional_info: Any = None
    version: int = 1
    last_activity_time: int | None = None

    @property
    def is_gateway(self) -> bool:
        """ThingsBoard's gateway flag, ``additionalInfo.gateway``: the device
        may speak for other devices of its tenant (the gateway API)."""
        return is_gateway_info(self.additional_info)

    def to_thingsboard(self) -> dict[str, Any]:
        return {
            "id": _entity("DEVICE", self.id),
            "createdTime": self.created_time,
            "tenantId": _entity("TENANT", self.tenant_id),
            "customerId": _entity("CUSTOMER", self.customer_id),
            "name": self.name,
            "type": self.type,
            "label": self.label,
            "deviceProfileId": _entity("DEVICE_PROFILE", device_profile_id(self.tenant_id, self.type)),
            "deviceData": {
                "configuration": {"type": "DEFAULT"},
                "transportConfiguration": {"type": "DEFAULT"},
            },
            "firmwareId": None,
            "softwareId": None,
            "externalId": None,
            "version": self.version,
            "additionalInfo": self.additional_info,
        }

    @staticmethod
    def from_thingsboard(body: Any) -> DeviceInput:
        return DeviceInput.parse(body)


class DeviceCredentials(msgspec.Struct, kw_only=True):
    """A device's access-token credential (ThingsBoard's ``DeviceCredentials``)."""

    id: str
    device_id: str
    created_time: int
    credentials_id: str
    credentials_type: str = "ACCESS_TOKEN"
    version: int = 1

    def to_thingsboard(self) -> dict[str, Any]:
        # DeviceCredentialsId is not an EntityId: no entityType.
        return {
            "id": {"id": self.id},
            "createdTime": self.created_time,
            "deviceId": _entity("DEVICE", self.device_id),
            "credentialsType": self.credentials_type,
            "credentialsId": self.credentials_id,
            "credentialsValue": None,
            "version": self.version,
        }

    @staticmethod
    def from_thingsboard(body: Any) -> CredentialsInput:
        return CredentialsInput.parse(body)


# -- request bodies -------------------------------------------------------------------


class _IdBody(msgspec.Struct):
    id: Any = None
    entityType: Any = None


def _load(what: str, body: Any, schema: type) -> Any:
    """Decode ``body`` (bytes, str or decoded JSON) into ``schema``; any
    failure is a ValidationError that says where."""
    if isinstance(body, (bytes, bytearray, memoryview, str)):
        try:
            body = _json_decode(body)
        except msgspec.DecodeError as e:
            raise ValidationError(f"Invalid request body: {e}") from None
    if not isinstance(body, dict):
        raise ValidationError(f"Invalid request body: a {what} must be a JSON object")
    try:
        return msgspec.convert(body, schema, strict=True)
    except msgspec.ValidationError as e:
        raise ValidationError(f"Invalid {what}: {e}") from None


def _ref(what: str, ref: _IdBody | None, entity_type: str) -> str | None:
    """An ``{"entityType", "id"}`` reference as its id (None when absent);
    the entityType, when given, must be ``entity_type``."""
    if ref is None:
        return None
    if ref.entityType is not None and ref.entityType != entity_type:
        raise ValidationError(f"{what}: expected entityType {entity_type!r}, got {ref.entityType!r}")
    return check_uuid(f"{what}.id", ref.id)


def _owner(what: str, ref: _IdBody | None, entity_type: str) -> str:
    """A tenant or customer reference: :data:`NULL_UUID` when absent."""
    out = _ref(what, ref, entity_type)
    return NULL_UUID if out is None else out


def _own_id(what: str, ref: _IdBody | None, entity_type: str) -> str | None:
    """The body's own id (None when absent: a create).  The null UUID is no
    entity's id: refused."""
    out = _ref(what, ref, entity_type)
    if out == NULL_UUID:
        raise ValidationError(f"{what}: the null UUID is not an entity id")
    return out


def _contact(body: Contact) -> dict[str, str | None]:
    return {f: _check_text(f, getattr(body, f), required=False) for f in CONTACT_FIELDS}


class _TenantBody(Contact):
    id: _IdBody | None = None
    title: Any = None
    region: str | None = None
    additionalInfo: Any = None
    version: int | None = None


class TenantInput(msgspec.Struct, kw_only=True):
    """A validated ``POST /api/tenant`` body.  ``id`` set: an update."""

    id: str | None
    title: str
    region: str | None = None
    contact: dict[str, str | None] = msgspec.field(default_factory=dict)
    additional_info: Any = None

    @classmethod
    def parse(cls, body: Any) -> TenantInput:
        b = _load("tenant", body, _TenantBody)
        title = _check_text("Tenant title", b.title, required=True)
        assert title is not None
        return cls(
            id=_own_id("id", b.id, "TENANT"),
            title=title,
            region=_check_text("region", b.region, required=False),
            contact=_contact(b),
            additional_info=_check_json("additionalInfo", b.additionalInfo),
        )


class _CustomerBody(Contact):
    id: _IdBody | None = None
    title: Any = None
    tenantId: _IdBody | None = None
    additionalInfo: Any = None
    version: int | None = None


class CustomerInput(msgspec.Struct, kw_only=True):
    """A validated ``POST /api/customer`` body (the tenant is the caller's,
    never the body's).  ``id`` set: an update."""

    id: str | None
    title: str
    contact: dict[str, str | None] = msgspec.field(default_factory=dict)
    additional_info: Any = None

    @classmethod
    def parse(cls, body: Any) -> CustomerInput:
        b = _load("customer", body, _CustomerBody)
        title = _check_text("Customer title", b.title, required=True)
        assert title is not None
        return cls(
            id=_own_id("id", b.id, "CUSTOMER"),
            title=title,
            contact=_contact(b),
            additional_info=_check_json("additionalInfo", b.additionalInfo),
        )


class _UserBody(msgspec.Struct):
    id: _IdBody | None = None
    email: Any = None
    authority: Any = None
    tenantId: _IdBody | None = None
    customerId: _IdBody | None = None
    firstName: str | None = None
    lastName: str | None = None
    phone: str | None = None
    additionalInfo: Any = None
    version: int | None = None


class UserInput(msgspec.Struct, kw_only=True):
    """A validated ``POST /api/user`` body.  Whether the caller may create
    that authority in that tenant/customer is the API's decision."""

    id: str | None
    email: str
    authority: str
    tenant_id: str
    customer_id: str
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    additional_info: Any = None

    @classmethod
    def parse(cls, body: Any) -> UserInput:
        b = _load("user", body, _UserBody)
        return cls(
            id=_own_id("id", b.id, "USER"),
            email=check_email(b.email),
            authority=check_authority(b.authority),
            tenant_id=_owner("tenantId", b.tenantId, "TENANT"),
            customer_id=_owner("customerId", b.customerId, "CUSTOMER"),
            first_name=_check_text("firstName", b.firstName, required=False),
            last_name=_check_text("lastName", b.lastName, required=False),
            phone=_check_text("phone", b.phone, required=False),
            additional_info=_check_json("additionalInfo", b.additionalInfo),
        )


def check_email(email: object) -> str:
    """An email as stored: lower-case, one ``@``, no spaces, at most 255."""
    _check_text("User email", email, required=True)
    assert isinstance(email, str)
    if not _EMAIL.match(email):
        raise ValidationError(f"Invalid email address format '{email}'!")
    return email.lower()


def check_authority(authority: object) -> str:
    if authority not in AUTHORITIES:
        raise ValidationError(f"User authority must be one of {', '.join(AUTHORITIES)}, got {authority!r}")
    return authority  # type: ignore[return-value]


class _DeviceBody(msgspec.Struct):
    id: _IdBody | None = None
    name: Any = None
    type: str | None = None
    label: str | None = None
    tenantId: _IdBody | None = None
    customerId: _IdBody | None = None
    additionalInfo: Any = None
    version: int | None = None


class DeviceInput(msgspec.Struct, kw_only=True):
    """A validated ``POST /api/device`` body (the tenant is the caller's).
    ``id`` set: an update.  ``customer_id`` is what the body says; ThingsBoard
    ignores it on create (assignment has its own endpoint)."""

    id: str | None
    name: str
    type: str = "default"
    label: str | None = None
    customer_id: str = NULL_UUID
    additional_info: Any = None

    @classmethod
    def parse(cls, body: Any) -> DeviceInput:
        b = _load("device", body, _DeviceBody)
        name = _check_text("Device name", b.name, required=True)
        assert name is not None
        type_ = _check_text("Device type", b.type, required=False)
        return cls(
            id=_own_id("id", b.id, "DEVICE"),
            name=name,
            type=type_ if type_ else "default",
            label=_check_text("Device label", b.label, required=False),
            customer_id=_owner("customerId", b.customerId, "CUSTOMER"),
            additional_info=_check_json("additionalInfo", b.additionalInfo),
        )


class _CredentialsBody(msgspec.Struct):
    id: _IdBody | None = None
    deviceId: _IdBody | None = None
    credentialsType: Any = "ACCESS_TOKEN"
    credentialsId: Any = None
    credentialsValue: Any = None
    version: int | None = None


class CredentialsInput(msgspec.Struct, kw_only=True):
    """A validated ``POST /api/device/credentials`` body (or the
    ``credentials`` part of ``POST /api/device-with-credentials``, where
    ``device_id`` may be absent).  Only ACCESS_TOKEN credentials exist here."""

    device_id: str | None
    token: str

    @classmethod
    def parse(cls, body: Any) -> CredentialsInput:
        b = _load("device credentials", body, _CredentialsBody)
        if b.credentialsType != "ACCESS_TOKEN":
            raise ValidationError(
                f"Unsupported credentials type {b.credentialsType!r}: only ACCESS_TOKEN is supported"
            )
        return cls(device_id=_ref("deviceId", b.deviceId, "DEVICE"), token=check_token(b.credentialsId))
