"""What finishes a call, and the events a lightweight call emits.

A completion is an ``asyncio.Future`` when a caller awaits the call, a
:class:`~fleetrpc.dispatch.broadcast.Broadcast` shared by every call of a
fan-out, or any callable ``completion(rid, device, result, error)``; a
:class:`CallObserver` is such a callable that also hears when its call was
published and acknowledged (the persistent-RPC lifecycle).
"""

from __future__ import annotations

from typing import Any, Callable

import msgspec

__all__ = ["StatusEvent", "CallObserver", "Completion"]

Completion = Callable[[int, str, Any, "BaseException | None"], Any]


class StatusEvent(msgspec.Struct, frozen=True, gc=False):
    """A lightweight call changed status: SENT, DELIVERED, SUCCESSFUL,
    TIMEOUT, FAILED; or TO_SERVER_RPC_REQUEST for a client-side call."""

    type: str
    rid: int
    device: str
    #: When, epoch seconds.
    ts: float
    detail: Any = None


class CallObserver:
    """A completion that also wants to know when its call is published and
    when the device acknowledged it (the persistent-RPC lifecycle).

    ``sent`` is called after the dispatcher's ``submit`` has returned (on a
    later turn of the loop, and always before any other notification of the
    same call), so an observer never runs inside a submit."""

    __slots__ = ()

    def sent(self, rid: int, device: str) -> None:
        """The request was handed to the broker connection."""

    def acked(self, rid: int, device: str) -> bool:
        """The device acknowledged delivery; return True if that ends the
        call (a persistent one-way call ends at DELIVERED)."""
        return False

    def __call__(self, rid: int, device: str, result: Any, error: BaseException | None) -> None:
        """The call ended: ``result`` or ``error`` (RpcTimeoutError, ...)."""
