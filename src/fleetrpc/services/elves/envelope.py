"""The Elves envelope: ``{"mqt": "call"|"back", "mqs": service, "mqf":
function, ...flat arguments}``, its parser and the reply built from it.

Parsing is msgspec throughout: the head (``mqt``/``mqs``/``mqf``) is a
Struct, and each function reads its flat arguments with :meth:`Envelope.args`
into a Struct of its own, so that a wrong type anywhere becomes one clear
``[403.x]`` error naming the field.  Which 403 code a field gets follows
Elves' numbering (:data:`FIELD_CODES`).

What the seed writes and what it means (``docs/elves.md`` lists every alias):
the service ``sheduler`` is ``scheduler``, service and function names are
case-insensitive, and the written function names that stand for several
functions are resolved by the router from the arguments present.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import msgspec

from ...store.base import storable_problem
from ...wire import BAD_JSON
from .errors import Code, ElvesError

__all__ = [
    "FLAG_TRUE",
    "FLAG_FALSE",
    "DEFAULT_TIMEOUT",
    "SERVICE_ALIASES",
    "FIELD_CODES",
    "Envelope",
    "Instruction",
    "parse_envelope",
    "check_storable",
    "reply_envelope",
    "error_envelope",
    "normalise_mode",
    "check_ip",
    "check_ip_list",
    "MAX_IPS",
]

#: The flag strings of Elves' replies (``flag``, ``agent_sync_flag``).
FLAG_TRUE = "true"
FLAG_FALSE = "false"
#: An instruction's timeout when it gives none, in seconds (Elves' scheduler).
DEFAULT_TIMEOUT = 90

#: Service names as written -> the service meant (lower case).
SERVICE_ALIASES = {"sheduler": "scheduler"}

#: The 403 code of a bad argument, by field name (Elves' OpenAPI numbering).
FIELD_CODES = {
    "agentip": Code.BAD_IP,
    "ip": Code.BAD_IP,
    "iplist": Code.BAD_IP,
    "agentiplist": Code.BAD_IP,
    "param": Code.BAD_PARAM,
    "app": Code.BAD_APP,
    "appname": Code.BAD_APP,
    "mode": Code.BAD_MODE,
    "rule": Code.BAD_CRON_RULE,
    "queue_id": Code.BAD_QUEUE_ID,
    "func": Code.BAD_FUNC,
    "timeout": Code.BAD_TIMEOUT,
    "cron_id": Code.BAD_CRON_ID,
}

_decode_object = msgspec.json.Decoder(dict[str, Any]).decode


class _Head(msgspec.Struct):
    mqt: str
    mqs: str
    mqf: str


class Envelope:
    """One parsed call.  ``mqt``/``mqs``/``mqf`` as written (the reply
    echoes them); ``service`` is the service meant (lower case, aliases
    resolved); ``function`` the function meant, in its documented spelling,
    once the router has resolved it; ``body`` the whole decoded object, whose
    keys besides the head are the flat arguments."""

    __slots__ = ("mqt", "mqs", "mqf", "service", "function", "body")

    def __init__(self, mqt: str, mqs: str, mqf: str, body: dict[str, Any]) -> None:
        self.mqt = mqt
        self.mqs = mqs
        self.mqf = mqf
        low = mqs.strip().lower()
        self.service = SERVICE_ALIASES.get(low, low)
        self.function: str | None = None
        self.body = body

    def __repr__(self) -> str:
        return f"<Envelope {self.mqs}.{self.mqf} -> {self.service}.{self.function}>"

    def has(self, name: str) -> bool:
        """Whether argument ``name`` is present and not null."""
        return self.body.get(name) is not None

    def get(self, name: str, default: Any = None) -> Any:
        return self.body.get(name, default)

    def args(self, struct: type, codes: dict[str, str] | None = None):
        """The flat arguments as ``struct`` (a msgspec Struct; unknown keys,
        the head included, are ignored).  A missing or ill-typed argument
        raises :class:`ElvesError` with the field's 403 code and msgspec's
        message, which names the field and its path."""
        try:
            return msgspec.convert(self.body, struct, strict=False)
        except msgspec.ValidationError as exc:
            raise argument_error(exc, codes) from None


_PATH = re.compile(r"`\$((?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])*)`")
_MISSING = re.compile(r"missing required field `([^`]+)`")


def argument_error(exc: msgspec.ValidationError, codes: dict[str, str] | None = None) -> ElvesError:
    """The ElvesError of a msgspec ValidationError: the code of the deepest
    named field in its path (``$.ins.app`` -> 403.3), else 403.0."""
    text = str(exc)
    names: list[str] = []
    m = _PATH.search(text)
    if m:
        names = [p for p in re.split(r"\.|\[\d+\]", m.group(1)) if p]
    m = _MISSING.search(text)
    if m:
        names.append(m.group(1))
    table = FIELD_CODES if not codes else {**FIELD_CODES, **codes}
    for name in reversed(names):
        code = table.get(name)
        if code is not None:
            return ElvesError(code, f"Bad Argument: {text}")
    return ElvesError(Code.MALFORMED, f"Bad Argument: {text}")


def parse_envelope(body: bytes | str | dict) -> Envelope:
    """Parse an envelope from JSON bytes or an already decoded object.

    Raises :class:`ElvesError` ``403.0`` when it is not a JSON object with
    string ``mqt``, ``mqs``, ``mqf``, ``mqs``/``mqf`` are empty, or ``mqt``
    is neither ``"call"`` nor ``"back"``.  ``mqt`` is checked by the caller
    (a server answers calls only)."""
    if not isinstance(body, dict):
        try:
            body = _decode_object(body)
        except msgspec.ValidationError:
            raise ElvesError(Code.MALFORMED, "Malformed Envelope: not a JSON object") from None
        except (*BAD_JSON, TypeError) as exc:
            raise ElvesError(Code.MALFORMED, f"Malformed Envelope: not JSON ({exc})") from None
    try:
        head = msgspec.convert(body, _Head)
    except msgspec.ValidationError as exc:
        raise ElvesError(Code.MALFORMED, f"Malformed Envelope: {exc}") from None
    mqt = head.mqt.strip().lower()
    if mqt not in ("call", "back"):
        raise ElvesError(Code.MALFORMED, f"Malformed Envelope: mqt must be 'call' or 'back', not {_clip(head.mqt)}")
    if not head.mqs.strip() or not head.mqf.strip():
        raise ElvesError(Code.MALFORMED, "Malformed Envelope: mqs and mqf must not be empty")
    return Envelope(mqt, head.mqs, head.mqf, body)


def check_storable(envelope: Envelope) -> None:
    """Raise :class:`ElvesError` ``403.0`` when the envelope holds what the
    databases cannot store (U+0000 in a text or a key, which PostgreSQL
    refuses in every text), so such a call is refused alike on both
    databases, before anything of it is looked up or stored."""
    problem = storable_problem(envelope.body)
    if problem is not None:
        raise ElvesError(Code.MALFORMED, f"Bad Argument: {problem}")


def _clip(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")


# -- replies ---------------------------------------------------------------


def reply_envelope(envelope: Envelope, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """A successful reply: ``{"mqt": "back", "mqs", "mqf", "flag": "true",
    "error": "", ...fields}``; ``mqs``/``mqf`` echo the call's spelling, so
    that an app matches its answers by what it wrote."""
    reply = {"mqt": "back", "mqs": envelope.mqs, "mqf": envelope.mqf, "flag": FLAG_TRUE, "error": ""}
    if fields:
        reply.update(fields)
    return reply


def error_envelope(err: ElvesError, envelope: Envelope | None = None, body: Any = None) -> dict[str, Any]:
    """A failed reply: ``flag "false"`` and ``error "[code]Message"``, plus
    the error's own fields.  Without a parsed envelope, ``mqs``/``mqf`` are
    echoed from ``body`` when they are strings, else empty."""
    if envelope is not None:
        mqs, mqf = envelope.mqs, envelope.mqf
    else:
        mqs = mqf = ""
        if isinstance(body, dict):
            mqs = body.get("mqs") if isinstance(body.get("mqs"), str) else ""
            mqf = body.get("mqf") if isinstance(body.get("mqf"), str) else ""
    reply = {"mqt": "back", "mqs": mqs, "mqf": mqf, "flag": FLAG_FALSE, "error": str(err)}
    if err.fields:
        reply.update(err.fields)
    return reply


# -- instructions ----------------------------------------------------------

#: Every mode name Elves ever used -> (mode, sync?): P forwards the worker's
#: result to the app's processor, NP does not.  The old six names also say
#: sync (SS*) or async (SA*, AA*); P and NP leave it to the function.
_MODES: dict[str, tuple[str, bool | None]] = {
    "p": ("P", None),
    "np": ("NP", None),
    "ssp": ("P", True),
    "ssnp": ("NP", True),
    "sap": ("P", False),
    "sanp": ("NP", False),
    "aap": ("P", False),
    "aanp": ("NP", False),
}


def normalise_mode(mode: Any) -> tuple[str, bool | None]:
    """``(mode, sync)`` of a mode as written: ``"P"``/``"NP"`` and whether
    the old name says sync (``True``), async (``False``) or nothing
    (``None``).  Empty means NP.  Raises ElvesError 403.4 otherwise."""
    if mode is None or mode == "":
        return "NP", None
    if isinstance(mode, str):
        found = _MODES.get(mode.strip().lower())
        if found is not None:
            return found
    raise ElvesError(Code.BAD_MODE, f"Bad Mode: {mode!r} (expected P, NP, SSP, SSnP, SAP, SAnP, AAP or AAnP)")


class Instruction(msgspec.Struct, omit_defaults=True):
    """``ins``: what to run on an agent.  Elves writes every field as a
    string (``"timeout": ""``); numbers and JSON params are accepted too."""

    app: str
    func: str
    mode: str = ""
    param: Any = ""
    timeout: int | float | str | None = None
    proxy: str = ""

    def normalised(self) -> "Instruction":
        """A checked copy: mode ``P``/``NP``, ``param`` a string (JSON
        params encoded), ``timeout`` whole seconds (empty -> 90, 0 = no
        limit).  Raises ElvesError 403.x naming the bad field."""
        app = self.app.strip()
        if not app or "/" in app or "\\" in app or app in (".", ".."):
            raise ElvesError(Code.BAD_APP, f"Bad App: {self.app!r}")
        func = self.func.strip()
        if not func:
            raise ElvesError(Code.BAD_FUNC, "Bad Func: empty")
        mode, _ = normalise_mode(self.mode)
        return Instruction(app, func, mode, param_text(self.param), parse_timeout(self.timeout), self.proxy.strip())

    def is_sync(self) -> bool | None:
        return normalise_mode(self.mode)[1]


def param_text(param: Any) -> str:
    """The instruction's ``param`` as the string an agent passes on (base64
    of it on the worker's command line): strings as they are, other JSON
    values encoded."""
    if param is None:
        return ""
    if isinstance(param, str):
        return param
    try:
        return msgspec.json.encode(param).decode()
    except (TypeError, msgspec.EncodeError) as exc:
        raise ElvesError(Code.BAD_PARAM, f"Bad Param: {exc}") from None


def parse_timeout(timeout: Any) -> int:
    """Seconds: empty/absent -> 90, 0 -> no limit, else a whole number >= 0."""
    if timeout is None or timeout == "":
        return DEFAULT_TIMEOUT
    if isinstance(timeout, str):
        try:
            timeout = float(timeout.strip())
        except ValueError:
            raise ElvesError(Code.BAD_TIMEOUT, f"Bad Timeout: {timeout!r}") from None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout < 10**8:
        raise ElvesError(Code.BAD_TIMEOUT, f"Bad Timeout: {timeout!r} (seconds, 0 = no limit)")
    return int(-(-timeout // 1))  # a fraction of a second rounds up, never to 0


def check_ip(value: Any) -> str:
    """An agent IP (v4 or v6) in its compact form; ElvesError 403.1 otherwise."""
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            pass
    raise ElvesError(Code.BAD_IP, f"Bad Ip: {value!r} is not an IP address")


#: Most IPs one list query (getCmdbInfoByIpList, getStatByIpList) may name.
MAX_IPS = 10_000


def check_ip_list(values: list[Any]) -> list[str]:
    """Every IP of a list query, checked by :func:`check_ip`, in order; a
    list longer than :data:`MAX_IPS` is ElvesError 403.1 too."""
    if len(values) > MAX_IPS:
        raise ElvesError(Code.BAD_IP, f"Bad Ip: at most {MAX_IPS} IPs at once")
    return [check_ip(ip) for ip in values]
