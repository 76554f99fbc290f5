"""The aggregate of a job's replies: how many devices answered what.

Only values worth counting are kept: a reply that is a number, a string or a
boolean is one *field* (``"$"``); a reply that is an object contributes each
of its top-level keys whose value is such a scalar (at most ``MAX_FIELDS``
keys).  Per field, the count of each distinct value is kept while there are
at most ``MAX_DISTINCT`` of them (small enums: firmware versions, states);
numbers also keep count, min, max and sum, so a field with many distinct
numeric values still says something.  A sum past the largest float is
``None`` (JSON has no infinity: it was stored as null, and read back it
failed the next addition) and stays ``None``.  The state is a plain JSON
object, stored with the job and shown as is.

The devices' replies decide its keys, so every key is bounded: a field
whose name is over ``MAX_VALUE_LENGTH`` characters is not counted, nor is
a value whose text is (a long string, an integer of more than 64 digits).
Truncated, distinct keys would have been counted as one.  The state is
then at most ``MAX_FIELDS`` fields, and ``"$"`` (which is one field however
many scalar replies come, bounded like the others by ``MAX_DISTINCT``), of
``MAX_DISTINCT`` keys of 64 characters: about 40 KiB of JSON, 200 KiB if
every character needs a JSON escape (``\\u0001``), whatever the devices answer;
unbounded, one device's 100,000-character key was written with every
outcome batch of the job.
"""

from __future__ import annotations

from typing import Any

__all__ = ["add_reply", "MAX_DISTINCT", "MAX_FIELDS", "MAX_VALUE_LENGTH"]

_INFINITIES = (float("inf"), float("-inf"))

MAX_DISTINCT = 32
MAX_FIELDS = 16
#: Longer strings are not counted (they are not enum values), nor fields
#: with a longer name, nor integers with a longer text.
MAX_VALUE_LENGTH = 64


def add_reply(state: dict, reply: Any) -> None:
    """Count one device's reply into ``state`` (changed in place)."""
    # Called once per device of a job: decoded JSON has exact types, so the
    # common cases are told apart by type() (isinstance chains and helper
    # calls were a third of the job engine's own cost per device).
    if type(reply) is dict or isinstance(reply, dict):
        for key, value in reply.items():
            entry = state.get(key)
            if entry is None and (len(state) >= MAX_FIELDS or len(key) > MAX_VALUE_LENGTH):
                continue
            _add(state, entry, key, value)
    else:
        _add(state, state.get("$"), "$", reply)


def _add(state: dict, entry: dict | None, field: str, value: Any) -> None:
    # The type decides, once, whether the value counts, whether it is a
    # number and its key among the values.  JSON object keys are strings:
    # true and "true" share a key, as they would in any JSON consumer of
    # this state.
    t = type(value)
    if t is str:
        if len(value) > MAX_VALUE_LENGTH:
            return
        numeric, key = False, value
    elif t is int:
        numeric, key = True, str(value)
        if len(key) > MAX_VALUE_LENGTH:
            return
    elif t is bool:
        numeric, key = False, "true" if value else "false"
    elif t is float:
        if value != value:  # NaN
            return
        numeric, key = True, repr(value)
    elif isinstance(value, str):
        if len(value) > MAX_VALUE_LENGTH:
            return
        numeric, key = False, str(value)
    elif isinstance(value, (int, float)):  # a subclass (bool has none)
        if value != value:
            return
        numeric, key = True, repr(float(value)) if isinstance(value, float) else str(int(value))
        if len(key) > MAX_VALUE_LENGTH:
            return
    else:
        return  # not a scalar: not counted
    if entry is None:
        state[field] = entry = {"count": 0, "values": {}, "overflow": False}
    entry["count"] += 1
    if numeric:
        num = entry.get("numeric")
        if num is None:
            entry["numeric"] = {"count": 1, "min": value, "max": value, "sum": value}
        else:
            num["count"] += 1
            if value < num["min"]:
                num["min"] = value
            if value > num["max"]:
                num["max"] = value
            total = num["sum"]
            if total is not None:
                total += value
                num["sum"] = None if total in _INFINITIES else total
    if entry["overflow"]:
        return
    values = entry["values"]
    n = values.get(key)
    if n is not None:
        values[key] = n + 1
    elif len(values) < MAX_DISTINCT:
        values[key] = 1
    else:
        entry["overflow"] = True
        entry["values"] = {}
