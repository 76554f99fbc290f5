"""Numbers and names of the wire contract (pure Python: the compiled core
imports them, so both of its variants agree on every value)."""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "Kind", "DEFAULT_PREFIX", "DEFAULT_MAX_PAYLOAD", "MAX_ID_LENGTH",
    "ELVES_CALL", "ELVES_BACK",
]


class Kind(IntEnum):
    """What an MQTT message is, decided from its topic."""

    #: device -> server: the reply to a server-side call.
    REPLY = 1
    #: device -> server: delivery acknowledgement of a server-side call.
    ACK = 2
    #: device -> server: a client-side RPC request.
    CALL = 3
    #: device -> server: retained online/offline status (also the Last Will).
    PRESENCE = 4
    #: device -> server: periodic heartbeat with agent statistics.
    HEARTBEAT = 5
    #: an Elves service envelope ({"mqt", "mqs", "mqf", ...}).
    ELVES = 6
    #: server -> device: a server-side call (decoded by the device SDK).
    REQUEST = 7
    #: server -> device: the reply to a client-side call.
    RETURN = 8


#: Default topic prefix; every topic of the protocol starts with it.
DEFAULT_PREFIX = "fleetrpc"
#: Largest payload accepted, either way (bytes); ``Settings.max_payload``.
DEFAULT_MAX_PAYLOAD = 256 * 1024
#: Longest device id / node id / method name accepted (UTF-8 bytes).
MAX_ID_LENGTH = 128

#: The ``mqt`` of an Elves envelope: a call, or the answer to one.
ELVES_CALL = "call"
ELVES_BACK = "back"
