# Envelope codec (compiled).  Contract: docs/core.md, "Codec and the wire
# layout"; topic layout: fleetrpc/wire/topics.py; pure twin: codec_py.py.

cimport cython


# Kinds as C ints (same values as fleetrpc._core.constants.Kind).
cdef enum:
    K_NONE = 0
    K_REPLY = 1
    K_ACK = 2
    K_CALL = 3
    K_PRESENCE = 4
    K_HEARTBEAT = 5
    K_ELVES = 6
    K_REQUEST = 7
    K_RETURN = 8


@cython.final
cdef class Message:
    # One decoded inbound message; made by Codec.decode, read-only from Python.
    # Not tracked by the garbage collector (no_gc, in codec.pyx): it holds
    # only what was decoded from the wire, which cannot refer back to it.
    cdef readonly object kind       # the Kind member
    cdef readonly object device     # str: device id; the {app} level for ELVES
    cdef readonly object node       # node id of REQUEST/REPLY/ACK, levels after {app} of ELVES, else None
    cdef readonly object rid        # int: request id / call id from the topic; 0 when it has none
    cdef readonly object body       # decoded payload: Struct, dict or any JSON value; None for ACK
    cdef readonly object error      # str saying why a REPLY's body is None (not JSON); else None


@cython.final
cdef class Codec:
    # Classifies and decodes inbound (topic, payload); encodes outbound payloads.
    cdef readonly object prefix         # str: first level(s) of every topic
    cdef readonly Py_ssize_t max_payload  # largest payload accepted, bytes
    cdef bytes _pfx                     # UTF-8 of prefix + "/"
    cdef dict _shapes                   # kind (or None) -> expected topic shape, for level errors
    cdef str _node                      # last node id decoded, reused: replies carry our own id
    cdef bytes _node_utf8               # UTF-8 of _node
    cdef object _dec_any                # protocol.ANY_DECODER.decode      (REPLY, RETURN)
    cdef object _dec_request            # protocol.REQUEST_DECODER.decode  (REQUEST, CALL)
    cdef object _dec_presence           # protocol.PRESENCE_DECODER.decode (PRESENCE)
    cdef object _dec_object             # protocol.OBJECT_DECODER.decode   (HEARTBEAT, ELVES)
    cdef object _enc                    # protocol.JSON_ENCODER.encode
    cdef object _RpcRequest             # protocol.RpcRequest

    cpdef Message decode(self, object topic, object payload)
    cpdef bytes encode_request(self, object method, object params)
    cpdef bytes encode(self, object obj)

    cdef object _few(self, object topic, object kind)
    cdef object _many(self, object topic, object kind)
    cdef str _node_str(self, const char* p, Py_ssize_t size)
    cdef int _check_id(self, Py_ssize_t size, bint forbidden, str what, object topic) except -1
    cdef long long _parse_id(self, const char* p, Py_ssize_t size, str what, object topic) except -1
    cdef object _decode_body(self, int kind, object payload)
