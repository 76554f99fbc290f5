"""Timing wheel for call deadlines (compiled; stub).  Pure twin: wheel_py.py."""

from typing import final

def debug_counters() -> dict[str, int] | None:
    """Leak counters of a ``FLEETRPC_DEBUG`` build (``{"wheel_entries": n,
    "wheel_pages": n}``: entries and pool memory blocks
    over all wheels), ``None`` in a normal build."""

@final
class TimingWheel:
    """Hierarchical timing wheel (4 levels x 256 slots + overflow list):
    deadlines in float seconds -> int payloads.

    A deadline is due in tick ``floor(deadline / tick) + 1``: ``advance(now)``
    returns it never before ``deadline`` and at the latest at the first
    ``advance`` with ``now >= deadline + tick``.  A deadline at or before the
    wheel's time is due at the next ``advance``.  Entries are 32-byte C
    structs in one paged pool; schedule and cancel are O(1).
    """

    def __init__(self, tick: float = 0.005, now: float = 0.0) -> None:
        """``tick``: seconds per tick (positive, finite; ``ValueError``
        otherwise).  ``now``: the wheel's starting time (``loop.time()``)."""
    @property
    def tick(self) -> float:
        """Seconds per tick."""
    @property
    def now(self) -> float:
        """The wheel's time: the latest ``advance`` time (or the constructor's)."""
    def __len__(self) -> int:
        """Entries scheduled and neither fired nor cancelled."""
    def schedule(self, deadline: float, payload: int) -> int:
        """Schedule ``payload`` (an int in ``[0, 2**63)``) for ``deadline``.

        Returns a handle > 0 for ``cancel``.  ``ValueError`` for a payload out
        of range or a deadline that is not finite or lies more than ``2**62``
        ticks from 0; ``TypeError`` for a payload that is not an int or a
        deadline that is not a real number.
        """
    def cancel(self, handle: int) -> bool:
        """Cancel the entry of ``handle``; ``True`` if it was scheduled.

        A stale handle (its entry fired or was cancelled) or one never issued
        returns ``False`` and never touches another entry.
        """
    def advance(self, now: float) -> list[int]:
        """Move the wheel's time to ``now`` and return the payloads now due,
        ascending by tick.  A time earlier than ``.now`` returns ``[]``."""
    def clear(self) -> None:
        """Cancel every entry; all their handles become stale."""
