"""The persistent-RPC status state machine.

A persistent call moves through the states of ThingsBoard's persistent RPC
(QUEUED, SENT, DELIVERED, SUCCESSFUL, TIMEOUT, EXPIRED, FAILED) plus DELETED,
the state a call is in when a user removes it (ThingsBoard's ``RPC_DELETED``
event).  :func:`check_transition` is the one guard every status change goes
through: it raises :class:`~fleetrpc.errors.InvalidTransitionError` on a move
the lifecycle does not allow, the way asyncpg's ``_set_state`` guards its
connection states.

The lifecycle (two-way call)::

    QUEUED     -> SENT | EXPIRED | FAILED | DELETED
    SENT       -> DELIVERED | SUCCESSFUL | TIMEOUT | EXPIRED | FAILED | DELETED
    DELIVERED  -> SUCCESSFUL | TIMEOUT | EXPIRED | FAILED | DELETED
    TIMEOUT    -> SENT (retry) | QUEUED (retry, device offline)
                  | FAILED | EXPIRED | DELETED
    SUCCESSFUL, EXPIRED, FAILED -> DELETED
    DELETED    -> (nothing)

SENT -> SUCCESSFUL is a reply that arrived without an ack.  A one-way call
has no reply: it never becomes SUCCESSFUL and ends at DELIVERED, from where
only DELETED is reachable (:func:`is_terminal` takes ``oneway`` into
account; :data:`TERMINAL` is the set of states terminal for every call).
"""

from __future__ import annotations

import enum

from ..errors import InvalidTransitionError

__all__ = [
    "RpcStatus",
    "TERMINAL",
    "UNFINISHED",
    "RPC_DELETED",
    "TO_SERVER_RPC_REQUEST",
    "RPC_CALL_FROM_SERVER_TO_DEVICE",
    "check_transition",
    "is_allowed",
    "is_terminal",
    "event_type",
    "allowed_targets",
    "MOVES",
]


class RpcStatus(str, enum.Enum):
    """Status of a persistent RPC; the value is ThingsBoard's name."""

    QUEUED = "QUEUED"
    SENT = "SENT"
    DELIVERED = "DELIVERED"
    SUCCESSFUL = "SUCCESSFUL"
    TIMEOUT = "TIMEOUT"
    EXPIRED = "EXPIRED"
    FAILED = "FAILED"
    DELETED = "DELETED"

    def __str__(self) -> str:  # "SENT", not "RpcStatus.SENT", in messages
        return self.value


_Q, _S, _D, _OK, _T, _E, _F, _X = (
    RpcStatus.QUEUED,
    RpcStatus.SENT,
    RpcStatus.DELIVERED,
    RpcStatus.SUCCESSFUL,
    RpcStatus.TIMEOUT,
    RpcStatus.EXPIRED,
    RpcStatus.FAILED,
    RpcStatus.DELETED,
)

#: States that end every call, one-way or two-way.  (A one-way call also ends
#: at DELIVERED: see :func:`is_terminal`.)
TERMINAL: frozenset[RpcStatus] = frozenset({_OK, _E, _F, _X})

#: States of a call that may still change for a reason other than deletion,
#: for a two-way call.  The stores' "unfinished" queries use this set minus
#: one-way DELIVERED calls.
UNFINISHED: frozenset[RpcStatus] = frozenset(RpcStatus) - TERMINAL

# The allowed moves of a two-way call.  One-way calls: the same minus every
# move into SUCCESSFUL and every move out of DELIVERED but DELETED.
_TWO_WAY: dict[RpcStatus, frozenset[RpcStatus]] = {
    _Q: frozenset({_S, _E, _F, _X}),
    _S: frozenset({_D, _OK, _T, _E, _F, _X}),
    _D: frozenset({_OK, _T, _E, _F, _X}),
    _T: frozenset({_S, _Q, _F, _E, _X}),
    _OK: frozenset({_X}),
    _E: frozenset({_X}),
    _F: frozenset({_X}),
    _X: frozenset(),
}
_ONE_WAY: dict[RpcStatus, frozenset[RpcStatus]] = {
    old: (frozenset({_X}) if old is _D else targets - {_OK})
    for old, targets in _TWO_WAY.items()
}


# (old, new) pairs.  RpcStatus is a str enum, so plain names hash and compare
# equal to the members and the guard needs no conversion on its hot path.
_TWO_WAY_PAIRS = frozenset((o, n) for o, ts in _TWO_WAY.items() for n in ts)
_ONE_WAY_PAIRS = frozenset((o, n) for o, ts in _ONE_WAY.items() for n in ts)

#: Every legal ``(old, new)`` move of a two-way call, and of a one-way call:
#: ``(old, new) in MOVES[oneway]`` is :func:`is_allowed` without a call, for
#: the engine's hot path (which still raises through :func:`check_transition`).
MOVES: tuple[frozenset[tuple[RpcStatus, RpcStatus]], frozenset[tuple[RpcStatus, RpcStatus]]] = (
    _TWO_WAY_PAIRS, _ONE_WAY_PAIRS,
)


def allowed_targets(old: RpcStatus, *, oneway: bool) -> frozenset[RpcStatus]:
    """Every status a call in ``old`` may move to."""
    return (_ONE_WAY if oneway else _TWO_WAY)[RpcStatus(old)]


def is_allowed(old: RpcStatus | str, new: RpcStatus | str, *, oneway: bool) -> bool:
    """True if ``old -> new`` is a legal move (no exception, for hot paths)."""
    return (old, new) in (_ONE_WAY_PAIRS if oneway else _TWO_WAY_PAIRS)


def check_transition(
    old: RpcStatus | str,
    new: RpcStatus | str,
    *,
    oneway: bool,
    rpc_id: str | None = None,
) -> None:
    """Raise :class:`InvalidTransitionError` unless ``old -> new`` is legal.

    The message names the call when ``rpc_id`` is given:
    ``"RPC 3f...: illegal transition SENT -> QUEUED"``.  An unknown status
    name is an illegal transition too.
    """
    if is_allowed(old, new, oneway=oneway):
        return
    prefix = f"RPC {rpc_id}: " if rpc_id is not None else ""
    kind = " (one-way call)" if oneway and _is_oneway_only_refusal(old, new) else ""
    raise InvalidTransitionError(f"{prefix}illegal transition {_name(old)} -> {_name(new)}{kind}")


def is_terminal(status: RpcStatus | str, *, oneway: bool = False) -> bool:
    """True if a call in ``status`` can no longer change but to DELETED."""
    status = RpcStatus(status)
    return status in TERMINAL or (oneway and status is _D)


# -- events -------------------------------------------------------------------

#: Event type of a deleted persistent call (the record is gone from the store).
RPC_DELETED = "RPC_DELETED"
#: Event type of a client-side RPC (device -> platform).
TO_SERVER_RPC_REQUEST = "TO_SERVER_RPC_REQUEST"
#: Event type of a server-side RPC accepted through the REST API,
#: lightweight or persistent (ThingsBoard's rule-engine message type).
RPC_CALL_FROM_SERVER_TO_DEVICE = "RPC_CALL_FROM_SERVER_TO_DEVICE"

_EVENT_TYPES = {s: f"RPC_{s.value}" for s in RpcStatus}


def event_type(status: RpcStatus | str) -> str:
    """ThingsBoard's event type for a status change: ``RPC_SUCCESSFUL``, ..."""
    return _EVENT_TYPES[RpcStatus(status)]


def _name(status: RpcStatus | str) -> str:
    try:
        return RpcStatus(status).value
    except ValueError:
        return repr(status)


def _is_oneway_only_refusal(old: RpcStatus | str, new: RpcStatus | str) -> bool:
    return is_allowed(old, new, oneway=False)
