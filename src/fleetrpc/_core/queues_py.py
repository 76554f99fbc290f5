"""Per-device call queues: the pure-Python twin of ``queues.pyx``.

Behaviour, exceptions and messages are identical to the compiled variant (the
Hypothesis test in ``tests/test_queues_hypothesis.py`` feeds both the same
operations and compares every outcome).  The contract is ``docs/core.md``,
section DeviceQueues; the points it leaves open are decided here and in the
compiled module alike:

- Slots in use are derived from two counters, never tracked per call:
  ``inflight`` (sent, not ended) and ``unacked`` (sent, not acked, not
  ended).  SEQUENTIAL_ON_ACK uses ``unacked`` slots, BURST and
  SEQUENTIAL_ON_RESPONSE use ``inflight`` slots, so a strategy change by
  ``configure`` is consistent at once.
- Protocol misuse is a ``ValueError`` naming the device: ``on_ack`` with no
  unacknowledged call in flight, ``on_end`` with nothing in flight,
  ``on_end(acked=True)`` with no acknowledged call in flight and
  ``on_end(acked=False)`` with no unacknowledged one.  The state is unchanged.
- A device is *idle* (and keeps no state) when nothing is held, nothing is in
  flight, its presence is the default (``assume_online``) and its
  configuration equals the defaults.  ``configure`` with the default values
  therefore drops an override.
- ``configure`` never sends anything (it returns ``None``): slots it frees
  are used by the next ``on_ack``/``on_end``, or at once by
  ``set_online(device, True)``, which releases what free slots allow even
  when the device was already online.  A new item never overtakes held ones.
- Lowering ``cap`` below what is held keeps the held items; ``submit`` raises
  ``QueueFullError`` until the queue is below the new cap.
- ``drain`` returns the held items grouped by device (devices in the order
  their state was created, items FIFO); calls in flight stay counted.
- Bad arguments: a non-str device, a non-int item, cap or window is a
  ``TypeError``; an item outside ``[0, 2**63)``, a cap or window outside
  ``[0, 2**31)``, or a strategy that is not 0, 1 or 2 is a ``ValueError``.
  Items come back as plain ints (``True`` comes back as ``1``).
- ``assume_online=False`` makes unknown devices offline; then an *online*
  device keeps state (it is not the default) and an offline idle one none.
"""

from __future__ import annotations

from collections import deque

from ..errors import QueueFullError
from .constants import DeliveryStrategy

__all__ = ["DeviceQueues", "debug_counters"]

_BURST = 0
_ON_ACK = 1
_ON_RESPONSE = 2
_ITEM_END = 1 << 63
#: Largest cap and window (both fit a C int everywhere).
_LIMIT_MAX = (1 << 31) - 1


def _check_device(device: object) -> None:
    if not isinstance(device, str):
        raise TypeError(f"device must be a str, got {type(device).__name__}")


# The hot methods below inline the common case of these checks (a str
# device, a plain int item in range) and call the helpers only otherwise.


def _check_item(item: object) -> int:
    if not isinstance(item, int):
        raise TypeError(f"item must be an int, got {type(item).__name__}")
    if item < 0 or item >= _ITEM_END:
        raise ValueError(f"item must be in [0, 2**63), got {item!r}")
    # bool, IntEnum: hand back plain ints, as the C variant does.
    return item if type(item) is int else int(item)


def _check_strategy(strategy: object) -> int:
    if isinstance(strategy, int) and 0 <= strategy <= 2:
        return int(strategy)
    raise ValueError(f"unknown delivery strategy {strategy!r}")


def _check_limit(name: str, value: object) -> int:
    if not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0 or value > _LIMIT_MAX:
        raise ValueError(f"{name} must be in [0, 2**31), got {value!r}")
    return int(value)


def debug_counters() -> dict[str, int] | None:
    """Leak counters of a ``FLEETRPC_DEBUG`` build; the pure twin has none."""
    return None


class _Device:
    """State of one device that is not idle."""

    __slots__ = ("held", "inflight", "unacked", "strategy", "cap", "window", "online")

    def __init__(self, strategy: int, cap: int, window: int, online: bool) -> None:
        self.held: deque[int] | None = None  # created at the first hold
        self.inflight = 0
        self.unacked = 0
        self.strategy = strategy
        self.cap = cap
        self.window = window
        self.online = online

    def has_free_slot(self) -> bool:
        if self.strategy == _BURST:
            return self.window == 0 or self.inflight < self.window
        if self.strategy == _ON_ACK:
            return self.unacked < 1
        return self.inflight < 1


class DeviceQueues:
    """Per-device FIFO queues of call ids under a delivery strategy.

    See ``queues.pyi`` for the API documentation.
    """

    __slots__ = ("_devices", "_total_held", "_strategy", "_cap", "_window", "_assume_online")

    def __init__(
        self,
        strategy: int = DeliveryStrategy.BURST,
        cap: int = 100,
        window: int = 0,
        assume_online: bool = True,
    ) -> None:
        self._devices: dict[str, _Device] = {}
        self._total_held = 0
        self._strategy = _check_strategy(strategy)
        self._cap = _check_limit("cap", cap)
        self._window = _check_limit("window", window)
        self._assume_online = bool(assume_online)

    # -- defaults -----------------------------------------------------------

    @property
    def strategy(self) -> DeliveryStrategy:
        return DeliveryStrategy(self._strategy)

    @property
    def cap(self) -> int:
        return self._cap

    @property
    def window(self) -> int:
        return self._window

    @property
    def assume_online(self) -> bool:
        return self._assume_online

    # -- internals ----------------------------------------------------------

    def _new(self) -> _Device:
        return _Device(self._strategy, self._cap, self._window, self._assume_online)

    def _is_idle(self, d: _Device) -> bool:
        return (
            not d.held
            and d.inflight == 0
            and d.online == self._assume_online
            and d.strategy == self._strategy
            and d.cap == self._cap
            and d.window == self._window
        )

    def _release(self, d: _Device) -> int | None:
        held = d.held
        if d.online and held and d.has_free_slot():
            d.inflight += 1
            d.unacked += 1
            self._total_held -= 1
            return held.popleft()
        return None

    # -- API ----------------------------------------------------------------

    def configure(
        self,
        device: str,
        strategy: int | None = None,
        cap: int | None = None,
        window: int | None = None,
    ) -> None:
        _check_device(device)
        # Check everything before changing anything: all or nothing.
        new_strategy = None if strategy is None else _check_strategy(strategy)
        new_cap = None if cap is None else _check_limit("cap", cap)
        new_window = None if window is None else _check_limit("window", window)
        d = self._devices.get(device)
        if d is None:
            d = self._new()
        if new_strategy is not None:
            d.strategy = new_strategy
        if new_cap is not None:
            d.cap = new_cap
        if new_window is not None:
            d.window = new_window
        if self._is_idle(d):
            self._devices.pop(device, None)
        else:
            self._devices[device] = d

    def submit(self, device: str, item: int) -> bool:
        if not isinstance(device, str):
            _check_device(device)
        if type(item) is not int or item < 0 or item >= _ITEM_END:
            item = _check_item(item)
        d = self._devices.get(device)
        if d is None:
            d = _Device(self._strategy, self._cap, self._window, self._assume_online)
            if d.online:  # an idle online device always has a free slot
                d.inflight = d.unacked = 1
                self._devices[device] = d
                return True
        elif d.online and not d.held and d.has_free_slot():
            d.inflight += 1
            d.unacked += 1
            return True
        held = d.held
        if held is None:
            held = d.held = deque()
        if len(held) >= d.cap:
            raise QueueFullError(f"queue of device {device!r} is full ({d.cap} calls)")
        held.append(item)
        self._total_held += 1
        self._devices[device] = d  # new state for an idle device held offline
        return False

    def on_ack(self, device: str) -> int | None:
        if not isinstance(device, str):
            _check_device(device)
        d = self._devices.get(device)
        if d is None or d.unacked == 0:
            raise ValueError(f"device {device!r} has no unacknowledged call in flight")
        d.unacked -= 1
        return self._release(d) if d.held else None  # still in flight: never idle

    def on_end(self, device: str, acked: bool) -> int | None:
        if not isinstance(device, str):
            _check_device(device)
        d = self._devices.get(device)
        if d is None or d.inflight == 0:
            raise ValueError(f"device {device!r} has no call in flight")
        if acked:
            if d.inflight == d.unacked:
                raise ValueError(f"device {device!r} has no acknowledged call in flight")
        elif d.unacked == 0:
            raise ValueError(f"device {device!r} has no unacknowledged call in flight")
        else:
            d.unacked -= 1
        d.inflight -= 1
        if d.held:
            return self._release(d)  # None when offline (still busy then)
        if d.inflight == 0 and self._is_idle(d):
            del self._devices[device]
        return None

    def set_online(self, device: str, online: bool) -> list[int]:
        _check_device(device)
        online = bool(online)
        d = self._devices.get(device)
        if d is None:
            if online != self._assume_online:
                d = self._devices[device] = self._new()
                d.online = online
            return []
        d.online = online
        released: list[int] = []
        if online:
            while (item := self._release(d)) is not None:
                released.append(item)
        if self._is_idle(d):
            del self._devices[device]
        return released

    def is_online(self, device: str) -> bool:
        _check_device(device)
        d = self._devices.get(device)
        return self._assume_online if d is None else d.online

    def discard(self, device: str, item: int) -> bool:
        _check_device(device)
        item = _check_item(item)
        d = self._devices.get(device)
        if d is None or not d.held:
            return False
        try:
            d.held.remove(item)
        except ValueError:
            return False
        self._total_held -= 1
        if self._is_idle(d):
            del self._devices[device]
        return True

    def held(self, device: str) -> int:
        _check_device(device)
        d = self._devices.get(device)
        return len(d.held) if d is not None and d.held is not None else 0

    def inflight(self, device: str) -> int:
        _check_device(device)
        d = self._devices.get(device)
        return 0 if d is None else d.inflight

    @property
    def total_held(self) -> int:
        return self._total_held

    def drain(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        idle: list[str] = []
        for device, d in self._devices.items():
            if d.held:
                out.extend([(device, item) for item in d.held])
                d.held.clear()
            if self._is_idle(d):
                idle.append(device)
        for device in idle:
            del self._devices[device]
        self._total_held = 0
        return out

    def __len__(self) -> int:
        return len(self._devices)

    def __repr__(self) -> str:
        return f"<DeviceQueues devices={len(self._devices)} held={self._total_held}>"
