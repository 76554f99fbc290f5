# Per-device call queues (compiled).  Contract: docs/core.md, DeviceQueues.

cimport cython
from libc.stdint cimport int64_t

cdef extern from *:
    """
    #ifndef FLEETRPC_DEBUG
    #define FLEETRPC_DEBUG 0
    #endif
    """
    # 1 in a debug build (setup.py, FLEETRPC_DEBUG=1): leak counters are kept.
    const int FLEETRPC_DEBUG


cdef enum:
    STRATEGY_BURST = 0          # DeliveryStrategy.BURST
    STRATEGY_ON_ACK = 1         # DeliveryStrategy.SEQUENTIAL_ON_ACK
    STRATEGY_ON_RESPONSE = 2    # DeliveryStrategy.SEQUENTIAL_ON_RESPONSE
    RING_MIN = 4                # first ring buffer size (items)
    RING_KEEP = 8               # an emptied ring at most this big is kept for reuse


@cython.final
cdef class _Device:
    # State of one device that is not idle; idle devices have none at all.
    cdef int64_t* buf           # ring buffer of held items (PyMem, NULL until the first hold)
    cdef Py_ssize_t size        # capacity of buf in items: 0 or a power of two
    cdef Py_ssize_t head        # index in buf of the oldest held item
    cdef Py_ssize_t count       # items held
    cdef Py_ssize_t inflight    # calls sent and not ended yet
    cdef Py_ssize_t unacked     # calls in flight not acknowledged yet (<= inflight)
    cdef Py_ssize_t cap         # most items held at once
    cdef Py_ssize_t window      # BURST slots (0 = unlimited)
    cdef int strategy           # a STRATEGY_* value
    cdef bint online            # presence: held items are released only when True

    cdef int push(self, int64_t item) except -1
    cdef int64_t pop(self) noexcept
    cdef bint remove(self, int64_t item) noexcept
    cdef void clear_held(self) noexcept

    cdef inline bint has_free_slot(self) noexcept:
        # ON_ACK holds a slot until the ack, the others until the end.
        if self.strategy == STRATEGY_BURST:
            return self.window == 0 or self.inflight < self.window
        if self.strategy == STRATEGY_ON_ACK:
            return self.unacked < 1
        return self.inflight < 1


cdef class DeviceQueues:
    cdef dict _devices          # device id -> _Device, only for devices that are not idle
    cdef Py_ssize_t _total_held # items held over all devices
    cdef int _strategy          # default STRATEGY_* value
    cdef Py_ssize_t _cap        # default cap
    cdef Py_ssize_t _window     # default BURST window (0 = unlimited)
    cdef bint _assume_online    # presence of a device with no state

    cdef _Device _new(self)
    cdef bint _is_idle(self, _Device d) noexcept
    cdef object _release(self, _Device d)
