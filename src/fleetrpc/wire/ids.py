"""Validation of what becomes a topic level: ids and the prefix.

Checked once, where an id enters fleetrpc; topic builders do not check
again (they run once per message on the hot path)."""

from __future__ import annotations

from ..errors import ValidationError
from .constants import MAX_ID_LENGTH

__all__ = ["validate_id", "validate_ids", "validate_prefix", "is_valid_level"]

_FORBIDDEN = ("/", "+", "#", "\x00")


def _show(value: str) -> str:
    # str.__repr__: a str subclass's own __repr__ must not change the text
    return str.__repr__(value if len(value) <= 80 else value[:77] + "...")


def validate_id(kind: str, value: object) -> str:
    """Check that ``value`` is a valid ``kind`` id ("device", "node", ...):
    exactly one topic level of 1-128 UTF-8 bytes without ``/``, ``+``, ``#``
    or NUL.  Returns ``value``; raises :class:`ValidationError` otherwise."""
    if not isinstance(value, str):
        raise ValidationError(f"{kind} id must be a string, not {type(value).__name__}")
    if not value:
        raise ValidationError(f"{kind} id is empty")
    for ch in _FORBIDDEN:
        if ch in value:
            raise ValidationError(
                f"{kind} id {_show(value)} contains {ch!r}, which cannot appear in a topic level"
            )
    if len(value) > MAX_ID_LENGTH // 4:  # shorter ones fit whatever their characters
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValidationError(f"{kind} id {_show(value)} is not valid UTF-8") from None
        if size > MAX_ID_LENGTH:
            raise ValidationError(
                f"{kind} id {_show(value)} is {size} bytes long in UTF-8 (at most {MAX_ID_LENGTH})"
            )
    elif not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(f"{kind} id {_show(value)} is not valid UTF-8") from None
    return value


def validate_ids(kind: str, values: list) -> None:
    """:func:`validate_id` for every id of ``values`` (a list), with the same
    error for the first bad one.  A broadcast checks thousands at once: the
    usual ids (ASCII, short) are checked together on their concatenation,
    with a few scans in C instead of a Python call per id (~0.45 us each,
    5 % of a direct round trip); only a list that fails is checked id by id."""
    if not values:
        return
    try:
        joined = "".join(values)
    except TypeError:  # a non-str among them: validate_id names it
        joined = None
    if (joined is not None and joined.isascii() and "/" not in joined and "+" not in joined
            and "#" not in joined and "\x00" not in joined):
        sizes = list(map(len, values))  # ASCII: characters are UTF-8 bytes
        if min(sizes) > 0 and max(sizes) <= MAX_ID_LENGTH:
            return
    for value in values:
        validate_id(kind, value)


def is_valid_level(value: object) -> bool:
    """``True`` when ``value`` would pass :func:`validate_id`."""
    try:
        validate_id("", value)
    except ValidationError:
        return False
    return True


def validate_prefix(prefix: object) -> str:
    """Check a topic prefix: one or more non-empty levels without ``+``,
    ``#`` or NUL, not starting with ``$`` (reserved for the broker), valid
    UTF-8.  Returns ``prefix``; raises :class:`ValidationError` otherwise."""
    if not isinstance(prefix, str):
        raise ValidationError(f"topic prefix must be a string, not {type(prefix).__name__}")
    if not prefix:
        raise ValidationError("topic prefix is empty")
    if "" in prefix.split("/"):
        raise ValidationError(f"topic prefix {_show(prefix)} has an empty level")
    for ch in ("+", "#", "\x00"):
        if ch in prefix:
            raise ValidationError(f"topic prefix {_show(prefix)} contains {ch!r}")
    if prefix.startswith("$"):
        raise ValidationError(
            f"topic prefix {_show(prefix)} starts with '$', which is reserved for the broker"
        )
    try:
        size = len(prefix.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError(f"topic prefix {_show(prefix)} is not valid UTF-8") from None
    if size > 1024:
        raise ValidationError(f"topic prefix {_show(prefix)} is longer than 1024 bytes")
    return prefix
