# Pending-call table (compiled).  Contract: docs/core.md, PendingTable; the
# open points are decided in pending_py.py's docstring.

cimport cython
from cpython.object cimport PyObject
from libc.stdint cimport int32_t, int64_t, uint32_t

from fleetrpc._core.paged cimport PG_MASK, PG_SHIFT, PagedArray
from fleetrpc._core.wheel cimport TimingWheel


cdef enum:
    P_INITIAL_CAP = 64          # first slab size (slots); page 0 doubles up to a page
    P_INITIAL_INDEX = 128       # first index size (power of two, >= 2 x slab)
    P_KEEP = 1024               # an emptied slab bigger than this is freed


ctypedef struct PendingSlot:    # 40 bytes
    int64_t rid                 # request id; 0 while the slot is free
    int64_t handle              # wheel handle of the entry's deadline
    PyObject* device            # owned reference to the device id (str); NULL while free
    PyObject* completion        # owned reference to the caller's completion; NULL while free
    uint32_t flags              # the caller's bits (ACKED, SENT, ...)
    int32_t link                # next slot of the free list or of a batch being popped; -1 = end


# Slot s of a slab (paged.pxd): a page lookup, no bounds check.
cdef inline PendingSlot* _slot(PagedArray* slab, Py_ssize_t s) noexcept nogil:
    return <PendingSlot*>slab.pages[s >> PG_SHIFT] + (s & PG_MASK)


@cython.final
@cython.no_gc_clear
cdef class PendingTable:
    # no_gc_clear keeps _wheel valid until __dealloc__ (which cancels the
    # deadlines); pending.pyx installs its own tp_traverse/tp_clear, which
    # also see the completions held in the slab.
    cdef TimingWheel _wheel     # deadlines: payload = rid; only expire() advances it
    cdef PagedArray _slab       # entries, in pages that never move once full (paged.pxd); freed when empty and big
    cdef Py_ssize_t _top        # slots ever used; those above were never touched (no RSS)
    cdef int32_t _free          # head of the free-slot list (released slots); -1 when empty
    cdef Py_ssize_t _used       # slots off the free list: pending + being popped
    cdef int32_t* _index        # open addressing (linear probing): rid -> slot; -1 = empty
    cdef Py_ssize_t _icap       # size of _index: 0 or a power of two, >= 2 x _count
    cdef int _ishift            # 64 - log2(_icap): Fibonacci hashing keeps the top bits
    cdef Py_ssize_t _count      # pending entries (len)
    cdef int64_t _next_rid      # next request id (never reused)

    cdef Py_ssize_t _find(self, int64_t rid) noexcept
    cdef void _index_insert(self, int64_t rid, int32_t slot) noexcept
    cdef void _index_delete(self, Py_ssize_t pos) noexcept
    cdef int _rehash(self, Py_ssize_t icap) except -1
    cdef int _grow_slab(self) except -1
    cdef int32_t _detach(self, Py_ssize_t pos) noexcept
    cdef void _release(self, int32_t s, PendingSlot* p) noexcept
    cdef list _pop_chain(self, int32_t head)
    cdef int32_t _detach_all(self) noexcept
    cdef void _maybe_shrink(self) noexcept
    cdef void _release_all(self) noexcept
