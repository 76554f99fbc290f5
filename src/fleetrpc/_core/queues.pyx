# cython: language_level=3
"""Per-device call queues (compiled; pure twin: ``queues_py.py``).

Contract: ``docs/core.md``, section DeviceQueues; the points it leaves open
are decided in ``queues_py.py``'s docstring, identically here.

Only devices that are not idle have state: a ``_Device`` in one dict, whose
held items are C ``int64_t`` in a small ring buffer that grows by doubling (no
Python object per held item).  A device becomes idle again -- and its state is
dropped -- as soon as nothing is held, nothing is in flight and its presence
and configuration are the defaults.
"""

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int64_t

from fleetrpc.errors import QueueFullError
from fleetrpc._core.constants import DeliveryStrategy

cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object obj, int* overflow) except? -1

# Largest cap and window (both fit a C int everywhere).
cdef Py_ssize_t LIMIT_MAX = 2147483647

# Debug builds only, over all DeviceQueues: device states and ring buffers
# alive, calls held in them (all return to 0 when the queues are idle or gone).
cdef Py_ssize_t _debug_states = 0
cdef Py_ssize_t _debug_rings = 0
cdef Py_ssize_t _debug_queued = 0


def debug_counters():
    """Leak counters of a ``FLEETRPC_DEBUG`` build, ``None`` in a normal one."""
    if FLEETRPC_DEBUG:
        return {"queue_states": _debug_states, "queue_rings": _debug_rings, "queued_calls": _debug_queued}
    return None


# -- argument checks (same types and messages as queues_py) ---------------------

cdef inline int _check_device(object device) except -1:
    if not isinstance(device, str):
        raise TypeError(f"device must be a str, got {type(device).__name__}")
    return 0


cdef inline int64_t _as_item(object item) except -1:
    # Valid items are >= 0, so -1 is free to signal an error.
    cdef int overflow = 0
    cdef long long v
    if not isinstance(item, int):
        raise TypeError(f"item must be an int, got {type(item).__name__}")
    v = PyLong_AsLongLongAndOverflow(item, &overflow)
    if overflow != 0 or v < 0:
        raise ValueError(f"item must be in [0, 2**63), got {item!r}")
    return v


cdef int _as_strategy(object strategy) except -1:
    if isinstance(strategy, int) and 0 <= strategy <= 2:
        return <int>strategy
    raise ValueError(f"unknown delivery strategy {strategy!r}")


cdef Py_ssize_t _as_limit(str name, object value) except -1:
    if not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0 or value > LIMIT_MAX:
        raise ValueError(f"{name} must be in [0, 2**31), got {value!r}")
    return <Py_ssize_t>value


# -- one device -------------------------------------------------------------------

@cython.freelist(256)
@cython.final
cdef class _Device:
    # Fields are declared and documented in queues.pxd.

    def __cinit__(self):
        global _debug_states
        if FLEETRPC_DEBUG:
            _debug_states += 1

    def __dealloc__(self):
        global _debug_states, _debug_rings, _debug_queued
        if FLEETRPC_DEBUG:
            _debug_states -= 1
            _debug_rings -= self.buf != NULL
            _debug_queued -= self.count
        PyMem_Free(self.buf)

    cdef int push(self, int64_t item) except -1:
        global _debug_rings, _debug_queued
        cdef Py_ssize_t i, size
        cdef int64_t* nb
        if self.count == self.size:
            size = self.size * 2 if self.size else RING_MIN
            nb = <int64_t*>PyMem_Malloc(size * sizeof(int64_t))
            if nb == NULL:
                raise MemoryError()
            if FLEETRPC_DEBUG and self.buf == NULL:
                _debug_rings += 1
            for i in range(self.count):  # unroll the ring into the new buffer
                nb[i] = self.buf[(self.head + i) & (self.size - 1)]
            PyMem_Free(self.buf)
            self.buf = nb
            self.size = size
            self.head = 0
        self.buf[(self.head + self.count) & (self.size - 1)] = item
        self.count += 1
        if FLEETRPC_DEBUG:
            _debug_queued += 1
        return 0

    cdef int64_t pop(self) noexcept:
        # Precondition: count > 0.
        global _debug_queued
        cdef int64_t item = self.buf[self.head]
        if FLEETRPC_DEBUG:
            _debug_queued -= 1
        self.head = (self.head + 1) & (self.size - 1)
        self.count -= 1
        if self.count == 0:
            self.clear_held()
        return item

    cdef bint remove(self, int64_t item) noexcept:
        # First occurrence only; later items move up one place (O(held)).
        global _debug_queued
        cdef Py_ssize_t k, j, mask = self.size - 1
        for k in range(self.count):
            if self.buf[(self.head + k) & mask] == item:
                for j in range(k, self.count - 1):
                    self.buf[(self.head + j) & mask] = self.buf[(self.head + j + 1) & mask]
                self.count -= 1
                if FLEETRPC_DEBUG:
                    _debug_queued -= 1
                if self.count == 0:
                    self.clear_held()
                return True
        return False

    cdef void clear_held(self) noexcept:
        global _debug_rings, _debug_queued
        if FLEETRPC_DEBUG:
            _debug_queued -= self.count
        self.count = 0
        self.head = 0
        if self.size > RING_KEEP:  # give big rings back, keep small ones for reuse
            if FLEETRPC_DEBUG:
                _debug_rings -= 1
            PyMem_Free(self.buf)
            self.buf = NULL
            self.size = 0


# -- the queues -------------------------------------------------------------------

cdef class DeviceQueues:
    """Per-device FIFO queues of call ids under a delivery strategy.

    See ``queues.pyi`` for the API documentation.
    """

    def __cinit__(self, *args, **kwargs):
        self._devices = {}

    def __init__(self, strategy=DeliveryStrategy.BURST, cap=100, window=0, assume_online=True):
        self._total_held = 0
        self._strategy = _as_strategy(strategy)
        self._cap = _as_limit("cap", cap)
        self._window = _as_limit("window", window)
        self._assume_online = bool(assume_online)

    # -- defaults ---------------------------------------------------------------

    @property
    def strategy(self):
        return DeliveryStrategy(self._strategy)

    @property
    def cap(self):
        return self._cap

    @property
    def window(self):
        return self._window

    @property
    def assume_online(self):
        return self._assume_online

    # -- internals --------------------------------------------------------------

    cdef _Device _new(self):
        cdef _Device d = _Device.__new__(_Device)
        d.strategy = self._strategy
        d.cap = self._cap
        d.window = self._window
        d.online = self._assume_online
        return d

    cdef bint _is_idle(self, _Device d) noexcept:
        return (
            d.count == 0
            and d.inflight == 0
            and d.online == self._assume_online
            and d.strategy == self._strategy
            and d.cap == self._cap
            and d.window == self._window
        )

    cdef object _release(self, _Device d):
        if d.online and d.count and d.has_free_slot():
            d.inflight += 1
            d.unacked += 1
            self._total_held -= 1
            return d.pop()
        return None

    # -- API --------------------------------------------------------------------

    def configure(self, device, strategy=None, cap=None, window=None):
        # -1: leave as it is.  Check everything before changing anything.
        _check_device(device)
        cdef int new_strategy = -1 if strategy is None else _as_strategy(strategy)
        cdef Py_ssize_t new_cap = -1 if cap is None else _as_limit("cap", cap)
        cdef Py_ssize_t new_window = -1 if window is None else _as_limit("window", window)
        cdef _Device d = self._devices.get(device)
        if d is None:
            d = self._new()
        if new_strategy >= 0:
            d.strategy = new_strategy
        if new_cap >= 0:
            d.cap = new_cap
        if new_window >= 0:
            d.window = new_window
        if self._is_idle(d):
            self._devices.pop(device, None)
        else:
            self._devices[device] = d

    def submit(self, device, item):
        _check_device(device)
        cdef int64_t v = _as_item(item)
        cdef _Device d = self._devices.get(device)
        if d is None:
            d = self._new()
            if d.online:  # an idle online device always has a free slot
                d.inflight = 1
                d.unacked = 1
                self._devices[device] = d
                return True
        elif d.online and d.count == 0 and d.has_free_slot():
            d.inflight += 1
            d.unacked += 1
            return True
        if d.count >= d.cap:
            raise QueueFullError(f"queue of device {device!r} is full ({d.cap} calls)")
        d.push(v)
        self._total_held += 1
        self._devices[device] = d  # new state for an idle device held offline
        return False

    def on_ack(self, device):
        _check_device(device)
        cdef _Device d = self._devices.get(device)
        if d is None or d.unacked == 0:
            raise ValueError(f"device {device!r} has no unacknowledged call in flight")
        d.unacked -= 1
        return self._release(d)  # still in flight: never idle here

    def on_end(self, device, bint acked):
        _check_device(device)
        cdef _Device d = self._devices.get(device)
        if d is None or d.inflight == 0:
            raise ValueError(f"device {device!r} has no call in flight")
        if acked:
            if d.inflight == d.unacked:
                raise ValueError(f"device {device!r} has no acknowledged call in flight")
        elif d.unacked == 0:
            raise ValueError(f"device {device!r} has no unacknowledged call in flight")
        else:
            d.unacked -= 1
        d.inflight -= 1
        item = self._release(d)
        if item is None and self._is_idle(d):
            del self._devices[device]
        return item

    def set_online(self, device, online):
        _check_device(device)
        cdef bint on = online
        cdef _Device d = self._devices.get(device)
        cdef list released = []
        if d is None:
            if on != self._assume_online:
                d = self._new()
                d.online = on
                self._devices[device] = d
            return released
        d.online = on
        if on:
            while d.count and d.has_free_slot():
                released.append(self._release(d))
        if self._is_idle(d):
            del self._devices[device]
        return released

    def is_online(self, device):
        _check_device(device)
        cdef _Device d = self._devices.get(device)
        return self._assume_online if d is None else d.online

    def discard(self, device, item):
        _check_device(device)
        cdef int64_t v = _as_item(item)
        cdef _Device d = self._devices.get(device)
        if d is None or not d.remove(v):
            return False
        self._total_held -= 1
        if self._is_idle(d):
            del self._devices[device]
        return True

    def held(self, device):
        _check_device(device)
        cdef _Device d = self._devices.get(device)
        return 0 if d is None else d.count

    def inflight(self, device):
        _check_device(device)
        cdef _Device d = self._devices.get(device)
        return 0 if d is None else d.inflight

    @property
    def total_held(self):
        return self._total_held

    def drain(self):
        cdef list out = []
        cdef list idle = []
        cdef _Device d
        cdef Py_ssize_t k
        for device, obj in self._devices.items():
            d = <_Device>obj
            for k in range(d.count):
                out.append((device, d.buf[(d.head + k) & (d.size - 1)]))
            d.clear_held()
            if self._is_idle(d):
                idle.append(device)
        for device in idle:
            del self._devices[device]
        self._total_held = 0
        return out

    def __len__(self):
        return len(self._devices)

    def __repr__(self):
        return f"<DeviceQueues devices={len(self._devices)} held={self._total_held}>"
