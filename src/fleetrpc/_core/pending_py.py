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

from asyncio import Future as _Future
from typing import Any

from ..errors import UnknownRequestError, WrongDeviceError
from .wheel_py import TimingWheel, _as_float

__all__ = ["CallFuture", "CallSite", "PendingTable", "debug_counters"]

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

    @property
    def next_rid(self) -> int:
        return self._next_rid

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
        if type(completion) is CallFuture:
            completion._rid = rid  # what its cancel() drops
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


# -- the completion of one call() -------------------------------------------------------


class CallSite:
    """What the futures of one dispatcher's calls share: the event loop and
    ``cancel(rid)``, the hook that drops a call's pending entry when its
    future is cancelled.  One per dispatcher, so that a future holds one
    reference for both."""

    __slots__ = ("loop", "_call_soon", "_cancel")

    def __init__(self, loop: Any, cancel: Any) -> None:
        self.loop = loop
        self._call_soon = loop.call_soon
        self._cancel = cancel

    def future(self) -> "CallFuture":
        """A new pending future of this site; ``PendingTable.add`` with it as
        the completion gives it its request id."""
        fut = CallFuture.__new__(CallFuture)
        _Future.__init__(fut, loop=self.loop)
        fut._site = self
        fut._rid = 0
        return fut


class CallFuture(_Future):
    """The completion of one pending call and the object its caller awaits.

    It implements what ``asyncio.Task``, ``await``, ``asyncio.ensure_future``,
    ``gather``, ``wait_for`` and ``shield`` use of a Future, and ``send``/
    ``throw``/``close`` of a coroutine, so that ``loop.create_task()``
    accepts it too.

    The pure twin is an ``asyncio.Future`` (C in CPython) with the call's
    parts added: that is what keeps it as fast as the Future it replaces;
    the compiled one is a 48-byte object of its own.  Both differ from a
    Future in the same ways, deliberately: cancelling it (or a task awaiting
    it, or throwing into it while pending) drops the call's pending entry
    through its site's ``cancel(rid)``; an exception nobody retrieved is not
    logged (the dispatcher's stats count failures).  Only the dispatcher
    completes it (``_finish``).
    """

    __slots__ = ("_site", "_rid")

    def __init__(self) -> None:
        raise TypeError("CallFuture is made by CallSite.future()")

    @property
    def rid(self) -> int:
        """The call's request id (0 until the table has it)."""
        return self._rid

    def cancel(self, msg: Any = None) -> bool:
        if not _Future.cancel(self, msg):
            return False
        # The call's entry goes too: nobody will take its answer.
        self._site._cancel(self._rid)
        return True

    def set_exception(self, exception: Any) -> None:
        # Refused as the compiled twin refuses it (and asyncio did before
        # Python 3.13, which stores a RuntimeError in its place instead).
        if (exception if isinstance(exception, type) else type(exception)) is StopIteration:
            raise TypeError("StopIteration interacts badly with generators and cannot be raised into a Future")
        _Future.set_exception(self, exception)
        self._log_traceback = False

    def _finish(self, result: Any, error: BaseException | None) -> None:
        """The dispatcher's completion: a no-op once done (cancelled)."""
        if not self.done():
            if error is None:
                self.set_result(result)
            else:
                _Future.set_exception(self, error)
                self._log_traceback = False

    # -- coroutine protocol (loop.create_task) --------------------------------------

    def send(self, value: Any) -> Any:
        if not self.done():
            self._asyncio_future_blocking = True
            return self
        raise StopIteration(self.result())

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        # Whoever awaited this gives up on it (a cancelled task, a closed
        # coroutine): the call goes with it.
        if not self.done():
            self.cancel()
        if isinstance(typ, BaseException):
            exc = typ
        elif isinstance(val, BaseException):
            exc = val
        else:
            exc = typ() if val is None else typ(val)
        if tb is not None:
            exc = exc.with_traceback(tb)
        raise exc

    def close(self) -> None:
        if not self.done():
            self.cancel()
