"""fleetrpc's own short reasons for a payload that does not decode or a value
that does not encode.

msgspec's exception texts change between releases (0.23 reworded several),
so they never reach a fleetrpc error.  When msgspec refuses something, this
module finds out why by itself and says so in fleetrpc's words:

- ``invalid UTF-8 at byte N``
- ``malformed JSON`` (``at byte N`` when the position is known)
- ``nested too deep``
- ``number too large``
- ``$.path: missing`` / ``$.path: expected T, got U`` /
  ``$.path: must be one of ...`` / ``$.path: length must be ...``
- (encoding) ``unsupported type T at $.path``, ``key of type T at $.path``,
  ``lone surrogate in a string at $.path``

Only the error path runs this code (a failed decode or encode), so it may
decode twice and walk the value.  Both codec variants call it, so they agree
by construction.  It depends on msgspec's exception *types* and its public
``msgspec.inspect`` schema, never on its wording.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

import msgspec
import msgspec.inspect as _mi

__all__ = ["decode_reason", "encode_reason"]

_ANY = msgspec.json.Decoder()
_ENCODE = msgspec.json.Encoder().encode
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# How deep the encode walk goes before it gives up looking (a cycle, say).
_MAX_WALK = 200


# -- decode ---------------------------------------------------------------------


def decode_reason(target: Any, payload: bytes, exc: BaseException) -> str:
    """Why ``payload`` did not decode as ``target`` (a type), msgspec having
    raised ``exc``."""
    if isinstance(exc, RecursionError):
        return "nested too deep"
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"invalid UTF-8 at byte {bad.start}"
    try:
        value = _ANY.decode(payload)
    except RecursionError:
        return "nested too deep"
    except msgspec.ValidationError:
        # The only thing an untyped decode validates: a number's range.
        return "number too large"
    except msgspec.DecodeError:
        return "malformed JSON" + _where(text)
    if target is Any:
        return "malformed JSON"  # the untyped decode failed once and not twice: nothing to name
    return _mismatch(_info(target), value, "$") or "does not match the expected shape"


def _reject(name: str) -> None:
    raise ValueError(name)


def _where(text: str) -> str:
    """`` at byte N`` where the standard library's parser stops, if it does."""
    try:
        # parse_int: no int() of a 5000-digit literal (Python's digit limit).
        json.loads(text, parse_constant=_reject, parse_int=len)
    except json.JSONDecodeError as bad:
        return f" at byte {len(text[:bad.pos].encode('utf-8'))}"
    except (ValueError, RecursionError):
        pass
    return ""


@lru_cache(maxsize=64)
def _info(target: Any) -> Any:
    return _mi.type_info(target)


def _json_name(value: Any) -> str:
    if value is None:
        return "null"
    if value is True or value is False:
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__  # pragma: no cover - JSON has no other types


def _expected(info: Any) -> str:
    if isinstance(info, _mi.UnionType):
        return " or ".join(_expected(t) for t in info.types)
    if isinstance(info, _mi.LiteralType):
        return "one of " + ", ".join(json.dumps(v) for v in info.values)
    names = {
        _mi.StrType: "string", _mi.IntType: "integer", _mi.FloatType: "number",
        _mi.BoolType: "boolean", _mi.NoneType: "null", _mi.ListType: "array",
        _mi.DictType: "object", _mi.StructType: "object",
    }
    return names.get(type(info), "a different value")


def _child(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _IDENT.match(key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key)}]"


def _length(info: Any, value: Any, path: str) -> str | None:
    lo, hi = info.min_length, info.max_length
    if (lo is not None and len(value) < lo) or (hi is not None and len(value) > hi):
        if lo is not None and hi is not None:
            return f"{path}: length must be {lo} to {hi}"
        if lo is not None:
            return f"{path}: length must be at least {lo}"
        return f"{path}: length must be at most {hi}"
    return None


def _mismatch(info: Any, value: Any, path: str) -> str | None:
    """The first place where ``value`` (plain JSON) breaks ``info``, or None."""
    if isinstance(info, (_mi.AnyType, _mi.CustomType)):
        return None
    if isinstance(info, _mi.UnionType):
        for option in info.types:
            if _mismatch(option, value, path) is None:
                return None
        # One member of the right JSON kind explains better than "A or B".
        fitting = [t for t in info.types if _expected(t) == _json_name(value)]
        if len(fitting) == 1:
            return _mismatch(fitting[0], value, path)
    elif isinstance(info, _mi.LiteralType):
        if value in info.values and type(value) in (str, int):
            return None
        return f"{path}: must be {_expected(info)}"
    elif isinstance(info, _mi.StrType):
        if isinstance(value, str):
            return _length(info, value, path)
    elif isinstance(info, _mi.IntType):
        if type(value) is int:
            return None
    elif isinstance(info, _mi.FloatType):
        if type(value) in (int, float):
            return None
    elif isinstance(info, _mi.BoolType):
        if type(value) is bool:
            return None
    elif isinstance(info, _mi.NoneType):
        if value is None:
            return None
    elif isinstance(info, _mi.ListType):
        if isinstance(value, list):
            for i, item in enumerate(value):
                found = _mismatch(info.item_type, item, _child(path, i))
                if found:
                    return found
            return _length(info, value, path)
    elif isinstance(info, _mi.DictType):
        if isinstance(value, dict):
            for key, item in value.items():
                found = _mismatch(info.value_type, item, _child(path, key))
                if found:
                    return found
            return _length(info, value, path)
    elif isinstance(info, _mi.StructType):
        if isinstance(value, dict):
            known = set()
            for field in info.fields:
                known.add(field.encode_name)
                if field.encode_name not in value:
                    if field.required:
                        return f"{_child(path, field.encode_name)}: missing"
                    continue
                found = _mismatch(field.type, value[field.encode_name], _child(path, field.encode_name))
                if found:
                    return found
            if info.forbid_unknown_fields:
                for key in value:
                    if key not in known:
                        return f"{_child(path, key)}: unknown field"
            return None
    else:
        return None  # a type fleetrpc's messages do not use: say nothing rather than guess
    return f"{path}: expected {_expected(info)}, got {_json_name(value)}"


# -- encode ---------------------------------------------------------------------


def encode_reason(obj: Any, exc: BaseException) -> str:
    """Why ``obj`` did not encode to JSON, msgspec having raised ``exc``."""
    if isinstance(exc, RecursionError):
        return "nested too deep"
    found = _unencodable(obj, "$", 0, set())
    return found or "unsupported value"


def _leaf_reason(value: Any, path: str) -> str | None:
    try:
        _ENCODE(value)
    except UnicodeEncodeError:
        return f"lone surrogate in a string at {path}"
    except RecursionError:
        return "nested too deep"
    except Exception:  # noqa: BLE001  any refusal: the type is the reason
        return f"unsupported type {type(value).__name__} at {path}"
    return None


def _key_reason(key: Any, path: str) -> str | None:
    try:
        _ENCODE({key: None})
    except UnicodeEncodeError:
        return f"lone surrogate in a key at {path}"
    except Exception:  # noqa: BLE001  any refusal: the key's type is the reason
        return f"key of type {type(key).__name__} at {path}"
    return None


def _unencodable(value: Any, path: str, depth: int, seen: set[int]) -> str | None:
    if depth > _MAX_WALK or id(value) in seen:
        return "nested too deep"
    if type(value) in (dict, list, tuple) or isinstance(value, msgspec.Struct):
        seen.add(id(value))
        if isinstance(value, dict):
            for key, item in value.items():
                bad = _key_reason(key, path)
                if bad is not None:
                    return bad
                found = _unencodable(item, _child(path, key if isinstance(key, (str, int)) else str(key)),
                                     depth + 1, seen)
                if found:
                    return found
        elif isinstance(value, msgspec.Struct):
            for name in value.__struct_fields__:
                found = _unencodable(getattr(value, name), _child(path, name), depth + 1, seen)
                if found:
                    return found
        else:
            for i, item in enumerate(value):
                found = _unencodable(item, _child(path, i), depth + 1, seen)
                if found:
                    return found
        seen.discard(id(value))
        return None
    return _leaf_reason(value, path)
