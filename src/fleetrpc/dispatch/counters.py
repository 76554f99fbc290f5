"""Counters of the dispatcher (cheap attribute increments)."""

from __future__ import annotations

__all__ = ["Counters", "Stats"]


class Counters:
    """Named integer counters; subclasses list their names in ``__slots__``."""

    __slots__ = ()

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.as_dict()})"


class Stats(Counters):
    """Counters of one dispatcher.

    calls, sent, replies, acks, timeouts: calls made and what became of them.
    offline_rejected: lightweight calls refused because the device was offline.
    offline_expired: calls that waited for an offline device that never came.
    queue_full: calls refused by a full device queue.
    oversize: calls refused because their request was over ``max_payload``.
    malformed: inbound messages the codec rejected.
    unknown_request, wrong_device, not_sent: replies and acks rejected
    because their request was never made by this node, was sent to another
    device, or was not sent yet.
    late_replies: replies and acks to calls of this node that had ended:
    timed out, cancelled, answered already, or one-way (ThingsBoard's
    firmware answers those too).  Dropped and counted, not logged: they are
    the normal life of a fleet, not a broken or hostile device.
    not_json: replies that were not JSON.
    client_calls, client_errors, bad_calls: client-side calls, those answered
    with an error, those answered BAD_REQUEST because they could not be read.
    foreign_response_topic: client-side calls whose Response Topic was not
    the caller's own (ignored).
    client_busy: client-side calls refused because their device (queue_cap)
    or the node (client_call_window) had too many handlers running.
    presence, heartbeats: presence and heartbeat messages.
    elves, elves_unrouted: Elves envelopes handed to the service router, and
    those that arrived with none registered.
    unexpected: messages of a kind a server never receives (REQUEST, RETURN).
    window_full: calls never sent because this node's in-flight window stayed
    full until their deadline.
    broker_unavailable: calls refused or failed because the broker
    connection was down.
    presence_synced, presence_sync_timeouts: starts that waited for the
    broker's retained presence until this node's marker returned, and those
    that gave up waiting (``Dispatcher._sync_presence``).
    """

    __slots__ = (
        "calls", "sent", "replies", "acks", "timeouts", "offline_rejected", "offline_expired",
        "queue_full", "oversize", "malformed", "unknown_request", "late_replies", "wrong_device", "not_sent",
        "not_json", "client_calls", "client_errors", "bad_calls", "foreign_response_topic", "client_busy",
        "presence", "heartbeats", "elves", "elves_unrouted", "unexpected",
        "window_full", "broker_unavailable", "presence_synced", "presence_sync_timeouts",
    )
