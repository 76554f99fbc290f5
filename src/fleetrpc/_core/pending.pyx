# cython: language_level=3
"""Pending-call table (compiled; pure twin: ``pending_py.py``).

Contract: ``docs/core.md``, section PendingTable; the points it leaves open
are decided in ``pending_py.py``'s docstring, identically here.

An entry is a 40-byte ``PendingSlot`` in a slab (a paged C array with a
free list, ``paged.pxd``: less than a page of slack, never copied once past
its first page); the device and the completion are owned
``PyObject*`` references.  Request ids find their slot through an
open-addressing index of ``int32`` slot numbers (linear probing, Fibonacci
hashing, backward-shift deletion, load <= 1/2), so a pending call costs
40 bytes of slab, about 8 of index and the wheel's 32-byte entry: no Python
object of its own.  The wheel is called through its cdef methods.

Popping several entries (``expire``, ``drain``) runs in two phases: first,
without running any Python code, the entries leave the index and are chained
through their slots' ``link``; only then are the result tuples built.  A
finalizer that runs during that allocation (the cyclic GC) may use the table
freely: the popped slots are neither findable nor free.

The cyclic GC sees the references in the slab through a ``tp_traverse`` and
``tp_clear`` installed at import (Cython has no hook for raw ``PyObject*``
fields), so a completion that refers back to its table is collected.
"""

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memset

from fleetrpc._core.paged cimport PG_SIZE, PagedArray, paged_free, paged_grow
from fleetrpc._core.wheel cimport FLEETRPC_DEBUG, TimingWheel

from asyncio import CancelledError as _CancelledError, InvalidStateError as _InvalidStateError
from contextvars import copy_context as _copy_context

from fleetrpc.errors import UnknownRequestError, WrongDeviceError

cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object obj, int* overflow) except? -1
    void _incref "Py_INCREF"(PyObject* o)
    void _decref "Py_DECREF"(PyObject* o)
    ctypedef int (*visitproc)(PyObject*, void*) noexcept
    ctypedef int (*traverseproc)(PyObject*, visitproc, void*) noexcept
    ctypedef int (*inquiry)(PyObject*) noexcept
    ctypedef struct _GCSlots "PyTypeObject":
        traverseproc tp_traverse
        inquiry tp_clear
    ctypedef PyObject* (*iternextfunc)(PyObject*) except NULL
    ctypedef struct _IterSlots "PyTypeObject":
        iternextfunc tp_iternext
    void PyType_Modified(_IterSlots* t)
    void PyErr_SetObject(object typ, object value)

cdef extern from *:
    """
    /* StopIteration(value) for a generator's yield from, as cheaply as a
       Future's iterator does it: no exception object unless the value would
       be unpacked as arguments (a tuple) or taken for the exception. */
    static int fr_stop_iteration(PyObject* value) {
        if (PyTuple_Check(value) || PyExceptionInstance_Check(value)) {
            PyObject* exc = PyObject_CallOneArg(PyExc_StopIteration, value);
            if (exc == NULL) return -1;
            PyErr_SetObject(PyExc_StopIteration, exc);
            Py_DECREF(exc);
        } else {
            PyErr_SetObject(PyExc_StopIteration, value);
        }
        return 0;
    }
    /* loop.call_soon(fn, arg, context=ctx) through vectorcall, as asyncio's
       own Future does (no argument tuple, no keyword dict). */
    static PyObject* fr_call_soon(PyObject* call_soon, PyObject* fn, PyObject* arg,
                                  PyObject* ctx, PyObject* kwnames) {
        PyObject* stack[4] = {NULL, fn, arg, ctx};
        return PyObject_Vectorcall(call_soon, stack + 1, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, kwnames);
    }
    """
    int fr_stop_iteration(object value) except -1
    object fr_call_soon(object call_soon, object fn, object arg, object ctx, object kwnames)

cdef extern from *:
    """
    #define FR_RID_LIMIT ((int64_t)1 << 53)
    #define FR_FLAGS_LIMIT ((int64_t)1 << 32)
    #define FR_FIB 0x9E3779B97F4A7C15ULL
    #define FR_SLAB_MAX ((Py_ssize_t)1 << 30)
    """
    const int64_t FR_RID_LIMIT      # request ids stay below 2**53 (exact in JSON)
    const int64_t FR_FLAGS_LIMIT    # flags are a uint32
    const uint64_t FR_FIB           # 2**64 / golden ratio: Fibonacci hashing
    const Py_ssize_t FR_SLAB_MAX    # most slots (slot numbers are int32)

ctypedef struct _RidSlot:           # drain() sorts these by rid
    int64_t rid
    int32_t slot

# Debug builds only: pending entries alive over all tables (0 after every test).
cdef Py_ssize_t _debug_live = 0
# Memory blocks of the tables' slabs (pages + directories) alive; counted in
# every build (only when a slab grows or is freed), reported in debug builds.
cdef Py_ssize_t _debug_pages = 0


def debug_counters():
    """Leak counters of a ``FLEETRPC_DEBUG`` build, ``None`` in a normal one."""
    if FLEETRPC_DEBUG:
        return {"pending_entries": _debug_live, "pending_pages": _debug_pages}
    return None


# -- helpers (same checks and messages as pending_py) ---------------------------

cdef inline int64_t _as_rid(object rid) except? -1:
    # Any int is accepted; ids outside int64 are simply never pending (0).
    cdef int overflow = 0
    cdef long long v
    if not isinstance(rid, int):
        raise TypeError(f"rid must be an int, got {type(rid).__name__}")
    v = PyLong_AsLongLongAndOverflow(rid, &overflow)
    if overflow != 0:
        return 0
    return v


cdef inline int64_t _as_flags(object flags) except -1:
    cdef int overflow = 0
    cdef long long v
    if not isinstance(flags, int):
        raise TypeError(f"flags must be an int, got {type(flags).__name__}")
    v = PyLong_AsLongLongAndOverflow(flags, &overflow)
    if overflow != 0 or v < 0 or v >= FR_FLAGS_LIMIT:
        raise ValueError(f"flags must be in [0, 2**32), got {flags!r}")
    return v


cdef inline Py_ssize_t _home(int64_t rid, int shift) noexcept nogil:
    return <Py_ssize_t>((<uint64_t>rid * FR_FIB) >> shift)


cdef int _cmp_rid(const void* a, const void* b) noexcept nogil:
    cdef int64_t x = (<const _RidSlot*>a).rid, y = (<const _RidSlot*>b).rid
    return (x > y) - (x < y)


cdef object _unknown(object rid):
    return UnknownRequestError(f"request {rid!r} is not pending")


# -- the completion of one call() --------------------------------------------------------
#
# Same semantics as pending_py.CallSite / CallFuture (see there).  A
# CallFuture is 48 bytes (+16 of GC header): its site, two object words and
# one word of bits (rid << 4 | MULTI | BLOCKING | state).  While pending, the
# two words are the first callback and its context (a Task's wakeup: the
# common case), or, with MULTI, a list of (fn, context) and None; once done,
# the result / exception / cancel message and None.

cdef enum:
    CF_PENDING = 0
    CF_RESULT = 1
    CF_ERROR = 2
    CF_CANCELLED = 3
    CF_STATE = 3                # mask of the state bits
    CF_BLOCKING = 4             # _asyncio_future_blocking
    CF_MULTI = 8                # pending with a list of callbacks in _a
    CF_RID_SHIFT = 4


@cython.final
@cython.auto_pickle(False)
cdef class CallSite:
    """What the futures of one dispatcher's calls share: the event loop and
    ``cancel(rid)``, the hook that drops a call's pending entry when its
    future is cancelled."""
    cdef readonly object loop
    cdef object _call_soon
    cdef object _cancel

    def __init__(self, object loop, object cancel):
        self.loop = loop
        self._call_soon = loop.call_soon
        self._cancel = cancel

    def future(self):
        """A new pending future of this site; ``PendingTable.add`` with it as
        the completion gives it its request id."""
        cdef CallFuture fut = CallFuture.__new__(CallFuture)
        fut._site = self
        return fut


cdef tuple _CONTEXT_KW = ("context",)


cdef inline object _cancelled_error(object msg):
    return _CancelledError() if msg is None else _CancelledError(msg)


cdef object _as_exception(object exception):
    if isinstance(exception, type):
        exception = exception()
    if type(exception) is StopIteration:
        raise TypeError("StopIteration interacts badly with generators and cannot be raised into a Future")
    if not isinstance(exception, BaseException):
        raise TypeError(f"exception must be a BaseException, got {type(exception).__name__}")
    return exception


cdef int _cf_done(CallFuture fut, uint64_t state, object value) except -1:
    # Settle and schedule the callbacks (never run them here), like a Future.
    cdef uint64_t bits = fut._bits
    a = fut._a
    b = fut._b
    fut._bits = (bits & ~(<uint64_t>(CF_STATE | CF_MULTI))) | state
    fut._a = value
    fut._b = None
    call_soon = fut._site._call_soon
    if bits & CF_MULTI:
        for fn, context in <list>a:
            fr_call_soon(call_soon, fn, fut, context, _CONTEXT_KW)
    elif a is not None:
        fr_call_soon(call_soon, a, fut, b, _CONTEXT_KW)
    return 0


cdef PyObject* _cf_iternext(PyObject* o) except NULL:
    # CallFuture's tp_iternext (installed below): what `await` and a Task's
    # send(None) call.  Cython's own __next__ would add a traceback entry
    # (a frame object) to every StopIteration that carries the reply.
    cdef CallFuture fut = <CallFuture>o
    cdef uint64_t state = fut._bits & CF_STATE
    if state == CF_PENDING:
        fut._bits |= CF_BLOCKING
        _incref(o)
        return o
    if state == CF_RESULT:
        fr_stop_iteration(fut._a)
        return NULL
    if state == CF_ERROR:
        PyErr_SetObject(type(fut._a), fut._a)
        return NULL
    raise _cancelled_error(fut._a)


@cython.final
@cython.auto_pickle(False)
cdef class CallFuture:
    """The completion of one pending call and the object its caller awaits:
    the Future protocol of asyncio plus ``send``/``throw``/``close``.  Made
    by ``CallSite.future()``; see ``pending_py.CallFuture``."""
    cdef CallSite _site
    cdef object _a          # see above: a callback, a list of them, or the outcome
    cdef object _b          # the callback's context, or None
    cdef uint64_t _bits     # rid << 4 | MULTI | BLOCKING | state

    def __init__(self):
        raise TypeError("CallFuture is made by CallSite.future()")

    @property
    def rid(self):
        """The call's request id (0 until the table has it)."""
        return <int64_t>(self._bits >> CF_RID_SHIFT)

    @property
    def _asyncio_future_blocking(self):
        return (self._bits & CF_BLOCKING) != 0

    @_asyncio_future_blocking.setter
    def _asyncio_future_blocking(self, value):
        if value:
            self._bits |= CF_BLOCKING
        else:
            self._bits &= ~(<uint64_t>CF_BLOCKING)

    def __repr__(self):
        state = ("pending", "finished", "failed", "cancelled")[self._bits & CF_STATE]
        return f"<CallFuture rid={self.rid} {state}>"

    # -- Future protocol ------------------------------------------------------------

    def get_loop(self):
        return self._site.loop

    def done(self):
        return (self._bits & CF_STATE) != CF_PENDING

    def cancelled(self):
        return (self._bits & CF_STATE) == CF_CANCELLED

    def result(self):
        cdef uint64_t state = self._bits & CF_STATE
        if state == CF_RESULT:
            return self._a
        if state == CF_ERROR:
            raise self._a
        if state == CF_CANCELLED:
            raise _cancelled_error(self._a)
        raise _InvalidStateError("Result is not set.")

    def exception(self):
        cdef uint64_t state = self._bits & CF_STATE
        if state == CF_RESULT:
            return None
        if state == CF_ERROR:
            return self._a
        if state == CF_CANCELLED:
            raise _cancelled_error(self._a)
        raise _InvalidStateError("Exception is not set.")

    def add_done_callback(self, fn, *, context=None):
        if context is None:
            context = _copy_context()
        if (self._bits & CF_STATE) != CF_PENDING:
            self._site._call_soon(fn, self, context=context)
        elif self._bits & CF_MULTI:
            (<list>self._a).append((fn, context))
        elif self._a is None:
            self._a = fn
            self._b = context
        else:
            self._a = [(self._a, self._b), (fn, context)]
            self._b = None
            self._bits |= CF_MULTI

    def remove_done_callback(self, fn):
        cdef Py_ssize_t removed = 0
        cdef list keep
        if (self._bits & CF_STATE) != CF_PENDING:
            return 0
        if self._bits & CF_MULTI:
            keep = [(f, c) for f, c in <list>self._a if f != fn]
            removed = len(<list>self._a) - len(keep)
            self._a = keep
        elif self._a is not None and self._a == fn:
            self._a = None
            self._b = None
            removed = 1
        return removed

    def cancel(self, msg=None):
        if (self._bits & CF_STATE) != CF_PENDING:
            return False
        _cf_done(self, CF_CANCELLED, msg)
        # The call's entry goes too: nobody will take its answer.
        self._site._cancel(<int64_t>(self._bits >> CF_RID_SHIFT))
        return True

    def set_result(self, result):
        if (self._bits & CF_STATE) != CF_PENDING:
            raise _InvalidStateError(f"invalid state: {self!r}")
        _cf_done(self, CF_RESULT, result)

    def set_exception(self, exception):
        if (self._bits & CF_STATE) != CF_PENDING:
            raise _InvalidStateError(f"invalid state: {self!r}")
        _cf_done(self, CF_ERROR, _as_exception(exception))

    def _finish(self, result, error):
        """The dispatcher's completion: a no-op once done (cancelled)."""
        if (self._bits & CF_STATE) == CF_PENDING:
            if error is None:
                _cf_done(self, CF_RESULT, result)
            else:
                _cf_done(self, CF_ERROR, error)

    # -- awaitable / coroutine protocol ---------------------------------------------

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        if (self._bits & CF_STATE) == CF_PENDING:
            self._bits |= CF_BLOCKING
            return self
        raise StopIteration(self.result())

    def send(self, value):
        cdef PyObject* r = _cf_iternext(<PyObject*>self)  # a new reference (self)
        out = <object>r
        _decref(r)
        return out

    def throw(self, typ, val=None, tb=None):
        # Whoever awaited this gives up on it (a cancelled task, a closed
        # coroutine): the call goes with it.
        if (self._bits & CF_STATE) == CF_PENDING:
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

    def close(self):
        if (self._bits & CF_STATE) == CF_PENDING:
            self.cancel()


# -- the table -------------------------------------------------------------------------

@cython.final
@cython.no_gc_clear
@cython.auto_pickle(False)
cdef class PendingTable:
    """Request id -> (device, completion, deadline handle, flags).

    ``PendingTable(wheel)``; see ``docs/core.md`` and the docstring of
    ``fleetrpc._core.pending_py`` for the exact semantics.
    """
    # Fields are declared and documented in pending.pxd.

    def __cinit__(self, object wheel):
        self._free = -1
        self._next_rid = 1
        if not isinstance(wheel, TimingWheel):
            t = type(wheel)
            raise TypeError(
                "wheel must be a TimingWheel of the same variant, "
                f"got {t.__module__}.{t.__qualname__}"
            )
        self._wheel = <TimingWheel>wheel

    def __dealloc__(self):
        self._release_all()
        paged_free(&self._slab, &_debug_pages)
        PyMem_Free(self._index)

    # -- public API ------------------------------------------------------------

    def __len__(self):
        return self._count

    def __contains__(self, object rid):
        if not isinstance(rid, int):
            return False
        return self._find(_as_rid(rid)) >= 0

    @property
    def next_rid(self):
        """The request id the next ``add`` returns: every id below it was
        handed out by this table (ids only grow)."""
        return self._next_rid

    def __repr__(self):
        return f"<PendingTable pending={self._count} next_rid={self._next_rid}>"

    def add(self, object device, object completion, double deadline, object flags=0):
        """Store a pending call and schedule its deadline; return its request id."""
        global _debug_live
        cdef int64_t f, h, rid = self._next_rid
        cdef int32_t s
        cdef PendingSlot* p
        if not isinstance(device, str):
            raise TypeError(f"device must be a str, got {type(device).__name__}")
        f = _as_flags(flags)
        if rid >= FR_RID_LIMIT:
            raise OverflowError("request ids are exhausted (2**53)")
        # Make room first: once the wheel holds the deadline nothing may fail.
        if self._free < 0 and self._top == self._slab.cap:
            self._grow_slab()
        if (self._count + 1) * 2 > self._icap:
            self._rehash(self._icap * 2 if self._icap else P_INITIAL_INDEX)
        h = self._wheel._schedule(deadline, rid)
        if self._free >= 0:
            s = self._free
            p = _slot(&self._slab, s)
            self._free = p.link
        else:  # a fresh slot from the untouched top of the slab
            s = <int32_t>self._top
            self._top += 1
            p = _slot(&self._slab, s)
        p.rid = rid
        p.handle = h
        p.flags = <uint32_t>f
        p.link = -1
        _incref(<PyObject*>device)
        p.device = <PyObject*>device
        _incref(<PyObject*>completion)
        p.completion = <PyObject*>completion
        self._index_insert(rid, s)
        self._count += 1
        self._used += 1
        self._next_rid = rid + 1
        if FLEETRPC_DEBUG:
            _debug_live += 1
        if type(completion) is CallFuture:  # what its cancel() drops
            (<CallFuture>completion)._bits |= <uint64_t>rid << CF_RID_SHIFT
        return rid

    def resolve(self, object rid, object device=None):
        """Pop a pending call, cancel its deadline, return its completion."""
        cdef int64_t r = _as_rid(rid)
        cdef Py_ssize_t pos
        cdef int32_t s
        cdef PendingSlot* p
        if device is not None and not isinstance(device, str):
            raise TypeError(f"device must be a str or None, got {type(device).__name__}")
        pos = self._find(r)
        if pos < 0:
            raise _unknown(rid)
        if device is not None:
            owner = <object>_slot(&self._slab, self._index[pos]).device
            if device != owner:
                raise WrongDeviceError(
                    f"request {rid!r} belongs to device {owner!r}, not {device!r}"
                )
            if type(device) is not str:  # a subclass's __ne__ may have used the table
                pos = self._find(r)
                if pos < 0:
                    raise _unknown(rid)
        s = self._index[pos]  # _detach without the link: _release sets it
        self._index_delete(pos)
        self._count -= 1
        p = _slot(&self._slab, s)
        self._wheel._cancel(p.handle)
        completion = <object>p.completion
        self._release(s, p)
        self._maybe_shrink()
        return completion

    def peek(self, object rid):
        """``(device, completion, flags)`` of a pending call, or ``None``."""
        cdef Py_ssize_t pos = self._find(_as_rid(rid))
        cdef PendingSlot* p
        if pos < 0:
            return None
        p = _slot(&self._slab, self._index[pos])
        return (<object>p.device, <object>p.completion, p.flags)

    def set_flags(self, object rid, object flags):
        """Replace the flags of a pending call."""
        cdef int64_t r = _as_rid(rid)
        cdef int64_t f = _as_flags(flags)
        cdef Py_ssize_t pos = self._find(r)
        if pos < 0:
            raise _unknown(rid)
        _slot(&self._slab, self._index[pos]).flags = <uint32_t>f

    def rearm(self, object rid, double deadline):
        """Give a pending call a new deadline (for a retry)."""
        cdef int64_t r = _as_rid(rid), h
        cdef Py_ssize_t pos = self._find(r)
        cdef PendingSlot* p
        if pos < 0:
            raise _unknown(rid)
        h = self._wheel._schedule(deadline, r)  # may raise: keep the old deadline
        p = _slot(&self._slab, self._index[pos])
        self._wheel._cancel(p.handle)
        p.handle = h

    def expire(self, double now):
        """Advance the wheel to ``now``; pop and return every call now due."""
        cdef Py_ssize_t n = self._wheel._collect(now), j, pos
        cdef int64_t* due = self._wheel._due
        cdef int32_t s, head = -1, tail = -1
        for j in range(n):
            pos = self._find(due[j])
            if pos < 0:  # not one of ours
                continue
            s = self._detach(pos)
            if tail < 0:
                head = s
            else:
                _slot(&self._slab, tail).link = s
            tail = s
        return self._pop_chain(head)

    def drain(self):
        """Pop every pending call (deadlines cancelled), ascending request id."""
        cdef Py_ssize_t n = self._count, i, k = 0
        cdef _RidSlot* order
        cdef int32_t s, head = -1, tail = -1
        if n == 0:
            return []
        order = <_RidSlot*>PyMem_Malloc(n * sizeof(_RidSlot))
        if order == NULL:
            raise MemoryError()
        for i in range(self._icap):
            s = self._index[i]
            if s >= 0:
                order[k].rid = _slot(&self._slab, s).rid
                order[k].slot = s
                k += 1
        qsort(order, <size_t>n, sizeof(_RidSlot), _cmp_rid)
        for i in range(n):
            s = order[i].slot
            self._wheel._cancel(_slot(&self._slab, s).handle)
            _slot(&self._slab, s).link = -1
            if tail < 0:
                head = s
            else:
                _slot(&self._slab, tail).link = s
            tail = s
        PyMem_Free(order)
        memset(self._index, 0xFF, self._icap * sizeof(int32_t))  # every entry -1
        self._count = 0
        return self._pop_chain(head)

    # -- index: rid -> slot ------------------------------------------------------

    cdef Py_ssize_t _find(self, int64_t rid) noexcept:
        # Position of rid in _index, or -1.
        cdef Py_ssize_t i, mask
        cdef int32_t s
        if rid <= 0 or self._icap == 0:
            return -1
        mask = self._icap - 1
        i = _home(rid, self._ishift)
        while True:
            s = self._index[i]
            if s < 0:
                return -1
            if _slot(&self._slab, s).rid == rid:
                return i
            i = (i + 1) & mask

    cdef void _index_insert(self, int64_t rid, int32_t slot) noexcept:
        # Precondition: rid is not in the index, which has a free position.
        cdef Py_ssize_t mask = self._icap - 1
        cdef Py_ssize_t i = _home(rid, self._ishift)
        while self._index[i] >= 0:
            i = (i + 1) & mask
        self._index[i] = slot

    cdef void _index_delete(self, Py_ssize_t pos) noexcept:
        # Backward-shift deletion: no tombstones, probe chains stay short.
        cdef Py_ssize_t mask = self._icap - 1, i = pos, j = pos, k
        cdef int32_t s
        while True:
            j = (j + 1) & mask
            s = self._index[j]
            if s < 0:
                self._index[i] = -1
                return
            k = _home(_slot(&self._slab, s).rid, self._ishift)
            # The entry at j may fill the hole at i unless its home lies
            # cyclically in (i, j].
            if (i <= j and i < k <= j) or (i > j and (k > i or k <= j)):
                continue
            self._index[i] = s
            i = j

    cdef int _rehash(self, Py_ssize_t icap) except -1:
        cdef int32_t* index = <int32_t*>PyMem_Malloc(icap * sizeof(int32_t))
        cdef int32_t* old = self._index
        cdef Py_ssize_t i, oldcap = self._icap
        cdef int shift = 64
        if index == NULL:
            raise MemoryError()
        memset(index, 0xFF, icap * sizeof(int32_t))
        i = icap
        while i > 1:
            i >>= 1
            shift -= 1
        self._index = index
        self._icap = icap
        self._ishift = shift
        for i in range(oldcap):  # from the old index: popped slots stay out
            if old[i] >= 0:
                self._index_insert(_slot(&self._slab, old[i]).rid, old[i])
        PyMem_Free(old)
        return 0

    # -- slab ----------------------------------------------------------------------

    cdef int _grow_slab(self) except -1:
        # Page 0 doubles up to a page, then one page at a time (paged.pxd):
        # less than a page of slack, nothing copied.  Only the address space
        # grows: slots are initialised when first used (_top), so memory past
        # the top stays untouched and costs no RSS.
        if self._slab.cap + PG_SIZE > FR_SLAB_MAX:
            raise MemoryError(f"pending table is full ({FR_SLAB_MAX} entries)")
        return paged_grow(&self._slab, sizeof(PendingSlot), P_INITIAL_CAP, &_debug_pages)

    cdef int32_t _detach(self, Py_ssize_t pos) noexcept:
        # Take the entry at index position pos out of the index; it keeps its
        # slot (and its references) until _release.
        cdef int32_t s = self._index[pos]
        self._index_delete(pos)
        self._count -= 1
        _slot(&self._slab, s).link = -1
        return s

    cdef void _release(self, int32_t s, PendingSlot* p) noexcept:
        # Free a detached slot (s, at p) and drop its references.  The DECREFs
        # come last: they may run any Python code, including code that uses
        # this table.
        global _debug_live
        cdef PyObject* device = p.device
        cdef PyObject* completion = p.completion
        p.rid = 0
        p.handle = 0
        p.device = NULL
        p.completion = NULL
        p.flags = 0
        p.link = self._free
        self._free = s
        self._used -= 1
        if FLEETRPC_DEBUG:
            _debug_live -= 1
        _decref(device)
        _decref(completion)

    cdef list _pop_chain(self, int32_t head):
        # Phase two of expire/drain: build (rid, device, completion, flags) for
        # every detached slot of the chain and free the slots.
        cdef list out = []
        cdef int32_t nxt
        cdef int64_t rid
        cdef uint32_t flags
        cdef PyObject* device
        cdef PyObject* completion
        try:
            while head >= 0:
                # Read the slot before allocating: a GC run may move the slab.
                rid = _slot(&self._slab, head).rid
                device = _slot(&self._slab, head).device
                completion = _slot(&self._slab, head).completion
                flags = _slot(&self._slab, head).flags
                nxt = _slot(&self._slab, head).link
                item = (rid, <object>device, <object>completion, flags)
                self._release(head, _slot(&self._slab, head))
                head = nxt
                out.append(item)
        finally:
            while head >= 0:  # only after an error: drop what cannot be returned
                nxt = _slot(&self._slab, head).link
                self._release(head, _slot(&self._slab, head))
                head = nxt
            self._maybe_shrink()
        return out

    cdef int32_t _detach_all(self) noexcept:
        # Cancel every deadline and detach every entry; return the chain.
        cdef Py_ssize_t i
        cdef int32_t s, head = -1, tail = -1
        if self._count == 0:
            return -1
        for i in range(self._icap):
            s = self._index[i]
            if s >= 0:
                self._index[i] = -1
                self._wheel._cancel(_slot(&self._slab, s).handle)
                _slot(&self._slab, s).link = -1
                if tail < 0:
                    head = s
                else:
                    _slot(&self._slab, tail).link = s
                tail = s
        self._count = 0
        return head

    cdef void _release_all(self) noexcept:
        # __dealloc__ and the GC's tp_clear: drop every entry, return nothing.
        cdef int32_t head = self._detach_all(), nxt
        while head >= 0:
            nxt = _slot(&self._slab, head).link
            self._release(head, _slot(&self._slab, head))
            head = nxt
        self._maybe_shrink()

    cdef void _maybe_shrink(self) noexcept:
        # An emptied big table gives its memory back (a burst is over).
        if self._used == 0 and self._slab.cap > P_KEEP:
            paged_free(&self._slab, &_debug_pages)
            PyMem_Free(self._index)
            self._index = NULL
            self._top = 0
            self._icap = 0
            self._ishift = 0
            self._free = -1


# -- cyclic GC: make the slab's references visible ------------------------------------

cdef traverseproc _base_traverse = NULL


cdef int _traverse(PyObject* o, visitproc visit, void* arg) noexcept:
    cdef PagedArray* slab = &(<PendingTable>o)._slab
    cdef Py_ssize_t i, top = (<PendingTable>o)._top
    cdef PendingSlot* p
    cdef int r
    if _base_traverse != NULL:
        r = _base_traverse(o, visit, arg)
        if r:
            return r
    for i in range(top):  # slots above the top were never initialised
        p = _slot(slab, i)
        if p.completion != NULL:
            r = visit(p.completion, arg)
            if r:
                return r
            r = visit(p.device, arg)
            if r:
                return r
    return 0


cdef int _clear(PyObject* o) noexcept:
    # Break cycles through the completions; the wheel stays (no_gc_clear), so
    # the table remains usable, just empty.
    (<PendingTable>o)._release_all()
    return 0


(<_IterSlots*><void*>CallFuture).tp_iternext = _cf_iternext
PyType_Modified(<_IterSlots*><void*>CallFuture)

_base_traverse = (<_GCSlots*><void*>PendingTable).tp_traverse
(<_GCSlots*><void*>PendingTable).tp_traverse = _traverse
(<_GCSlots*><void*>PendingTable).tp_clear = _clear
