# Timing wheel for call deadlines (compiled).  Contract: docs/core.md,
# TimingWheel; the open points are decided in wheel_py.py's docstring.
# pending.pyx cimports this file and calls the cdef methods below directly.

cimport cython
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t

from fleetrpc._core.paged cimport PG_MASK, PG_SHIFT, PagedArray

cdef extern from *:
    """
    #ifndef FLEETRPC_DEBUG
    #define FLEETRPC_DEBUG 0
    #endif
    #if defined(_MSC_VER)
    #include <intrin.h>
    static __inline int fleetrpc_ctz64(unsigned __int64 x) {
        unsigned long i; _BitScanForward64(&i, x); return (int)i;
    }
    #else
    #define fleetrpc_ctz64(x) __builtin_ctzll(x)
    #endif
    """
    # 1 in a debug build (setup.py, FLEETRPC_DEBUG=1): leak counters are kept.
    const int FLEETRPC_DEBUG
    # Index of the lowest set bit; x must not be 0.
    int fleetrpc_ctz64(uint64_t x) noexcept nogil


cdef enum:
    W_INITIAL_CAP = 64          # first pool size (entries); page 0 doubles up to a page
    W_SLOTS = 256               # slots per level
    W_LEVELS = 4                # levels: 4 x 8 bits = a 2**32-tick block
    W_OVERFLOW = 1024           # bucket: ticks past the current 2**32-tick block
    W_DUE = 1025                # bucket: deadlines at or before the wheel's time
    W_NBUCKETS = 1026           # 4 x 256 slots + overflow + due
    W_OCC_WORDS = 16            # 64-bit words of the occupancy bitmap (1024 bits)
    W_FREE = -1                 # bucket of an entry on the free list
    W_RETIRED = -2              # bucket of an entry whose generation ran out


ctypedef struct WheelEntry:     # 32 bytes
    uint64_t tick               # due tick, biased by 2**63 so unsigned order is time order
    int64_t payload             # the caller's int in [0, 2**63); the pending table's rid
    int32_t next                # next entry of the bucket (or of the free list); -1 = none
    int32_t prev                # previous entry of the bucket; -1 = none
    uint32_t gen                # generation in [1, 2**31): the handle's high half
    int32_t bucket              # bucket the entry is linked in, W_FREE or W_RETIRED


# Entry i of a pool (paged.pxd): a page lookup, no bounds check.
cdef inline WheelEntry* _entry(PagedArray* pool, Py_ssize_t i) noexcept nogil:
    return <WheelEntry*>pool.pages[i >> PG_SHIFT] + (i & PG_MASK)


@cython.final
cdef class TimingWheel:
    cdef PagedArray _pool       # all entries, in pages that never move once full (paged.pxd)
    cdef Py_ssize_t _top        # entries ever used; those above were never touched (no RSS)
    cdef int32_t _free          # head of the LIFO free list (released entries); -1 when empty
    cdef Py_ssize_t _live       # scheduled entries (len)
    cdef double _tick           # seconds per tick
    cdef double _now            # wheel time: the latest advance() (or the constructor's) now
    cdef uint64_t _cur          # biased tick of _now: every tick <= _cur has been processed
    cdef uint64_t _ovf_min      # lower bound of the overflow bucket's ticks
    cdef int32_t _head[W_NBUCKETS]    # first entry of each bucket; -1 = empty
    cdef int32_t _tail[W_NBUCKETS]    # last entry of each bucket; -1 = empty
    cdef int32_t _count[W_NBUCKETS]   # entries in each bucket
    cdef uint64_t _occ[W_OCC_WORDS]   # bit b set when level bucket b (< 1024) is not empty
    cdef int64_t* _due          # payloads returned by the last _collect (PyMem)
    cdef Py_ssize_t _due_cap    # capacity of _due
    cdef Py_ssize_t _ndue       # payloads in _due

    # The C API used by pending.pyx.
    cdef int64_t _schedule(self, double deadline, int64_t payload) except -1
    cdef bint _cancel(self, int64_t handle) noexcept
    cdef Py_ssize_t _collect(self, double now) except -1

    # Internals.
    cdef int _grow(self) except -1
    cdef int _reserve(self, Py_ssize_t n) noexcept
    cdef void _link(self, int32_t i, WheelEntry* e, int32_t b) noexcept
    cdef void _unlink(self, WheelEntry* e) noexcept
    cdef void _release(self, int32_t i, WheelEntry* e) noexcept
    cdef int32_t _take(self, int32_t b) noexcept
    cdef void _fire(self, int32_t b) noexcept
    cdef void _cascade(self, int32_t b) noexcept
    cdef void _replace_overflow(self) noexcept
    cdef uint64_t _next_event(self) noexcept
    cdef Py_ssize_t _step_bound(self, uint64_t k) noexcept
    cdef void _step(self, uint64_t k) noexcept
