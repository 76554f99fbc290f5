"""Pending-call table (compiled; stub).  Pure twin: pending_py.py."""

from typing import final

from .wheel import TimingWheel

def debug_counters() -> dict[str, int] | None:
    """Leak counters of a ``FLEETRPC_DEBUG`` build (``{"pending_entries": n}``
    over all tables), ``None`` in a normal build."""

@final
class PendingTable:
    """Request id -> (device, completion, deadline handle, flags).

    Entries are 40-byte C slots holding owned references to the device and
    the completion, found through an open-addressing index; each deadline is
    an entry of ``wheel`` whose payload is the request id.  The table owns
    the wheel's clock: advance it only through ``expire``.
    """

    def __init__(self, wheel: TimingWheel) -> None:
        """``wheel``: a ``TimingWheel`` of the same variant (``TypeError``
        otherwise), used by this table alone."""
    def __len__(self) -> int:
        """Pending calls."""
    def __contains__(self, rid: object) -> bool:
        """``True`` when ``rid`` is pending (``False`` for any non-int)."""
    def add(self, device: str, completion: object, deadline: float, flags: int = 0) -> int:
        """Store a pending call and schedule its deadline; return its request id.

        Request ids count up from 1 (positive, below 2**53, never reused).
        ``flags`` is an int in ``[0, 2**32)``.  ``TypeError``/``ValueError``
        for bad arguments, including the wheel's for the deadline.
        """
    def resolve(self, rid: int, device: str | None = None) -> object:
        """Pop the call ``rid``, cancel its deadline and return its completion.

        ``UnknownRequestError`` when ``rid`` is not pending.  With ``device``
        given and different from the call's: ``WrongDeviceError``, and the
        call stays pending.
        """
    def peek(self, rid: int) -> tuple[str, object, int] | None:
        """``(device, completion, flags)`` of a pending call, or ``None``."""
    def set_flags(self, rid: int, flags: int) -> None:
        """Replace the call's flags; ``UnknownRequestError`` if not pending."""
    def rearm(self, rid: int, deadline: float) -> None:
        """Give the call a new deadline (a retry); ``UnknownRequestError`` if
        not pending.  On a bad deadline the old one stays."""
    def expire(self, now: float) -> list[tuple[int, str, object, int]]:
        """Advance the wheel to ``now``; pop every call now due and return
        ``(rid, device, completion, flags)`` for each, ascending by deadline tick."""
    def drain(self) -> list[tuple[int, str, object, int]]:
        """Pop every pending call (deadlines cancelled), ascending request id."""
