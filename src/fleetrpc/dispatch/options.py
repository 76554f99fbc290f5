"""The options of one call, checked once, where they enter fleetrpc.

Every way of making a call ends up here: the REST API (ThingsBoard's body,
:func:`parse_rpc_body`), the persistent engine and the dispatcher's own
arguments (the ``check_*`` functions).  Whatever is wrong becomes a
:class:`~fleetrpc.errors.ValidationError` naming the field, never a driver
error, a raw ``ValueError`` or a NaN sent on as ``null``.

Units.  A duration in the Python API is in seconds (``timeout=2.5``), as in
asyncio, unless its name says otherwise (``timeout_ms``, ``tick_ms``,
``ttl_days``); a point in time is epoch milliseconds (``expiration_time``),
as in ThingsBoard.  ThingsBoard's REST body is in milliseconds throughout,
so :class:`CallOptions` is too (``timeout_ms``).

ThingsBoard's rules, as its REST controller applies them
(``AbstractRpcController.handleDeviceRPCRequest``):

- ``method`` is required, ``params`` optional (``{}`` when absent);
- ``timeout`` (ms) defaults to the server's default (10000) and is raised to
  its minimum (5000); ``expirationTime`` (epoch ms) overrides it;
- ``persistent`` and ``oneway`` are true only when they are JSON ``true``;
- ``retries`` is a number or a numeric string; absent, ``null`` or ``""``
  means the server default, ``Settings.default_retries`` (0: a persistent
  call is not retried unless asked, as in ThingsBoard), and it is capped at
  ``Settings.max_retries`` (5);
- ``additionalInfo`` is any JSON, ``requestUUID`` a UUID that becomes the id.

Where ThingsBoard silently reads nonsense as a value (Jackson turns
``"timeout": "abc"`` into 0 and ``"persistent": "yes"`` into false), fleetrpc
answers with a ValidationError instead: a caller who sent ``"persistent":
"true"`` must learn that the call was not stored, not find out later.
"""

from __future__ import annotations

import math
import re
import uuid
from enum import Enum
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import ValidationError

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "CallOptions",
    "NO_PARAMS",
    "MAX_TIMEOUT_MS",
    "parse_rpc_body",
    "check_flag",
    "check_timeout_s",
    "check_timeout_ms",
    "check_retries",
    "check_expiration_time",
    "check_request_uuid",
    "check_method",
    "effective_timeout_ms",
    "effective_retries",
    "OfflinePolicy",
    "check_offline",
]

#: The longest timeout accepted, in ms (about 31 years): anything longer is
#: a mistake, and every deadline must stay a finite float on the loop clock.
MAX_TIMEOUT_MS = 10**12
#: Latest expiration time accepted (epoch ms, the year 33658); below 2**53
#: so that it survives every JSON parser.
MAX_EPOCH_MS = 10**15
#: Longest method name (one topic level's worth, like every id).
MAX_METHOD_LENGTH = 128

_INT_STRING = re.compile(r"\s*\+?([0-9]{1,18})\s*\Z")


#: ``params`` left out of a call: the device gets ``{}`` (ThingsBoard's
#: default).  ``None`` is a value like any other: the device gets JSON
#: ``null``, as ThingsBoard's switch and knob widgets send ``getValue``.
NO_PARAMS = msgspec.UNSET


class CallOptions(msgspec.Struct, frozen=True, kw_only=True):
    """One call's options, checked: ThingsBoard's REST body, field by field.

    ``None`` means "the server's default" wherever it appears; the
    ``effective_*`` functions turn that into the value used."""

    #: The procedure to run on the device.
    method: str
    #: Its arguments: any JSON value.
    params: Any = msgspec.field(default_factory=dict)
    #: One attempt's transport timeout in ms; ``None``: ``Settings.default_timeout_ms``.
    timeout_ms: int | None = None
    #: When the call ends whatever happens, epoch ms; overrides ``timeout_ms``
    #: as the call's deadline.
    expiration_time: int | None = None
    #: No reply expected.
    oneway: bool = False
    #: Stored, delivered when the device is online, survives restarts.
    persistent: bool = False
    #: Further attempts after a timeout (persistent calls); ``None``: the default.
    retries: int | None = None
    #: Any JSON, kept with a persistent call.
    additional_info: Any = None
    #: A client-chosen id for a persistent call (canonical UUID text).
    request_uuid: str | None = None


# -- single fields ------------------------------------------------------------


def check_flag(value: Any, field: str) -> bool:
    """A boolean option: ``True`` or ``False`` and nothing else (not 0,
    ``"false"``, ``None``)."""
    if value is True or value is False:
        return value
    raise ValidationError(f"{field} must be true or false, not {_show(value)}")


def check_method(value: Any) -> str:
    """A method name: a non-empty string of at most 128 characters."""
    if type(value) is not str or not value:
        raise ValidationError(f"method must be a non-empty string, not {_show(value)}")
    if len(value) > MAX_METHOD_LENGTH:
        raise ValidationError(f"method is longer than {MAX_METHOD_LENGTH} characters")
    return value


def check_timeout_s(value: Any, field: str = "timeout") -> float | None:
    """A timeout in seconds (Python API): ``None`` (the default) or a finite
    number >= 0.  0 and short ones are valid: they are raised to the minimum."""
    if value is None:
        return None
    t = type(value)
    if (t is float or t is int) and 0 <= value <= MAX_TIMEOUT_MS / 1000:
        return value  # NaN fails the comparison
    raise ValidationError(
        f"{field} must be a number of seconds between 0 and {MAX_TIMEOUT_MS // 1000}, not {_show(value)}"
    )


def check_timeout_ms(value: Any, field: str = "timeout") -> int | None:
    """A timeout in milliseconds: ``None`` or ``""`` (the default), a finite
    number >= 0 (fractions dropped) or a string of digits."""
    return _whole_number(value, field, "milliseconds", MAX_TIMEOUT_MS)


def check_retries(value: Any, field: str = "retries") -> int | None:
    """Retries: ``None`` or ``""`` (the server default), a whole number >= 0
    or a string of digits (ThingsBoard reads ``"3"`` as 3)."""
    return _whole_number(value, field, "retries", 1_000_000, fractions=False)


def check_expiration_time(value: Any, field: str = "expirationTime") -> int | None:
    """An expiration time, epoch ms: ``None`` or ``""`` (none), a whole
    number >= 0 or a string of digits."""
    return _whole_number(value, field, "epoch milliseconds", MAX_EPOCH_MS)


def check_request_uuid(value: Any, field: str = "requestUUID") -> str | None:
    """A client-chosen RPC id: ``None`` or a UUID string; returned in the
    canonical lower-case form."""
    if value is None:
        return None
    if type(value) is str and 32 <= len(value) <= 45:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise ValidationError(f"{field} must be a UUID, not {_show(value)}")


def _whole_number(value: Any, field: str, unit: str, maximum: int, fractions: bool = True) -> int | None:
    if value is None:
        return None
    t = type(value)
    if t is int:
        if 0 <= value <= maximum:
            return value
    elif t is float:
        if math.isfinite(value) and 0 <= value <= maximum and (fractions or value.is_integer()):
            return int(value)
    elif t is str:
        if not value.strip():
            return None  # "" means the default, as an absent field does
        m = _INT_STRING.match(value)
        if m is not None and int(m.group(1)) <= maximum:
            return int(m.group(1))
    raise ValidationError(f"{field} must be a whole number of {unit} between 0 and {maximum}, not {_show(value)}")


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


# -- the REST body ------------------------------------------------------------

def parse_rpc_body(body: Any, *, oneway: bool | None = None) -> CallOptions:
    """ThingsBoard's RPC body (decoded JSON) as :class:`CallOptions`.

    ``oneway`` comes from the URL (``/api/rpc/oneway/...``) and wins over a
    ``"oneway"`` field in the body.  Unknown fields are ignored, as
    ThingsBoard does.  ``extraInfo`` (the name the RPC guide of a
    ThingsBoard-derived platform gives the field) is read as
    ``additionalInfo`` when that is absent.  Raises :class:`ValidationError`
    naming the field."""
    if type(body) is not dict:
        raise ValidationError(f"the request body must be a JSON object, not {type(body).__name__}")
    if "method" not in body:
        raise ValidationError("method is required")
    method = check_method(body["method"])
    params = body["params"] if "params" in body else {}
    body_oneway = body.get("oneway")
    body_oneway = False if body_oneway is None else check_flag(body_oneway, "oneway")
    persistent = body.get("persistent")
    return CallOptions(
        method=method,
        params=params,
        timeout_ms=check_timeout_ms(body.get("timeout"), "timeout"),
        expiration_time=check_expiration_time(body.get("expirationTime")),
        oneway=body_oneway if oneway is None else check_flag(oneway, "oneway"),
        persistent=False if persistent is None else check_flag(persistent, "persistent"),
        retries=check_retries(body.get("retries")),
        additional_info=body["additionalInfo"] if "additionalInfo" in body else body.get("extraInfo"),
        request_uuid=check_request_uuid(body.get("requestUUID")),
    )


# -- defaults -----------------------------------------------------------------


def effective_timeout_ms(timeout_ms: int | None, settings: "Settings") -> int:
    """The timeout used, in ms: the default when ``None``, never below the
    minimum (ThingsBoard: default 10000, minimum 5000)."""
    t = settings.default_timeout_ms if timeout_ms is None else timeout_ms
    return max(t, settings.min_timeout_ms)


def effective_retries(retries: int | None, settings: "Settings") -> int:
    """The retries used: the default when ``None``, at most ``max_retries``."""
    r = settings.default_retries if retries is None else retries
    return min(r, settings.max_retries)


# -- calls to devices that are not online -------------------------------------


class OfflinePolicy(str, Enum):
    """What a lightweight call to a device that is not online does.

    ``FAIL`` (the default): :class:`~fleetrpc.errors.DeviceOfflineError` at
    once.  A caller learns in microseconds instead of after the timeout, a
    fan-out's offline devices cost nothing, and reaching devices that come
    later is what persistent calls are for.

    ``WAIT`` (ThingsBoard's behaviour): the call waits in the device's queue
    until the device comes online, then is sent; if the deadline passes
    first it fails with DeviceOfflineError (ThingsBoard: 409 in v1, 504 in
    v2), not with a timeout.  Set it per call (``offline="wait"``) or for a
    node (``Settings.offline``) to run ThingsBoard's clients unchanged."""

    FAIL = "fail"
    WAIT = "wait"


def check_offline(value: Any) -> OfflinePolicy:
    """An :class:`OfflinePolicy`, or its name or value in any case."""
    if type(value) is OfflinePolicy:
        return value
    if type(value) is str:
        try:
            return OfflinePolicy(value.strip().lower())
        except ValueError:
            pass
    raise ValidationError(f"offline must be 'fail' or 'wait', not {_show(value)}")
