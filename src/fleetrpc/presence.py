"""Presence: the one owner of who is online and what heartbeats said.

Online state comes from each device's retained presence message and its
Last Will (``wire``: PRESENCE), or from an embedding program that knows
better (:meth:`PresenceRegistry.set_online`); heartbeats (HEARTBEAT) add
statistics and the time a device was last heard of.  The dispatcher and its
queues read :attr:`PresenceRegistry.online` (a set, for a membership test
on the hot path); the Elves heartbeat service reads the same registry.

Memory is bounded by configuration, never by what devices send:

- with a device registry (the server), :attr:`is_known` says which ids
  exist, and state is kept for those only (others are counted in
  ``unknown``), so ids made up by a flood never push a registered device
  out.  The last presence of at most ``max_unverified`` unknown ids is held
  aside, without listeners and out of :attr:`online`, for a device the
  registry learns of a moment after it connected (created on another node):
  :meth:`promote` applies it once the registry knows the id;
- at most ``max_devices`` ids are kept, the least recently heard of
  leaving first (set it above the fleet's size), and an offline id not
  heard of for ``ttl`` seconds leaves too: without a registry (library
  mode) ids nobody will call again expire;
- of a heartbeat body larger than ``max_heartbeat_bytes`` (counted in
  ``heartbeats_too_large``), only the top-level fields that fit in it
  together are kept, in order, the larger ones left out: an Elves agent
  with many self crons still says what it is, when it beat, and its
  hardware (its ``crons`` are left out).  Its time is always kept.

A device that leaves the registry while online is reported offline to the
listeners: its calls wait (or fail) as for any device not known to be
online, until its next presence message.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from typing import Any, Callable

import msgspec

__all__ = ["DeviceState", "PresenceRegistry", "PresenceStats"]


class DeviceState(msgspec.Struct, gc=False):
    """What presence and heartbeats told about a device."""

    #: Online according to its last presence message (or ``set_online``).
    online: bool
    #: When ``online`` last changed, epoch seconds.
    since: float
    #: When anything was last heard from it (presence or heartbeat), epoch seconds.
    last_seen: float = 0.0
    #: Its last heartbeat body (``None`` if none; of one too large, only
    #: the top-level fields that fit, or ``None``).
    heartbeat: dict | None = None
    #: When its last heartbeat arrived, epoch seconds (0: never).
    last_heartbeat: float = 0.0
    #: Heartbeats received since it entered the registry.
    heartbeats: int = 0
    #: While online: the server node whose device endpoint it is connected
    #: to (its wire level, ``{node_id}.{boot}``, from the presence's
    #: ``via``); None when it is connected to the broker itself.
    via: str | None = None


_encode = msgspec.json.Encoder().encode


def _fitting(body: Any, limit: int) -> dict | None:
    """The top-level fields of ``body`` that fit in ``limit`` bytes of JSON
    together, in order (None: not an object, or none fits).  Linear in the
    body's size: each value is encoded once."""
    if not isinstance(body, dict):
        return None
    kept: dict = {}
    used = 2  # {}
    for key, value in body.items():
        try:
            n = len(_encode(key)) + len(_encode(value)) + 2  # : and ,
        except (TypeError, msgspec.EncodeError):
            continue
        if used + n <= limit + 1:  # the last field has no comma
            kept[key] = value
            used += n
    return kept or None


class PresenceStats:
    __slots__ = ("changes", "heartbeats", "heartbeats_too_large", "unknown", "evicted")

    def __init__(self) -> None:
        self.changes = self.heartbeats = self.heartbeats_too_large = self.unknown = self.evicted = 0

    def as_dict(self) -> dict[str, int]:
        return {n: getattr(self, n) for n in self.__slots__}


Listener = Callable[[str, bool], Any]


class PresenceRegistry:
    """Online state and heartbeats of the devices one node knows of."""

    def __init__(
        self,
        *,
        max_devices: int = 100_000,
        ttl: float = 3600.0,
        max_heartbeat_bytes: int = 4096,
        is_known: Callable[[str], bool] | None = None,
        max_unverified: int = 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_devices < 1 or ttl <= 0 or max_heartbeat_bytes < 0 or max_unverified < 0:
            raise ValueError("max_devices >= 1, ttl > 0, max_heartbeat_bytes >= 0 and max_unverified >= 0 "
                             "are required")
        self.max_devices = max_devices
        self.ttl = ttl
        self.max_heartbeat_bytes = max_heartbeat_bytes
        #: Set by the server once it has a device registry: state is kept
        #: only for ids for which it returns True.
        self.is_known = is_known
        self.max_unverified = max_unverified
        self._clock = clock
        # Unknown id -> its last presence (online?), least recent first.
        self._unverified: OrderedDict[str, bool] = OrderedDict()
        self._devices: OrderedDict[str, DeviceState] = OrderedDict()  # least recently heard first
        #: The ids online now; read directly on the hot path, never replace it.
        self.online: set[str] = set()
        self._listeners: list[Listener] = []
        self.stats = PresenceStats()

    @classmethod
    def from_settings(cls, settings: Any, is_known: Callable[[str], bool] | None = None) -> "PresenceRegistry":
        """Bounded as the dispatcher's ``settings`` say."""
        return cls(max_devices=settings.presence_max_devices, ttl=settings.presence_ttl_s,
                   max_heartbeat_bytes=settings.max_heartbeat_bytes, is_known=is_known)

    # -- reading ------------------------------------------------------------

    def is_online(self, device: str) -> bool:
        return device in self.online

    def get(self, device: str) -> DeviceState | None:
        return self._devices.get(device)

    def __len__(self) -> int:
        return len(self._devices)

    def __contains__(self, device: object) -> bool:
        return device in self._devices

    def seen_within(self, device: str, seconds: float) -> bool:
        """Heard from (presence or heartbeat) within the last ``seconds``."""
        state = self._devices.get(device)
        return state is not None and self._clock() - state.last_seen <= seconds

    def listen(self, listener: Listener) -> Listener:
        """Call ``listener(device, online)`` on every change (in order of
        registration; a listener must not raise)."""
        self._listeners.append(listener)
        return listener

    # -- writing ------------------------------------------------------------

    def set_online(self, device: str, online: bool, via: str | None = None) -> bool:
        """Record a device's presence (``via``: see :attr:`DeviceState.via`);
        returns True when its online state changed."""
        state = self._touch(device)
        if state is None:
            if self.max_unverified:
                held = self._unverified
                held[device] = online
                held.move_to_end(device)
                if len(held) > self.max_unverified:
                    held.popitem(last=False)
            return False
        # (a device may move while online; one string per node, not per device)
        state.via = sys.intern(via) if online and via is not None else None
        if state.since and state.online == online:
            return False  # had a presence before, and nothing changed
        now = state.last_seen
        state.online = online
        state.since = now
        if online:
            self.online.add(device)
        else:
            self.online.discard(device)
        self.stats.changes += 1
        for listener in self._listeners:
            listener(device, online)
        return True

    def heartbeat(self, device: str, body: dict | None, size: int) -> None:
        """Record a heartbeat of ``size`` bytes (``body`` is its decoded JSON)."""
        state = self._touch(device)
        if state is None:
            return
        self.stats.heartbeats += 1
        state.heartbeats += 1
        state.last_heartbeat = state.last_seen
        if size > self.max_heartbeat_bytes:
            self.stats.heartbeats_too_large += 1
            state.heartbeat = _fitting(body, self.max_heartbeat_bytes)
        else:
            state.heartbeat = body

    def promote(self, device: str) -> bool:
        """The registry has just learnt of ``device``: apply the presence
        held for it while it was unknown (True if one was)."""
        online = self._unverified.pop(device, None)
        if online is None:
            return False
        self.set_online(device, online)
        return True

    def promote_known(self) -> int:
        """:meth:`promote` every held id the registry now knows; how many."""
        known = self.is_known
        found = [d for d in self._unverified if known is None or known(d)]
        for device in found:
            self.promote(device)
        return len(found)

    def forget(self, device: str) -> None:
        """Drop what is known of a device (e.g. deleted from the registry)."""
        self._unverified.pop(device, None)
        state = self._devices.pop(device, None)
        if state is not None and device in self.online:
            self.online.discard(device)
            for listener in self._listeners:
                listener(device, False)

    def _touch(self, device: str) -> DeviceState | None:
        """The device's state, created if allowed, moved to most recent."""
        now = self._clock()
        devices = self._devices
        state = devices.get(device)
        if state is None:
            known = self.is_known
            if known is not None and not known(device):
                self.stats.unknown += 1
                return None
            state = devices[device] = DeviceState(False, 0.0, now)
            self._bound(now)
        else:
            devices.move_to_end(device)
            state.last_seen = now
        return state

    def _bound(self, now: float) -> None:
        devices = self._devices
        while len(devices) > self.max_devices:
            self._evict(next(iter(devices)))
        # Offline ids not heard of for ttl seconds leave; an online one that
        # is that quiet goes to the back instead (its Will would have said
        # if it were gone).  A few heads per insertion: O(1) each time.
        limit = now - self.ttl
        for _ in range(4):
            if not devices:
                break
            device, state = next(iter(devices.items()))
            if state.last_seen >= limit:
                break
            if state.online:
                devices.move_to_end(device)
            else:
                self._evict(device)

    def _evict(self, device: str) -> None:
        self.stats.evicted += 1
        self.forget(device)
