"""What a persistent call is checked against before anything is stored.

Two stand-ins the lead may swap for the dispatch package's own when it
lands (``fleetrpc.dispatch.options.CallOptions`` and the dispatcher's
payload check): :func:`check_call_options` and :func:`request_size`.  Both
raise :class:`~fleetrpc.errors.ValidationError` only, so the swap changes
no caller.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from ..errors import ValidationError

__all__ = ["check_call_options", "request_size"]

_encode = msgspec.json.Encoder().encode


def _number(name: str, value: Any, *, integer: bool) -> int | None:
    """None, "" -> None (the default); an int, a finite float or a numeric
    string -> an int >= 0; anything else (bool, NaN, inf, "x", < 0) ->
    ValidationError."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValidationError(f"{name} must be a number, not {value!r}")
    if isinstance(value, str):
        try:
            value = int(value) if integer else float(value)
        except ValueError:
            raise ValidationError(f"{name} must be a number, not {value!r}") from None
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(f"{name} must be a finite number, not {value!r}")
        if integer and not value.is_integer():
            raise ValidationError(f"{name} must be a whole number, not {value!r}")
        value = int(value)
    if not isinstance(value, int):
        raise ValidationError(f"{name} must be a number, not {value!r}")
    if value < 0:
        raise ValidationError(f"{name} must be >= 0, not {value!r}")
    return value


def check_call_options(
    timeout_ms: Any, retries: Any, oneway: Any, expiration_time: Any
) -> tuple[int | None, int | None, bool, int | None]:
    """A persistent call's options, checked once: ``(timeout_ms, retries,
    oneway, expiration_time)`` with None for "the default".

    ThingsBoard's rules: ``retries`` takes numbers and numeric strings,
    empty (None or "") means the default (no resend, capped by
    ``Settings.max_retries`` when given); ``timeout_ms`` likewise (finite, in
    ms); ``oneway`` is a bool -- ``True`` or ``False``, never a string or a
    number that would mean one or the other by accident.
    """
    if oneway is not True and oneway is not False:
        raise ValidationError(f"oneway must be true or false, not {oneway!r}")
    return (
        _number("timeout", timeout_ms, integer=False),
        _number("retries", retries, integer=True),
        oneway,
        _number("expirationTime", expiration_time, integer=False),
    )


def request_size(method: str, params: Any, rpc_id: str) -> int:
    """Bytes of the request the dispatcher will publish for this call (its
    JSON body with the call's id), to hold against ``max_payload`` before
    the call is stored."""
    return len(_encode({"method": method, "params": params, "id": rpc_id}))
