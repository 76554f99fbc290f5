"""ThingsBoard's entity endpoints: what they share.

The endpoints live by entity: :mod:`.tenants` (tenants and customers),
:mod:`.users` (users and activation), :mod:`.devices` (devices,
credentials, assignment, DeviceInfo, online state).  Roles and ownership
are decided in :mod:`.access` only.  Bodies are validated by the entity
parsers of ``fleetrpc.store.entities`` (``DeviceInput.parse`` ...), answers
are the entities' ``to_thingsboard()``; the msgspec Structs below describe
the same shapes for the OpenAPI document (ThingsBoard's JSON: ids as
``{"entityType", "id"}``, ``createdTime``, pages as ``PageData``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from ...store.entities.model import Contact
from ...wire import BAD_JSON

__all__ = ["json_reply", "read_body"]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def json_reply(value: Any) -> web.Response:
    return web.Response(body=_encode(value), content_type="application/json")


async def read_body(request: web.Request) -> Any:
    """The request's JSON body, decoded; 400 (errorCode 31) when it is not JSON."""
    from ..errors import ApiError

    try:
        return _decode(await request.read())
    except BAD_JSON:
        raise ApiError.bad_request("Invalid request body") from None


# -- the JSON shapes (OpenAPI) ---------------------------------------------------------


class EntityId(msgspec.Struct):
    """An entity reference as ThingsBoard writes every id."""

    entityType: str
    id: str


class PlainId(msgspec.Struct):
    """A DeviceCredentialsId: not an EntityId, no entityType."""

    id: str


class DeviceJson(msgspec.Struct):
    """ThingsBoard's ``Device``."""

    id: EntityId
    createdTime: int
    tenantId: EntityId
    customerId: EntityId
    name: str
    type: str
    label: str | None
    deviceProfileId: EntityId
    deviceData: dict[str, Any]
    firmwareId: EntityId | None
    softwareId: EntityId | None
    externalId: EntityId | None
    version: int
    additionalInfo: Any


class DeviceInfoJson(DeviceJson):
    """ThingsBoard's ``DeviceInfo``: a Device plus its customer's title, its
    profile's name and whether it is connected now; plus its last activity
    (epoch ms; null when never seen) and, fleetrpc's own, where it is
    connected."""

    customerTitle: str | None
    customerIsPublic: bool
    deviceProfileName: str
    active: bool
    lastActivityTime: int | None
    connectedVia: Annotated[str | None, msgspec.Meta(description=(
        "fleetrpc's, not ThingsBoard's: where the device is connected now, \"broker\" or the id of the "
        "node whose device endpoint has it; null while it is offline"))] = None


class DeviceCredentialsJson(msgspec.Struct):
    """ThingsBoard's ``DeviceCredentials`` (ACCESS_TOKEN only here)."""

    id: PlainId
    createdTime: int
    deviceId: EntityId
    credentialsType: str
    credentialsId: str
    credentialsValue: str | None
    version: int


class TenantJson(Contact, kw_only=True):
    """ThingsBoard's ``Tenant``."""

    id: EntityId
    createdTime: int
    title: str
    name: str
    region: str | None
    tenantProfileId: EntityId
    additionalInfo: Any
    version: int


class CustomerJson(Contact, kw_only=True):
    """ThingsBoard's ``Customer``."""

    id: EntityId
    createdTime: int
    title: str
    name: str
    tenantId: EntityId
    additionalInfo: Any
    externalId: EntityId | None
    version: int


class TenantInfoJson(TenantJson, kw_only=True):
    """ThingsBoard's ``TenantInfo``: a Tenant plus its profile's name (one
    profile here, "Default")."""

    tenantProfileName: str


class CustomerShortInfoJson(msgspec.Struct):
    """``GET /api/customer/{id}/shortInfo``: the title and whether it is
    the public customer (never, here)."""

    title: str
    isPublic: bool


class EntitySubtypeJson(msgspec.Struct):
    """ThingsBoard's ``EntitySubtype``: one device type of a tenant."""

    tenantId: EntityId
    entityType: str
    type: str


class UserJson(msgspec.Struct):
    """ThingsBoard's ``User``."""

    id: EntityId
    createdTime: int
    tenantId: EntityId
    customerId: EntityId
    email: str
    authority: str
    firstName: str | None
    lastName: str | None
    phone: str | None
    name: str
    additionalInfo: Any
    version: int


class _Page(msgspec.Struct):
    totalPages: int
    totalElements: int
    hasNext: bool


class DevicePage(_Page):
    data: list[DeviceJson]


class DeviceInfoPage(_Page):
    data: list[DeviceInfoJson]


class TenantPage(_Page):
    data: list[TenantJson]


class TenantInfoPage(_Page):
    data: list[TenantInfoJson]


class CustomerPage(_Page):
    data: list[CustomerJson]


# -- request bodies (OpenAPI; the entity parsers do the checking) ------------------------


class DeviceBody(msgspec.Struct, kw_only=True):
    """``POST /api/device``: ``id`` set updates that device."""

    id: EntityId | None = None
    name: str
    type: str | None = None
    label: str | None = None
    customerId: EntityId | None = None
    additionalInfo: Any = None


class CredentialsBody(msgspec.Struct, kw_only=True):
    """A device's credentials (ACCESS_TOKEN: ``credentialsId`` is the token)."""

    id: PlainId | None = None
    deviceId: EntityId | None = None
    credentialsType: Literal["ACCESS_TOKEN"] = "ACCESS_TOKEN"
    credentialsId: str
    credentialsValue: str | None = None


class DeviceWithCredentialsBody(msgspec.Struct):
    """``POST /api/device-with-credentials``."""

    device: DeviceBody
    credentials: CredentialsBody


class TenantBody(Contact, kw_only=True):
    """``POST /api/tenant``: ``id`` set updates that tenant."""

    id: EntityId | None = None
    title: str
    region: str | None = None
    additionalInfo: Any = None


class CustomerBody(Contact, kw_only=True):
    """``POST /api/customer``: ``id`` set updates that customer."""

    id: EntityId | None = None
    title: str
    additionalInfo: Any = None


class UserBody(msgspec.Struct, kw_only=True):
    """``POST /api/user``: ``id`` set updates that user's names, phone, info."""

    id: EntityId | None = None
    email: str
    authority: Literal["SYS_ADMIN", "TENANT_ADMIN", "CUSTOMER_USER"]
    tenantId: EntityId | None = None
    customerId: EntityId | None = None
    firstName: str | None = None
    lastName: str | None = None
    phone: str | None = None
    additionalInfo: Any = None


class ActivateBody(msgspec.Struct):
    """``POST /api/noauth/activate``."""

    activateToken: str
    password: str
