"""What a device may do at the broker: the one rule both brokers enforce.

With the topic layout of :mod:`fleetrpc.wire` (``{p}`` the prefix,
``{d}`` the device's id):

- publish: its replies ``{p}/d/{d}/res/#``, acks ``{p}/d/{d}/ack/#``, its own
  calls ``{p}/d/{d}/call/+``, presence ``{p}/d/{d}/presence`` and
  heartbeats ``{p}/d/{d}/hb``.  Never a request (``req``) nor a return
  (``ret``): those come from the server's account only, so a device cannot
  impersonate the server towards itself or anyone else.
- subscribe: the requests for it ``{p}/d/{d}/req/#`` and the answers to its
  calls ``{p}/d/{d}/ret/#``, or any narrower filter.

ThingsBoard firmware behind EMQX's per-device mountpoint (docs/emqx.md)
speaks ``v1/devices/me/...`` instead; the mountpoint already puts those
topics under the device's own ``tb/{d}/`` tree, so the rule there is
"anything under ``v1/devices/me/`` or ``v2/``" (:meth:`DeviceAcl.thingsboard`).
"""

from __future__ import annotations

import msgspec

from ..wire import device_permissions, validate_id, validate_prefix
from ..wire.topics import levels_match

__all__ = ["DeviceAcl", "topic_matches", "filter_within"]


def topic_matches(pattern: str, topic: str) -> bool:
    """Whether the concrete ``topic`` matches the MQTT filter ``pattern``
    (``+`` one level, ``#`` the rest, including the parent level).  A topic
    starting with ``$`` never matches a wildcard in the first level."""
    if topic.startswith("$") and pattern[:1] in ("+", "#"):
        return False
    return levels_match(pattern.split("/"), topic.split("/"))


def filter_within(pattern: str, sub_filter: str) -> bool:
    """Whether every topic the subscription filter ``sub_filter`` can match
    is matched by ``pattern`` too (so subscribing to it reveals nothing
    more).  A malformed filter (``#`` not last, a wildcard inside a level)
    is never within."""
    s_levels = sub_filter.split("/")
    for i, level in enumerate(s_levels):
        if ("#" in level and (level != "#" or i != len(s_levels) - 1)) or ("+" in level and level != "+"):
            return False
    p_levels = pattern.split("/")
    for i, p in enumerate(p_levels):
        if p == "#":
            return True
        if i >= len(s_levels):
            return False
        s = s_levels[i]
        if s == "#":
            return False  # the filter reaches further than this pattern level
        if p == "+":
            continue
        if s != p:  # a "+" where the pattern is literal is broader
            return False
    return len(p_levels) == len(s_levels)


class DeviceAcl(msgspec.Struct, frozen=True):
    """One device's permissions as MQTT filters."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    @classmethod
    def fleetrpc(cls, prefix: str, device_id: str) -> DeviceAcl:
        """The permissions of ``device_id`` in fleetrpc's own topic layout."""
        publish, subscribe = device_permissions(prefix, device_id)
        return cls(publish=publish, subscribe=subscribe)

    @classmethod
    def thingsboard(cls) -> DeviceAcl:
        """ThingsBoard's device API behind EMQX's per-device mountpoint."""
        return cls(publish=("v1/devices/me/#", "v2/#"), subscribe=("v1/devices/me/#", "v2/#"))

    def may_publish(self, topic: str) -> bool:
        if not topic or "+" in topic or "#" in topic or "\x00" in topic:
            return False
        return any(topic_matches(p, topic) for p in self.publish)

    def may_subscribe(self, sub_filter: str) -> bool:
        if not sub_filter or sub_filter.startswith("$") or "\x00" in sub_filter:
            return False  # no $share / $SYS / $CONTROL for devices
        return any(filter_within(p, sub_filter) for p in self.subscribe)
