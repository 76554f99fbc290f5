# The MQTT packet fast path's contract (see mqttfast_py.py for behaviour).

cimport cython


@cython.final
cdef class MqttReader:
    cdef bytearray _buf      # the stream's unconsumed part starts at _pos (a partial packet)
    cdef Py_ssize_t _pos     # read offset into _buf; the consumed prefix is cut off rarely
    cdef bint _busy          # inside feed (which is not re-entrant: _buf must not move)
    cdef readonly Py_ssize_t handler_errors  # packets whose handler raised (logged; parsing went on)
    cdef object _on_publish  # on_publish(topic, payload, None)
    cdef object _on_packet   # on_packet(cmd, body) for every other packet
    cdef object _on_puback   # on_puback(mid), or None: PUBACK goes to on_packet
    cdef object _on_props    # on_props(topic, payload, props) for MQTT 5 properties
    cdef bint _v5            # MQTT 5: PUBLISH carries a property block
    cdef bytearray _acks     # PUBACKs owed for delivered QoS 1 messages

    cdef Py_ssize_t _parse(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t pos,
                           Py_ssize_t* count) except -1
    cdef int _publish(self, unsigned char cmd, const unsigned char* p,
                      Py_ssize_t i, Py_ssize_t end) except -1
    cdef void _handler_failed(self)
