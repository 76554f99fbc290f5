"""Per-device call queues (compiled; stub).  Pure twin: queues_py.py."""

from .constants import DeliveryStrategy

def debug_counters() -> dict[str, int] | None:
    """Leak counters of a ``FLEETRPC_DEBUG`` build (``{"queue_states": n,
    "queue_rings": n}``: device states and ring buffers alive over all
    queues), ``None`` in a normal build."""

class DeviceQueues:
    """Per-device FIFO queues of call ids (ints) under ThingsBoard's delivery
    strategies, with a cap, an in-flight window and presence.

    Each sent item holds one of its device's *slots*: ``window`` of them
    under BURST (0 = unlimited), one under SEQUENTIAL_ON_ACK and
    SEQUENTIAL_ON_RESPONSE.  SEQUENTIAL_ON_ACK frees the slot at the ack (or
    at the end of a call that was never acked); the other two at the end.  A
    freed slot releases the next held item if the device is online.

    The caller reports each sent item's life: ``on_ack`` at most once, then
    exactly one ``on_end``.  Reporting a call that is not in flight is a
    ``ValueError`` naming the device, and changes nothing.

    Only devices that are not idle have state.  A device is idle when nothing
    is held, nothing is in flight, its presence is the default
    (``assume_online``) and its configuration equals the defaults; its state
    is dropped the moment it becomes idle again.  The compiled variant keeps
    held items as C ``int64`` in a small per-device ring buffer (8 bytes an
    item, no Python object).
    """

    def __init__(
        self,
        strategy: DeliveryStrategy | int = DeliveryStrategy.BURST,
        cap: int = 100,
        window: int = 0,
        assume_online: bool = True,
    ) -> None:
        """Defaults for every device.

        ``strategy``: a ``DeliveryStrategy`` (or its int value); anything else
        is ``ValueError("unknown delivery strategy 5")``.  ``cap``: most items
        held per device.  ``window``: BURST slots per device, 0 = unlimited.
        ``cap`` and ``window`` are ints in ``[0, 2**31)`` (``ValueError``
        otherwise, ``TypeError`` for a non-int).  ``assume_online``: presence
        of a device never reported by ``set_online``.
        """
    @property
    def strategy(self) -> DeliveryStrategy:
        """The default delivery strategy."""
    @property
    def cap(self) -> int:
        """The default cap (most items held per device)."""
    @property
    def window(self) -> int:
        """The default BURST window (0 = unlimited)."""
    @property
    def assume_online(self) -> bool:
        """Presence of a device that has no state."""
    @property
    def total_held(self) -> int:
        """Items held over all devices."""
    def __len__(self) -> int:
        """Devices with state: offline (unlike the default), configured
        differently from the defaults, or busy (holding or in flight)."""
    def configure(
        self,
        device: str,
        strategy: DeliveryStrategy | int | None = None,
        cap: int | None = None,
        window: int | None = None,
    ) -> None:
        """Override ``device``'s strategy, cap or window (``None``: keep it).

        Values equal to the defaults remove the override.  All arguments are
        checked before anything changes (same errors as the constructor).
        Takes effect at once for slot accounting, but sends nothing: slots it
        frees are used by the next ``on_ack``/``on_end``, or at once by
        ``set_online(device, True)``.  A lowered cap keeps what is already
        held; ``submit`` raises ``QueueFullError`` until below it.
        """
    def submit(self, device: str, item: int) -> bool:
        """Queue ``item`` (an int in ``[0, 2**63)``) for ``device``.

        ``True``: the device is online and had a free slot, now taken: send
        the item now.  ``False``: held, FIFO (a new item never overtakes held
        ones).  When ``cap`` items are held already:
        ``QueueFullError("queue of device 'a' is full (100 calls)")``.
        ``ValueError`` for an item out of range, ``TypeError`` for a non-int
        item or a non-str device.
        """
    def on_ack(self, device: str) -> int | None:
        """The device acknowledged receipt of one of its calls in flight.

        Returns the next item to send (its slot already taken) when the ack
        freed a slot (SEQUENTIAL_ON_ACK) and the device is online, else
        ``None``.  ``ValueError("device 'a' has no unacknowledged call in
        flight")`` when every call in flight was acked already (or none is).
        """
    def on_end(self, device: str, acked: bool) -> int | None:
        """One of the device's calls in flight ended (reply, timeout,
        failure); ``acked``: whether ``on_ack`` was reported for it.

        Returns the next item to send (its slot already taken) when a slot
        was freed and the device is online, else ``None``.  ``ValueError``
        (state unchanged) when nothing is in flight ("device 'a' has no call
        in flight"), or no call in flight matches ``acked`` ("... has no
        acknowledged call in flight" / "... has no unacknowledged call in
        flight").
        """
    def set_online(self, device: str, online: bool) -> list[int]:
        """Record presence.  Going online releases as many held items as
        free slots allow, FIFO (their slots taken); also on a device already
        online, after ``configure`` widened its window.  Going offline holds
        every new item; calls in flight stay in flight."""
    def is_online(self, device: str) -> bool:
        """Presence of ``device`` (``assume_online`` when never reported)."""
    def discard(self, device: str, item: int) -> bool:
        """Drop the first held occurrence of ``item``; ``True`` if there was
        one.  Items in flight are not affected."""
    def held(self, device: str) -> int:
        """Items held for ``device``."""
    def inflight(self, device: str) -> int:
        """Calls of ``device`` sent and not ended (acked or not)."""
    def drain(self) -> list[tuple[str, int]]:
        """Remove and return every held item as ``(device, item)``: grouped by
        device (in the order their state was created), FIFO within a device.
        Calls in flight stay counted."""
