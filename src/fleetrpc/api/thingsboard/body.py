"""ThingsBoard's RPC request body -> the options of one call.

INTERIM: the dispatch helper's ``fleetrpc.dispatch.options.parse_rpc_body``
(returning ``CallOptions``) is the one parser of these rules; when it is
merged, this module becomes ``from ...dispatch.options import CallOptions,
parse_rpc_body`` and nothing else changes (same name, signature and field
names).
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import msgspec

from ...errors import ValidationError

__all__ = ["CallOptions", "parse_rpc_body"]


class CallOptions(msgspec.Struct, frozen=True, kw_only=True):
    method: str
    params: Any = msgspec.field(default_factory=dict)
    timeout_ms: int | None = None
    expiration_time: int | None = None
    oneway: bool = False
    persistent: bool = False
    retries: int | None = None
    additional_info: Any = None
    request_uuid: str | None = None


def _number(body: dict, field: str, maximum: int) -> int | None:
    value = body.get(field)
    if value is None or value == "":
        return None
    if type(value) is int and 0 <= value <= maximum:
        return value
    if type(value) is float and math.isfinite(value) and 0 <= value <= maximum:
        return int(value)
    if type(value) is str and value.strip().isdigit() and int(value) <= maximum:
        return int(value)
    raise ValidationError(f"{field} must be a whole number >= 0, not {value!r}"[:120])


def _flag(body: dict, field: str) -> bool:
    value = body.get(field, False)
    if value is True or value is False:
        return value
    if value is None:
        return False
    raise ValidationError(f"{field} must be true or false")


def parse_rpc_body(body: Any, *, oneway: bool | None = None) -> CallOptions:
    """Raises :class:`ValidationError` naming the field."""
    if type(body) is not dict:
        raise ValidationError("the request body must be a JSON object")
    method = body.get("method")
    if type(method) is not str or not method or len(method) > 128:
        raise ValidationError("method must be a non-empty string of at most 128 characters")
    request_uuid = body.get("requestUUID")
    if request_uuid is not None:
        try:
            request_uuid = str(uuid.UUID(str(request_uuid)))
        except ValueError:
            raise ValidationError("requestUUID must be a UUID") from None
    return CallOptions(
        method=method,
        params=body.get("params", {}) if body.get("params") is not None else {},
        timeout_ms=_number(body, "timeout", 10**12),
        expiration_time=_number(body, "expirationTime", 10**15),
        oneway=_flag(body, "oneway") if oneway is None else oneway,
        persistent=_flag(body, "persistent"),
        retries=_number(body, "retries", 1_000_000),
        additional_info=body.get("additionalInfo"),
        request_uuid=request_uuid,
    )
