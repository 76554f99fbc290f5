# cython: language_level=3, cdivision=True
"""Timing wheel for call deadlines (compiled; pure twin: ``wheel_py.py``).

Contract: ``docs/core.md``, section TimingWheel.  Every point the contract
leaves open (tick rounding, time range, handle layout, result order) is
decided in ``wheel_py.py``'s docstring and implemented identically here: both
variants run the same algorithm on the same layout and so return the same
handles and the same results in the same order.

Entries are 32-byte C structs in one pool (``WheelEntry``, see
``wheel.pxd``) made of 1,024-entry pages (``paged.pxd``); a bucket is a doubly linked list of pool indices, so schedule
and cancel are O(1) and allocate nothing once the pool is big enough.  Ticks
are stored biased by ``2**63`` so that every bit operation is on unsigned
integers and unsigned order is time order.  ``cdivision``: the only
divisions are by the tick, which is positive.
"""

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.math cimport INFINITY, floor, nextafter
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t

from fleetrpc._core.paged cimport PG_SIZE, paged_free, paged_grow

cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object obj, int* overflow) except? -1

cdef extern from *:
    """
    #define FR_TICK_LIMIT 4611686018427387904.0   /* 2**62 */
    #define FR_BIAS 0x8000000000000000ULL
    #define FR_NONE 0xFFFFFFFFFFFFFFFFULL
    #define FR_ALL 0xFFFFFFFFFFFFFFFFULL
    #define FR_BLOCK 0xFFFFFFFFULL
    #define FR_GEN_LIMIT 0x80000000UL
    #define FR_MAX_CAP ((Py_ssize_t)1 << 30)
    #define FR_DUE_KEEP 4096
    """
    const double FR_TICK_LIMIT      # |time / tick| must stay below this
    const uint64_t FR_BIAS          # added to every tick
    const uint64_t FR_NONE          # "no event": later than every tick
    const uint64_t FR_ALL           # all 64 bits set
    const uint64_t FR_BLOCK         # low bits of a tick inside one 2**32-tick block
    const uint32_t FR_GEN_LIMIT     # a slot whose generation reaches this is retired
    const Py_ssize_t FR_MAX_CAP     # most entries (pool links are int32)
    const Py_ssize_t FR_DUE_KEEP    # a bigger result buffer is freed at the next advance

# Debug builds only: entries alive over all wheels (0 after every test).
cdef Py_ssize_t _debug_live = 0
# Memory blocks of the wheels' pools (pages + directories) alive; counted in
# every build (only when a pool grows or is freed), reported in debug builds.
cdef Py_ssize_t _debug_pages = 0


def debug_counters():
    """Leak counters of a ``FLEETRPC_DEBUG`` build, ``None`` in a normal one."""
    if FLEETRPC_DEBUG:
        return {"wheel_entries": _debug_live, "wheel_pages": _debug_pages}
    return None


# -- helpers (same checks and messages as wheel_py) -----------------------------

cdef object _time_error(str what, double t):
    return ValueError(f"{what} must be finite and within 2**62 ticks of 0, got {t!r}")


cdef inline int64_t _as_payload(object payload) except -1:
    cdef int overflow = 0
    cdef long long v
    if not isinstance(payload, int):
        raise TypeError(f"payload must be an int, got {type(payload).__name__}")
    v = PyLong_AsLongLongAndOverflow(payload, &overflow)
    if overflow != 0 or v < 0:
        raise ValueError(f"payload must be in [0, 2**63), got {payload!r}")
    return v


cdef inline uint64_t _biased_floor(double q) noexcept nogil:
    # Precondition: |q| < 2**62, so the conversion is exact.
    return <uint64_t>(<int64_t>floor(q)) + FR_BIAS


cdef inline int32_t _bucket_for(uint64_t t, uint64_t c) noexcept nogil:
    # Bucket of an entry due in tick t when the current tick is c < t: the
    # level is the highest 8-bit group in which t and c differ.
    cdef uint64_t x = t ^ c
    if x < 0x100:
        return <int32_t>(t & 0xFF)
    if x < 0x10000:
        return <int32_t>(0x100 | ((t >> 8) & 0xFF))
    if x < 0x1000000:
        return <int32_t>(0x200 | ((t >> 16) & 0xFF))
    if x <= FR_BLOCK:
        return <int32_t>(0x300 | ((t >> 24) & 0xFF))
    return W_OVERFLOW


cdef inline int _next_set(const uint64_t* occ, int level, int start) noexcept nogil:
    # Lowest non-empty slot >= start of a level, or -1.
    cdef int w
    cdef uint64_t m
    if start >= W_SLOTS:
        return -1
    w = start >> 6
    m = occ[level * 4 + w] & (FR_ALL << (start & 63))
    while True:
        if m != 0:
            return (w << 6) + fleetrpc_ctz64(m)
        w += 1
        if w == 4:
            return -1
        m = occ[level * 4 + w]


# -- the wheel -----------------------------------------------------------------------

@cython.final
@cython.auto_pickle(False)
cdef class TimingWheel:
    """Hierarchical timing wheel: deadlines (float seconds) -> int payloads.

    ``TimingWheel(tick=0.005, now=0.0)``; see ``docs/core.md`` and the
    docstring of ``fleetrpc._core.wheel_py`` for the exact semantics.
    """
    # Fields are declared and documented in wheel.pxd.

    def __cinit__(self, double tick=0.005, double now=0.0):
        cdef Py_ssize_t b
        cdef double q
        for b in range(W_NBUCKETS):
            self._head[b] = -1
            self._tail[b] = -1
        self._free = -1
        self._ovf_min = FR_NONE
        if not (tick > 0.0 and tick < INFINITY):
            raise ValueError(f"tick must be a positive finite number, got {tick!r}")
        q = now / tick
        if not (q > -FR_TICK_LIMIT and q < FR_TICK_LIMIT):
            raise _time_error("now", now)
        self._tick = tick
        self._now = now
        self._cur = _biased_floor(q)

    def __dealloc__(self):
        global _debug_live
        if FLEETRPC_DEBUG:
            _debug_live -= self._live
        paged_free(&self._pool, &_debug_pages)
        PyMem_Free(self._due)

    # -- public API ------------------------------------------------------------

    @property
    def tick(self):
        """Seconds per tick."""
        return self._tick

    @property
    def now(self):
        """The wheel's time: the latest ``advance`` time (or the constructor's)."""
        return self._now

    def __len__(self):
        return self._live

    def __repr__(self):
        return f"<TimingWheel tick={self._tick!r} now={self._now!r} live={self._live}>"

    def schedule(self, double deadline, object payload):
        """Schedule ``payload`` for ``deadline``; return its handle (> 0)."""
        return self._schedule(deadline, _as_payload(payload))

    def cancel(self, object handle):
        """Cancel a scheduled entry; ``False`` if the handle is stale or unknown."""
        cdef int overflow = 0
        cdef long long h
        if not isinstance(handle, int):
            raise TypeError(f"handle must be an int, got {type(handle).__name__}")
        h = PyLong_AsLongLongAndOverflow(handle, &overflow)
        if overflow != 0:
            return False
        return self._cancel(h)

    def advance(self, double now):
        """Move the wheel's time to ``now``; return the payloads now due."""
        cdef Py_ssize_t j, n = self._collect(now)
        # Only the list itself is a GC allocation (ints are not), and it comes
        # first: no Python code can run while _due is read.
        return [self._due[j] for j in range(n)]

    def clear(self):
        """Cancel every entry (their handles become stale)."""
        cdef int32_t b, i, nxt
        cdef WheelEntry* e
        for b in range(W_NBUCKETS):
            if self._head[b] >= 0:
                i = self._take(b)
                while i >= 0:
                    e = _entry(&self._pool, i)
                    nxt = e.next
                    self._release(i, e)
                    i = nxt
        self._ovf_min = FR_NONE

    # -- the C API for pending.pyx ---------------------------------------------

    cdef int64_t _schedule(self, double deadline, int64_t payload) except -1:
        global _debug_live
        cdef double q = deadline / self._tick
        cdef int32_t i, b
        cdef uint64_t t
        cdef WheelEntry* e
        if not (q > -FR_TICK_LIMIT and q < FR_TICK_LIMIT):
            raise _time_error("deadline", deadline)
        if self._free >= 0:
            i = self._free
            e = _entry(&self._pool, i)
            self._free = e.next
        else:  # a fresh entry from the untouched top of the pool
            if self._top == self._pool.cap:
                self._grow()
            i = <int32_t>self._top
            self._top += 1
            e = _entry(&self._pool, i)
            e.gen = 1
        e.payload = payload
        if deadline <= self._now:
            e.tick = self._cur
            b = W_DUE
        else:
            t = _biased_floor(q) + 1
            e.tick = t
            b = _bucket_for(t, self._cur)
            if b == W_OVERFLOW and t < self._ovf_min:
                self._ovf_min = t
        self._link(i, e, b)
        self._live += 1
        if FLEETRPC_DEBUG:
            _debug_live += 1
        return (<int64_t>e.gen << 32) | i

    cdef bint _cancel(self, int64_t handle) noexcept:
        cdef int64_t i
        cdef WheelEntry* e
        if handle <= 0:
            return False
        i = <int64_t>(<uint64_t>handle & FR_BLOCK)
        if i >= self._top:
            return False
        e = _entry(&self._pool, i)
        if e.bucket < 0 or <int64_t>e.gen != (handle >> 32):
            return False
        self._unlink(e)
        self._release(<int32_t>i, e)
        return True

    cdef Py_ssize_t _collect(self, double now) except -1:
        # Fire everything due at ``now`` into _due[0:_ndue]; return _ndue.
        cdef double q = now / self._tick
        cdef uint64_t target, k
        self._ndue = 0
        if not (q > -FR_TICK_LIMIT and q < FR_TICK_LIMIT):
            raise _time_error("now", now)
        if now < self._now:
            return 0
        if self._due_cap > FR_DUE_KEEP:  # give a burst's buffer back
            PyMem_Free(self._due)
            self._due = NULL
            self._due_cap = 0
        if self._head[W_DUE] >= 0:
            if self._reserve(self._count[W_DUE]) < 0:
                raise MemoryError()
            self._fire(W_DUE)
        self._now = now
        target = _biased_floor(q)
        if target > self._cur:
            while True:
                k = self._next_event()
                if k > target:
                    break
                # Room for everything step(k) can fire, before it changes
                # anything: out of memory, return what fired so far (the
                # rest stays due) rather than lose it.
                if self._reserve(self._ndue + self._step_bound(k)) < 0:
                    if self._ndue == 0:
                        raise MemoryError()
                    return self._ndue
                self._step(k)
            self._cur = target
        return self._ndue

    # -- internals (mirrored one to one in wheel_py.py) --------------------------

    cdef int _grow(self) except -1:
        # Page 0 doubles up to a page, then one page at a time (paged.pxd):
        # less than a page of slack, nothing copied.  Only the address space
        # grows: entries are initialised when first used (_top), so memory
        # past the top stays untouched and costs no RSS.
        if self._pool.cap + PG_SIZE > FR_MAX_CAP:
            raise MemoryError(f"timing wheel is full ({FR_MAX_CAP} entries)")
        return paged_grow(&self._pool, sizeof(WheelEntry), W_INITIAL_CAP, &_debug_pages)

    cdef int _reserve(self, Py_ssize_t n) noexcept:
        cdef Py_ssize_t cap = self._due_cap
        cdef int64_t* due
        if n <= cap:
            return 0
        if cap == 0:
            cap = 64
        while cap < n:
            cap *= 2
        due = <int64_t*>PyMem_Realloc(self._due, cap * sizeof(int64_t))
        if due == NULL:
            return -1
        self._due = due
        self._due_cap = cap
        return 0

    # The entry's pointer comes with its index: the caller has it already
    # (a page lookup saved per call on the hot path).

    cdef void _link(self, int32_t i, WheelEntry* e, int32_t b) noexcept:
        # Append entry i (at e) to bucket b.
        cdef int32_t tail = self._tail[b]
        e.bucket = b
        e.next = -1
        e.prev = tail
        if tail < 0:
            self._head[b] = i
            if b < W_OVERFLOW:
                self._occ[b >> 6] |= (<uint64_t>1) << (b & 63)
        else:
            _entry(&self._pool, tail).next = i
        self._tail[b] = i
        self._count[b] += 1

    cdef void _unlink(self, WheelEntry* e) noexcept:
        cdef int32_t b = e.bucket, prev = e.prev, nxt = e.next
        if prev < 0:
            self._head[b] = nxt
        else:
            _entry(&self._pool, prev).next = nxt
        if nxt < 0:
            self._tail[b] = prev
        else:
            _entry(&self._pool, nxt).prev = prev
        self._count[b] -= 1
        if self._head[b] < 0 and b < W_OVERFLOW:
            self._occ[b >> 6] &= ~((<uint64_t>1) << (b & 63))

    cdef void _release(self, int32_t i, WheelEntry* e) noexcept:
        # Back to the free list (entry already unlinked); the old handle is now stale.
        global _debug_live
        e.gen += 1
        self._live -= 1
        if FLEETRPC_DEBUG:
            _debug_live -= 1
        if e.gen == FR_GEN_LIMIT:
            e.bucket = W_RETIRED
        else:
            e.bucket = W_FREE
            e.next = self._free
            self._free = i

    cdef int32_t _take(self, int32_t b) noexcept:
        # Detach a whole bucket; return its first entry (the chain keeps its order).
        cdef int32_t head = self._head[b]
        self._head[b] = -1
        self._tail[b] = -1
        self._count[b] = 0
        if b < W_OVERFLOW:
            self._occ[b >> 6] &= ~((<uint64_t>1) << (b & 63))
        return head

    cdef void _fire(self, int32_t b) noexcept:
        # Precondition: _due has room for _count[b] more payloads.
        cdef int32_t i = self._take(b), nxt
        cdef WheelEntry* e
        while i >= 0:
            e = _entry(&self._pool, i)
            nxt = e.next
            self._due[self._ndue] = e.payload
            self._ndue += 1
            self._release(i, e)
            i = nxt

    cdef void _cascade(self, int32_t b) noexcept:
        cdef int32_t i, nxt
        cdef uint64_t c = self._cur
        cdef WheelEntry* e
        if self._head[b] < 0:
            return
        i = self._take(b)
        while i >= 0:
            e = _entry(&self._pool, i)
            nxt = e.next
            self._link(i, e, _bucket_for(e.tick, c))
            i = nxt

    cdef void _replace_overflow(self) noexcept:
        # The current tick just entered a new 2**32-tick block: entries of that
        # block move into the wheel, the others stay (order kept).
        cdef uint64_t c = self._cur, t, low = FR_NONE
        cdef int32_t i = self._head[W_OVERFLOW], nxt
        cdef WheelEntry* e
        while i >= 0:
            e = _entry(&self._pool, i)
            nxt = e.next
            t = e.tick
            if (t ^ c) <= FR_BLOCK:
                self._unlink(e)
                self._link(i, e, _bucket_for(t, c))
            elif t < low:
                low = t
            i = nxt
        self._ovf_min = low

    cdef uint64_t _next_event(self) noexcept:
        # First tick after the current one at which a slot fires or cascades.
        cdef uint64_t c = self._cur, a, b
        cdef int s
        s = _next_set(self._occ, 0, <int>(c & 0xFF) + 1)
        if s >= 0:
            return (c & ~(<uint64_t>0xFF)) | <uint64_t>s
        s = _next_set(self._occ, 1, <int>((c >> 8) & 0xFF) + 1)
        if s >= 0:
            return (c & ~(<uint64_t>0xFFFF)) | (<uint64_t>s << 8)
        s = _next_set(self._occ, 2, <int>((c >> 16) & 0xFF) + 1)
        if s >= 0:
            return (c & ~(<uint64_t>0xFFFFFF)) | (<uint64_t>s << 16)
        s = _next_set(self._occ, 3, <int>((c >> 24) & 0xFF) + 1)
        if s >= 0:
            return (c & ~FR_BLOCK) | (<uint64_t>s << 24)
        if self._head[W_OVERFLOW] >= 0:
            a = ((c >> 32) + 1) << 32
            b = (self._ovf_min >> 32) << 32
            return a if a > b else b
        return FR_NONE

    cdef Py_ssize_t _step_bound(self, uint64_t k) noexcept:
        # Most payloads _step(k) can fire: everything it may move into slot k.
        cdef Py_ssize_t n = self._count[k & 0xFF]
        if (k & 0xFF) == 0:
            n += self._count[0x100 | ((k >> 8) & 0xFF)]
            if (k & 0xFFFF) == 0:
                n += self._count[0x200 | ((k >> 16) & 0xFF)]
                if (k & 0xFFFFFF) == 0:
                    n += self._count[0x300 | ((k >> 24) & 0xFF)]
                    if (k & FR_BLOCK) == 0:
                        n += self._count[W_OVERFLOW]
        return n

    cdef void _step(self, uint64_t k) noexcept:
        # Enter tick k: cascade top-down every level whose slot starts here,
        # then fire level 0's slot.
        self._cur = k
        if (k & FR_BLOCK) == 0 and self._head[W_OVERFLOW] >= 0:
            self._replace_overflow()
        if (k & 0xFFFFFF) == 0:
            self._cascade(<int32_t>(0x300 | ((k >> 24) & 0xFF)))
        if (k & 0xFFFF) == 0:
            self._cascade(<int32_t>(0x200 | ((k >> 16) & 0xFF)))
        if (k & 0xFF) == 0:
            self._cascade(<int32_t>(0x100 | ((k >> 8) & 0xFF)))
        if self._head[k & 0xFF] >= 0:
            self._fire(<int32_t>(k & 0xFF))
