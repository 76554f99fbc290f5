"""Pending-call table (compiled; stub).  Pure twin: pending_py.py."""

from typing import final

from .wheel import TimingWheel

def debug_counters() -> dict[str, int] | None:
    """Leak counters of a ``FLEETRPC_DEBUG`` build (``{"pending_entries": n,
    "pending_pages": n}``: entries and slab memory blocks over all tables), ``None`` in a normal build."""

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
    @property
    def next_rid(self) -> int:
        """The request id the next ``add`` returns: every id below it was
        handed out by this table (ids only grow)."""
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

@final
class CallSite:
    """What the futures of one dispatcher's calls share: ``loop`` and
    ``cancel(rid)``, called when a future is cancelled (it drops the call)."""

    loop: object
    def __init__(self, loop: object, cancel: object) -> None: ...
    def future(self) -> CallFuture:
        """A new pending future; ``PendingTable.add`` with it as the
        completion gives it its request id."""

@final
class CallFuture:
    """The completion of one ``Dispatcher.call()`` and the object its caller
    awaits: asyncio's Future protocol (what ``Task``, ``ensure_future``,
    ``gather``, ``wait_for``, ``shield`` use) plus ``send``/``throw``/
    ``close``, so that ``create_task`` takes it as a coroutine.  48 bytes
    (+16 GC header) compiled.  Cancelling it, or throwing into it while
    pending, calls its site's ``cancel(rid)``."""

    _asyncio_future_blocking: bool
    @property
    def rid(self) -> int: ...
    def get_loop(self) -> object: ...
    def done(self) -> bool: ...
    def cancelled(self) -> bool: ...
    def result(self) -> object: ...
    def exception(self) -> BaseException | None: ...
    def add_done_callback(self, fn: object, *, context: object = None) -> None: ...
    def remove_done_callback(self, fn: object) -> int: ...
    def cancel(self, msg: object = None) -> bool: ...
    def set_result(self, result: object) -> None: ...
    def set_exception(self, exception: BaseException | type[BaseException]) -> None: ...
    def _finish(self, result: object, error: BaseException | None) -> None:
        """The dispatcher's completion: a no-op once done."""
    def __await__(self) -> CallFuture: ...
    def __iter__(self) -> CallFuture: ...
    def __next__(self) -> object: ...
    def send(self, value: object) -> object: ...
    def throw(self, typ: object, val: object = None, tb: object = None) -> object: ...
    def close(self) -> None: ...
