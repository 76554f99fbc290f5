# The MQTT packet fast path's contract (see mqttfast_py.py for behaviour).

cimport cython


@cython.final
cdef class MqttReader:
    cdef bytes _buf          # unconsumed tail of the stream (partial packet)
    cdef object _on_publish  # on_publish(topic, payload, None)
    cdef object _on_packet   # on_packet(cmd, body) for every other packet
    cdef object _on_puback   # on_puback(mid), or None: PUBACK goes to on_packet
    cdef object _on_props    # on_props(topic, payload, props) for MQTT 5 properties
    cdef bint _v5            # MQTT 5: PUBLISH carries a property block
    cdef bytearray _acks     # PUBACKs owed for delivered QoS 1 messages

    cdef int _publish(self, unsigned char cmd, bytes buf, const unsigned char* p,
                      Py_ssize_t i, Py_ssize_t end) except -1
