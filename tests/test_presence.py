"""Presence: one registry, memory bounded by configuration, never by what
devices send."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fleetrpc import Dispatcher, MemoryHub, Settings
from fleetrpc.presence import PresenceRegistry
from fleetrpc.transport.memory import MemoryTransport
from fleetrpc.wire import heartbeat_topic, presence_topic
from tests.helpers.waiting import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_online_changes_are_told_once():
    reg = PresenceRegistry()
    told = []
    reg.listen(lambda device, online: told.append((device, online)))
    assert reg.set_online("a", True) and not reg.set_online("a", True)
    assert reg.set_online("a", False)
    assert told == [("a", True), ("a", False)] and not reg.is_online("a")


def test_the_node_a_device_is_connected_through_follows_its_presence():
    reg = PresenceRegistry()
    assert reg.set_online("a", True, "node-b.1f")
    assert reg.get("a").via == "node-b.1f"
    # it moves to the broker while online: no change of state is told, the path changes
    assert not reg.set_online("a", True)
    assert reg.get("a").via is None
    assert not reg.set_online("a", True, "node-c.2e") and reg.get("a").via == "node-c.2e"
    assert reg.set_online("a", False, "node-c.2e") and reg.get("a").via is None  # offline: nowhere
    # many devices on one node share one string, whatever their presence messages decoded to
    for device in ("b", "c"):
        reg.set_online(device, True, "".join(["node-d.", "3a"]))
    assert reg.get("b").via is reg.get("c").via


async def test_the_dispatcher_reads_via_from_the_presence_it_receives():
    hub = MemoryHub()
    async with Dispatcher(Settings(node_id="n1"), transport=hub.transport("server")) as d:
        node = hub.transport("node-b")
        await node.start()
        node.publish(presence_topic("fleetrpc", "dev-v"), b'{"status":"online","via":"node-b.1f"}')
        await wait_until(lambda: d.is_online("dev-v"))
        assert d.device_info("dev-v").via == "node-b.1f"
        # a "via" no node level can be (over 128 characters) is refused, not kept per device
        node.publish(presence_topic("fleetrpc", "dev-w"), b'{"status":"online","via":"' + b"n" * 5000 + b'"}')
        node.publish(presence_topic("fleetrpc", "dev-x"), b'{"status":"online"}')
        await wait_until(lambda: d.is_online("dev-x"))
        assert not d.is_online("dev-w") and d.device_info("dev-w") is None


def test_device_state_is_not_gc_tracked():
    """One per device (100,000 on a node): no GC header (16 bytes each);
    nothing in it can lead back to it (a heartbeat is decoded JSON)."""
    import gc

    reg = PresenceRegistry()
    reg.set_online("a", True)
    reg.heartbeat("a", {"x": [1, {"y": 2}]}, 20)
    assert not gc.is_tracked(reg.get("a")) and reg.get("a").heartbeat == {"x": [1, {"y": 2}]}


def test_known_devices_only_when_a_registry_says_so():
    reg = PresenceRegistry(is_known=lambda device: device.startswith("reg-"))
    reg.set_online("reg-1", True)
    reg.set_online("stranger", True)
    reg.heartbeat("stranger", {"x": 1}, 7)
    assert reg.is_online("reg-1") and not reg.is_online("stranger")
    assert "stranger" not in reg and reg.stats.unknown == 2


def test_a_flood_of_unknown_ids_never_pushes_a_registered_device_out():
    registered = {"reg-1"}
    reg = PresenceRegistry(max_devices=2, max_unverified=4, is_known=registered.__contains__)
    told = []
    reg.listen(lambda device, online: told.append((device, online)))
    reg.set_online("reg-1", True)
    for n in range(10_000):
        reg.set_online(f"flood-{n}", True)
        reg.heartbeat(f"flood-{n}", {"pad": "x"}, 9)
    assert reg.is_online("reg-1") and len(reg) == 1 and reg.online == {"reg-1"}
    assert told == [("reg-1", True)] and reg.stats.evicted == 0 and reg.stats.unknown == 20_000
    assert len(reg._unverified) == 4  # held aside, bounded


def test_presence_of_a_device_the_registry_learns_of_later_is_applied():
    registered: set[str] = set()
    reg = PresenceRegistry(max_unverified=2, is_known=registered.__contains__)
    told = []
    reg.listen(lambda device, online: told.append((device, online)))
    reg.set_online("late", True)  # created on another node a moment ago
    reg.set_online("late-off", True)
    reg.set_online("late-off", False)
    assert not reg.is_online("late") and told == []
    registered.update({"late", "late-off"})
    assert reg.promote_known() == 2
    assert reg.is_online("late") and told == [("late", True), ("late-off", False)]
    assert not reg.promote("late") and not reg.promote("never-seen")  # nothing held any more


def test_only_the_last_unknown_ids_are_held():
    registered: set[str] = set()
    reg = PresenceRegistry(max_unverified=2, is_known=registered.__contains__)
    for name in "abc":
        reg.set_online(name, True)
    registered.update("abc")
    assert reg.promote_known() == 2 and not reg.is_online("a") and reg.online == {"b", "c"}
    reg.set_online("d", True)
    reg.forget("d")  # deleted before it was known: nothing held for it
    registered.add("d")
    assert not reg.promote("d")
    assert PresenceRegistry(max_unverified=0, is_known=registered.__contains__).set_online("x", True) is False


def test_the_dispatcher_keeps_the_registry_it_is_given_even_empty():
    # An empty registry has len() 0: `presence or default` replaced the
    # server's (and its is_known) with a default one.
    reg = PresenceRegistry(is_known=lambda device: False)
    assert len(reg) == 0
    assert Dispatcher(Settings(), transport=MemoryHub().transport("server"), presence=reg).presence is reg


def test_least_recently_heard_leave_first():
    reg = PresenceRegistry(max_devices=3)
    told = []
    reg.listen(lambda device, online: told.append((device, online)))
    for name in "abcd":
        reg.set_online(name, True)
    assert len(reg) == 3 and "a" not in reg and not reg.is_online("a")
    assert ("a", False) in told and reg.stats.evicted == 1


def test_offline_ids_expire_online_ones_stay():
    clock = Clock()
    reg = PresenceRegistry(ttl=60, clock=clock)
    reg.set_online("gone", True)
    reg.set_online("gone", False)
    reg.set_online("quiet", True)
    clock.now += 61
    reg.set_online("new", True)  # an insertion looks at the oldest entries
    assert "gone" not in reg and reg.is_online("quiet") and len(reg) == 2


def test_heartbeat_bodies_are_capped():
    reg = PresenceRegistry(max_heartbeat_bytes=10)
    reg.heartbeat("a", {"cpu": 1}, 9)
    assert reg.get("a").heartbeat == {"cpu": 1}
    reg.heartbeat("a", {"big": "x" * 100}, 111)
    state = reg.get("a")
    assert state.heartbeat is None and state.heartbeats == 2 and state.last_heartbeat
    assert reg.stats.heartbeats_too_large == 1
    assert reg.seen_within("a", 5) and not reg.seen_within("zzz", 5)


def test_a_heartbeat_too_large_keeps_its_top_level_fields_that_fit():
    # An Elves agent with 20 self crons sent 4.1 KB: its whole body was
    # dropped, "elves" and "ts" with it, and the agent no longer counted as
    # one (getOnlineStat), nor as online after online_interval_s.
    import msgspec

    reg = PresenceRegistry(max_heartbeat_bytes=60)
    body = {"ts": 1, "elves": "v", "crons": ["x" * 100], "os": "Linux", "hw": {"cpus": 4}}
    reg.heartbeat("a", body, len(msgspec.json.encode(body)))
    kept = reg.get("a").heartbeat
    assert kept == {"ts": 1, "elves": "v", "os": "Linux", "hw": {"cpus": 4}}
    assert len(msgspec.json.encode(kept)) <= 60
    assert reg.stats.heartbeats_too_large == 1
    # Not a dict, or nothing fits: nothing kept.
    reg.heartbeat("a", ["x" * 100], 105)
    assert reg.get("a").heartbeat is None


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["on", "off", "hb", "tick"]), st.integers(0, 40)), max_size=200))
def test_never_more_than_the_bound(ops):
    clock = Clock()
    reg = PresenceRegistry(max_devices=8, ttl=30, clock=clock)
    for op, n in ops:
        device = f"d{n}"
        if op == "on":
            reg.set_online(device, True)
        elif op == "off":
            reg.set_online(device, False)
        elif op == "hb":
            reg.heartbeat(device, {"n": n}, n)
        else:
            clock.now += n
        assert len(reg) <= 8
        assert reg.online <= set(reg._devices)


async def test_a_heartbeat_flood_of_new_ids_stays_within_the_bound():
    hub = MemoryHub()
    s = Settings(node_id="flood", presence_max_devices=50, max_heartbeat_bytes=64)
    async with Dispatcher(s, transport=hub.transport("server")) as d:
        attacker = hub.transport("attacker")
        await attacker.start()
        for i in range(500):
            attacker.publish(presence_topic("fleetrpc", f"fake-{i}"), b'{"status":"online"}')
            attacker.publish(heartbeat_topic("fleetrpc", f"fake-{i}"), b'{"pad":"' + b"x" * 200 + b'"}')
        await wait_until(lambda: d.stats.heartbeats == 500)
        assert len(d.presence) <= 50 and len(d.online_devices) <= 50
        assert d.presence.stats.heartbeats_too_large == 500
        assert d.device_info("fake-499").heartbeat is None
