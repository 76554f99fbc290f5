"""Pending-call table (pure-Python twin of ``pending.pyx``).

Contract: ``docs/core.md``, section PendingTable.  Decisions the contract
leaves open, taken identically in both variants:

- The table owns its wheel's clock: every deadline it schedules has the
  request id as payload, and ``expire`` is the only thing that should
  ``advance`` that wheel (one table per wheel).  A payload that is not a
  pending request id is ignored.
- ``PendingTable(wheel)`` takes a ``TimingWheel`` of the same variant
  (``TypeError`` otherwise): the compiled table calls its wheel through C.
- Request ids count up from 1 and are never reused; the 2**53-th ``add``
  raises ``OverflowError`` (at a million adds a second, after 285 years).
- ``flags`` is an int in ``[0, 2**32)``; ``peek``/``expire``/``drain`` give it
  back as a plain ``int``.
- Arguments are checked in this order: float conversion of a deadline or
  ``now`` (the ``TypeError`` of a C ``double``), then the other argument
  types and values, then whether the request is pending, then the deadline's
  range (the wheel's ``ValueError``).  ``rid`` must be an ``int``
  (``TypeError``); ``device`` a ``str`` (``None`` allowed in ``resolve``).
  ``rid in table`` is simply ``False`` for anything that is not pending.
- ``expire`` returns entries in the wheel's order (ascending deadline tick);
  ``drain`` in ascending request id.
"""

from __future__ import annotations

from typing import Any

from ..errors import UnknownRequestError, WrongDeviceError
from .wheel_py import TimingWheel, _as_float

__all__ = ["PendingTable", "debug_counters"]

_RID_LIMIT = 1 << 53
_FLAGS_LIMIT = 1 << 32


def debug_counters() -> dict[str, int] | None:
    """Leak counters of a ``FLEETRPC_DEBUG`` build; the pure twin has none."""
    return None


def _check_rid(rid: Any) -> None:
    if not isinstance(rid, int):
        raise TypeError(f"rid must be an int, got {type(rid).__name__}")


def _as_flags(flags: Any) -> int:
    if not isinstance(flags, int):
        raise TypeError(f"flags must be an int, got {type(flags).__name__}")
    if not 0 <= flags < _FLAGS_LIMIT:
        raise ValueError(f"flags must be in [0, 2**32), got {flags!r}")
    return int(flags)


def _unknown(rid: int) -> UnknownRequestError:
    return UnknownRequestError(f"request {rid!r} is not pending")


class PendingTable:
    """Request id -> (device, completion, deadline handle, flags)."""

    __slots__ = ("_entries", "_next_rid", "_wheel")

    def __init__(self, wheel: TimingWheel) -> None:
        if not isinstance(wheel, TimingWheel):
            t = type(wheel)
            raise TypeError(
                "wheel must be a TimingWheel of the same variant, "
                f"got {t.__module__}.{t.__qualname__}"
            )
        self._wheel = wheel
        # rid -> [device, completion, handle, flags]; insertion order is rid order.
        self._entries: dict[int, list[Any]] = {}
        self._next_rid = 1

    def __del__(self) -> None:
        # Like the compiled table: a dropped table cancels its deadlines.
        entries = getattr(self, "_entries", None)  # None when __init__ failed
        if entries:
            cancel = self._wheel.cancel
            for e in entries.values():
                cancel(e[2])

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, rid: object) -> bool:
        return isinstance(rid, int) and rid in self._entries

    def __repr__(self) -> str:
        return f"<PendingTable pending={len(self._entries)} next_rid={self._next_rid}>"

    def add(self, device: str, completion: object, deadline: float, flags: int = 0) -> int:
        if type(deadline) is not float:
            deadline = _as_float(deadline)
        if type(device) is not str and not isinstance(device, str):
            raise TypeError(f"device must be a str, got {type(device).__name__}")
        if type(flags) is not int or not 0 <= flags < _FLAGS_LIMIT:
            flags = _as_flags(flags)
        rid = self._next_rid
        if rid >= _RID_LIMIT:
            raise OverflowError("request ids are exhausted (2**53)")
        handle = self._wheel.schedule(deadline, rid)
        self._next_rid = rid + 1
        self._entries[rid] = [device, completion, handle, flags]
        return rid

    def resolve(self, rid: int, device: str | None = None) -> object:
        if type(rid) is not int:
            _check_rid(rid)
        if device is not None and not isinstance(device, str):
            raise TypeError(f"device must be a str or None, got {type(device).__name__}")
        e = self._entries.get(rid)
        if e is None:
            raise _unknown(rid)
        if device is not None and device != e[0]:
            raise WrongDeviceError(
                f"request {rid!r} belongs to device {e[0]!r}, not {device!r}"
            )
        del self._entries[rid]
        self._wheel.cancel(e[2])
        return e[1]

    def peek(self, rid: int) -> tuple[str, object, int] | None:
        _check_rid(rid)
        e = self._entries.get(rid)
        if e is None:
            return None
        return (e[0], e[1], e[3])

    def set_flags(self, rid: int, flags: int) -> None:
        _check_rid(rid)
        flags = _as_flags(flags)
        e = self._entries.get(rid)
        if e is None:
            raise _unknown(rid)
        e[3] = flags

    def rearm(self, rid: int, deadline: float) -> None:
        deadline = _as_float(deadline)
        _check_rid(rid)
        e = self._entries.get(rid)
        if e is None:
            raise _unknown(rid)
        handle = self._wheel.schedule(deadline, rid)  # may raise: keep the old one
        self._wheel.cancel(e[2])
        e[2] = handle

    def expire(self, now: float) -> list[tuple[int, str, object, int]]:
        out = []
        pop = self._entries.pop
        for rid in self._wheel.advance(now):
            e = pop(rid, None)
            if e is not None:
                out.append((rid, e[0], e[1], e[3]))
        return out

    def drain(self) -> list[tuple[int, str, object, int]]:
        entries = self._entries
        self._entries = {}
        cancel = self._wheel.cancel
        out = []
        for rid, e in entries.items():
            cancel(e[2])
            out.append((rid, e[0], e[1], e[3]))
        return out
