"""Timing wheel for call deadlines (pure-Python twin of ``wheel.pyx``).

Contract: ``docs/core.md``, section TimingWheel.  This twin runs the same
algorithm on the same layout as the compiled module, so both return the same
handles and the same results in the same order; the decisions the contract
leaves open are taken here, identically in ``wheel.pyx``:

Ticks.  A time ``t`` lies in tick ``floor(t / tick)`` (one IEEE division, so
both variants agree to the bit).  An entry whose deadline ``d`` is later than
the wheel's time is due in tick ``floor(d / tick) + 1``: ``advance(now)``
returns it once ``floor(now / tick)`` reaches that tick.  Because
``floor(x / tick)`` is monotonic in ``x`` this is never early (``now > d``)
and, computed exactly, at most one tick late: ``now >= d + tick`` implies it.
An entry whose deadline is at or before the wheel's time belongs to the
wheel's current tick and is returned by the next ``advance``.

Times.  A deadline or a ``now`` must be finite and within ``2**62`` ticks of
zero (``ValueError`` otherwise); the conversion to ``float`` is the one of a
C ``double`` argument, with its ``TypeError``.

Layout.  Entries live in a pool with a LIFO free list.  The pool grows the
way the compiled one's pages do (``paged.pxd``): by doubling from 64 up to
1,024 entries, then by 1,024 entries at a time, so at any size it is less
than a page (32 KiB in C) larger than what it has used.  Buckets: 4 levels of 256 slots, an overflow list for ticks
past the current ``2**32``-tick block, and a due list for deadlines already
past.  An entry at level ``L`` shares every bit above ``8 * (L + 1)`` with
the current tick and sits in slot ``(tick >> 8 * L) & 255``; when the current
tick reaches a slot's first tick the slot is *cascaded*: each entry is
re-bucketed on its exact tick.  ``advance`` jumps straight from one non-empty
slot to the next (occupancy bitmaps), so a jump of days costs no more than a
jump of one tick.

Handles.  ``handle = generation << 32 | index`` with the generation in
``[1, 2**31)``, bumped whenever the entry fires or is cancelled.  A slot whose
generation would wrap is retired for good (32 bytes once per ``2**31`` uses),
so a stale handle can never match a later entry.

Order.  ``advance`` returns payloads ascending by tick (the due list first:
its entries belong to the tick current when they were scheduled); within a
tick, in the order the entries reached their last bucket.
"""

from __future__ import annotations

from math import floor, isfinite, ldexp

__all__ = ["TimingWheel", "debug_counters"]

_TICK_LIMIT = 2.0**62  # |time / tick| must stay below this
_PAYLOAD_LIMIT = 1 << 63
_HANDLE_LIMIT = 1 << 63
_GEN_LIMIT = 1 << 31  # a slot whose generation reaches this is retired
_INITIAL_CAP = 64
_PAGE = 1024  # entries per page of the compiled pool (paged.pxd's PG_SIZE)
_MAX_CAP = 1 << 30  # entries; the compiled pool links entries with int32

_B_OVERFLOW = 1024  # ticks past the current 2**32-tick block
_B_DUE = 1025  # deadlines at or before the wheel's time
_NBUCKETS = 1026
_FREE = -1  # bucket of an entry on the free list
_RETIRED = -2  # bucket of an entry whose generation ran out
_NONE = 1 << 64  # "no event": later than every tick

_BLOCK = 0xFFFFFFFF  # low bits of a tick inside one 2**32-tick block


def _as_float(x):
    # Same conversion and same TypeError as a C ``double`` argument
    # (PyFloat_AsDouble): ints and __float__/__index__ objects, not strings.
    return x if type(x) is float else ldexp(x, 0)


def _time_error(what: str, t: float) -> ValueError:
    return ValueError(f"{what} must be finite and within 2**62 ticks of 0, got {t!r}")


def _next_set(bits: int, start: int) -> int:
    """Lowest set bit of ``bits`` at or above ``start``, or -1."""
    m = bits >> start
    if not m:
        return -1
    return start + (m & -m).bit_length() - 1


def _bucket_for(t: int, c: int) -> int:
    """Bucket of an entry due in tick ``t`` when the current tick is ``c < t``."""
    x = t ^ c
    if x < 0:  # different signs: different 2**32 blocks
        return _B_OVERFLOW
    if x < 0x100:
        return t & 0xFF
    if x < 0x10000:
        return 0x100 | ((t >> 8) & 0xFF)
    if x < 0x1000000:
        return 0x200 | ((t >> 16) & 0xFF)
    if x < 0x100000000:
        return 0x300 | ((t >> 24) & 0xFF)
    return _B_OVERFLOW


def debug_counters() -> dict[str, int] | None:
    """Leak counters of a ``FLEETRPC_DEBUG`` build; the pure twin has none."""
    return None


class TimingWheel:
    """Hierarchical timing wheel: deadlines (float seconds) -> int payloads.

    See the module docstring for the exact tick semantics.
    """

    __slots__ = (
        "_buckets",
        "_buckets_of",
        "_cap",
        "_cur",
        "_free",
        "_gens",
        "_live",
        "_now",
        "_occ",
        "_ovf_min",
        "_payloads",
        "_tick",
        "_ticks",
    )

    def __init__(self, tick: float = 0.005, now: float = 0.0) -> None:
        tick = _as_float(tick)
        now = _as_float(now)
        if not (tick > 0.0 and isfinite(tick)):
            raise ValueError(f"tick must be a positive finite number, got {tick!r}")
        q = now / tick
        if not -_TICK_LIMIT < q < _TICK_LIMIT:
            raise _time_error("now", now)
        self._tick = tick
        self._now = now
        self._cur = floor(q)  # every tick <= _cur has been processed
        self._live = 0
        self._cap = 0
        self._free: list[int] = []  # LIFO: pop() hands out the lowest new index first
        self._ticks: list[int] = []  # per entry: due tick
        self._payloads: list[int] = []  # per entry: payload
        self._gens: list[int] = []  # per entry: generation
        self._buckets_of: list[int] = []  # per entry: bucket, _FREE or _RETIRED
        # Insertion-ordered dicts stand in for the compiled doubly linked lists.
        self._buckets: list[dict[int, None]] = [{} for _ in range(_NBUCKETS)]
        self._occ = [0, 0, 0, 0]  # per level: bit s set when slot s is not empty
        self._ovf_min = _NONE  # lower bound of the overflow list's ticks

    # -- public API ---------------------------------------------------------

    @property
    def tick(self) -> float:
        return self._tick

    @property
    def now(self) -> float:
        return self._now

    def __len__(self) -> int:
        return self._live

    def __repr__(self) -> str:
        return f"<TimingWheel tick={self._tick!r} now={self._now!r} live={self._live}>"

    def schedule(self, deadline: float, payload: int) -> int:
        # The hot path: _link, _bucket_for and _release are inlined here.
        if type(deadline) is not float:
            deadline = ldexp(deadline, 0)
        if type(payload) is not int and not isinstance(payload, int):
            raise TypeError(f"payload must be an int, got {type(payload).__name__}")
        if not 0 <= payload < _PAYLOAD_LIMIT:
            raise ValueError(f"payload must be in [0, 2**63), got {payload!r}")
        q = deadline / self._tick
        if not -_TICK_LIMIT < q < _TICK_LIMIT:
            raise _time_error("deadline", deadline)
        free = self._free
        if not free:
            self._grow()
        i = free.pop()
        self._payloads[i] = int(payload)
        if deadline <= self._now:
            t = self._cur
            b = _B_DUE
        else:
            t = floor(q) + 1
            x = t ^ self._cur
            if x < 0:
                b = _B_OVERFLOW
            elif x < 0x100:
                b = t & 0xFF
            elif x < 0x10000:
                b = 0x100 | ((t >> 8) & 0xFF)
            elif x < 0x1000000:
                b = 0x200 | ((t >> 16) & 0xFF)
            elif x < 0x100000000:
                b = 0x300 | ((t >> 24) & 0xFF)
            else:
                b = _B_OVERFLOW
            if b == _B_OVERFLOW and t < self._ovf_min:
                self._ovf_min = t
        self._ticks[i] = t
        d = self._buckets[b]
        if not d and b < _B_OVERFLOW:
            self._occ[b >> 8] |= 1 << (b & 0xFF)
        d[i] = None
        self._buckets_of[i] = b
        self._live += 1
        return self._gens[i] << 32 | i

    def cancel(self, handle: int) -> bool:
        if type(handle) is not int and not isinstance(handle, int):
            raise TypeError(f"handle must be an int, got {type(handle).__name__}")
        if handle <= 0 or handle >= _HANDLE_LIMIT:
            return False
        i = handle & 0xFFFFFFFF
        if i >= self._cap:
            return False
        b = self._buckets_of[i]
        if b < 0 or self._gens[i] != handle >> 32:
            return False
        d = self._buckets[b]
        del d[i]
        if not d and b < _B_OVERFLOW:
            self._occ[b >> 8] &= ~(1 << (b & 0xFF))
        self._release(i)
        return True

    def advance(self, now: float) -> list[int]:
        now = _as_float(now)
        q = now / self._tick
        if not -_TICK_LIMIT < q < _TICK_LIMIT:
            raise _time_error("now", now)
        if now < self._now:
            return []
        self._now = now
        out: list[int] = []
        if self._buckets[_B_DUE]:
            self._fire(_B_DUE, out)
        target = floor(q)
        if target > self._cur:
            while True:
                k = self._next_event()
                if k > target:
                    break
                self._step(k, out)
            self._cur = target
        return out

    def clear(self) -> None:
        for b in range(_NBUCKETS):
            d = self._buckets[b]
            if d:
                self._buckets[b] = {}
                for i in d:
                    self._release(i)
        self._occ = [0, 0, 0, 0]
        self._ovf_min = _NONE

    # -- internals (mirrored one to one in wheel.pyx) -------------------------

    def _grow(self) -> None:
        cap = self._cap
        if cap + _PAGE > _MAX_CAP:
            raise MemoryError(f"timing wheel is full ({_MAX_CAP} entries)")
        new = cap + _PAGE if cap >= _PAGE else min(cap * 2, _PAGE) if cap else _INITIAL_CAP
        n = new - cap
        self._ticks.extend([0] * n)
        self._payloads.extend([0] * n)
        self._gens.extend([1] * n)
        self._buckets_of.extend([_FREE] * n)
        self._free.extend(range(new - 1, cap - 1, -1))
        self._cap = new

    def _link(self, i: int, b: int) -> None:
        d = self._buckets[b]
        if not d and b < _B_OVERFLOW:
            self._occ[b >> 8] |= 1 << (b & 0xFF)
        d[i] = None
        self._buckets_of[i] = b

    def _unlink(self, i: int, b: int) -> None:
        d = self._buckets[b]
        del d[i]
        if not d and b < _B_OVERFLOW:
            self._occ[b >> 8] &= ~(1 << (b & 0xFF))

    def _release(self, i: int) -> None:
        g = self._gens[i] + 1
        self._gens[i] = g
        self._live -= 1
        if g == _GEN_LIMIT:
            self._buckets_of[i] = _RETIRED
        else:
            self._buckets_of[i] = _FREE
            self._free.append(i)

    def _take(self, b: int) -> dict[int, None]:
        # Detach a whole bucket; its entries keep their order.
        d = self._buckets[b]
        self._buckets[b] = {}
        if b < _B_OVERFLOW:
            self._occ[b >> 8] &= ~(1 << (b & 0xFF))
        return d

    def _fire(self, b: int, out: list[int]) -> None:
        payloads = self._payloads
        for i in self._take(b):
            out.append(payloads[i])
            self._release(i)

    def _cascade(self, b: int) -> None:
        if not self._buckets[b]:
            return
        c = self._cur
        ticks = self._ticks
        for i in self._take(b):
            self._link(i, _bucket_for(ticks[i], c))

    def _replace_overflow(self) -> None:
        # The current tick just entered a new 2**32-tick block: entries of that
        # block move into the wheel, the others stay (order kept).
        c = self._cur
        ticks = self._ticks
        d = self._buckets[_B_OVERFLOW]
        low = _NONE
        for i in list(d):
            t = ticks[i]
            if 0 <= t ^ c <= _BLOCK:
                del d[i]
                self._link(i, _bucket_for(t, c))
            elif t < low:
                low = t
        self._ovf_min = low

    def _next_event(self) -> int:
        """First tick after the current one at which a slot fires or cascades."""
        c = self._cur
        occ = self._occ
        s = _next_set(occ[0], (c & 0xFF) + 1)
        if s >= 0:
            return (c & ~0xFF) | s
        s = _next_set(occ[1], ((c >> 8) & 0xFF) + 1)
        if s >= 0:
            return (c & ~0xFFFF) | (s << 8)
        s = _next_set(occ[2], ((c >> 16) & 0xFF) + 1)
        if s >= 0:
            return (c & ~0xFFFFFF) | (s << 16)
        s = _next_set(occ[3], ((c >> 24) & 0xFF) + 1)
        if s >= 0:
            return (c & ~_BLOCK) | (s << 24)
        if self._buckets[_B_OVERFLOW]:
            return max(((c >> 32) + 1) << 32, (self._ovf_min >> 32) << 32)
        return _NONE

    def _step(self, k: int, out: list[int]) -> None:
        # Enter tick k: cascade top-down every level whose slot starts here,
        # then fire level 0's slot.
        self._cur = k
        if not (k & _BLOCK) and self._buckets[_B_OVERFLOW]:
            self._replace_overflow()
        if not (k & 0xFFFFFF):
            self._cascade(0x300 | ((k >> 24) & 0xFF))
        if not (k & 0xFFFF):
            self._cascade(0x200 | ((k >> 16) & 0xFF))
        if not (k & 0xFF):
            self._cascade(0x100 | ((k >> 8) & 0xFF))
        if self._buckets[k & 0xFF]:
            self._fire(k & 0xFF, out)
