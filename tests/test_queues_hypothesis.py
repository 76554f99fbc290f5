"""DeviceQueues: both variants and a trivially correct model agree.

A Hypothesis state machine feeds the same random operation sequences (submit,
on_ack, on_end, set_online, discard, configure, drain, bad input) for two
devices to the variants under test and to ``Model`` -- a dict of deques that
keeps every device forever and tracks each call in flight by name rather
than by counters -- and compares every outcome, exceptions (type and message)
included.  Invariants checked after every step: per-device FIFO order (the
model is FIFO and results must match it), caps hold, every item is accounted
for exactly once, slots in use never exceed the window except right after a
``configure`` shrank it, and ``len(queues)`` counts exactly the devices that
are not idle.

``test_variants_agree[c]`` runs the compiled variant, the pure one and the
model side by side; ``test_variants_agree[py]`` runs the pure one and the model.
"""

from __future__ import annotations

from collections import deque

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from fleetrpc import _core
from fleetrpc.errors import QueueFullError

DEVICES = ["a", "it's"]
BURST, ON_ACK, ON_RESPONSE = 0, 1, 2

devices = st.sampled_from(DEVICES)
# Hypothesis favours simple values (0, False): order the choices so that the
# favoured ones build queues up (online, a small window, a cap above the
# ring's first size of 4), and keep the degenerate ones rare.
strategies_ = st.sampled_from([BURST, ON_ACK, ON_RESPONSE])
caps = st.sampled_from([9, 6, 3, 1, 0])
windows = st.sampled_from([1, 2, 0, 3])
presence = st.sampled_from([True, True, True, False])
bad_items = st.one_of(
    st.integers(max_value=-1),
    st.integers(min_value=2**63),
    st.sampled_from([1.0, "1", None, b"1"]),
)
bad_devices = st.sampled_from([1, None, b"a", ("a",)])
BAD_DEVICE_CALLS = [
    ("submit", 1), ("on_ack",), ("on_end", True), ("set_online", False), ("is_online",),
    ("discard", 1), ("configure",), ("held",), ("inflight",),
]
OPERATIONS = (
    ["submit"] * 4 + ["on_end"] * 3 + ["on_ack"] * 2
    + ["set_online", "discard", "configure", "submit_any_item", "widen_busy", "drain"]
    + ["bad_input"]
)
BAD_CONFIG = [
    ("strategy", 3), ("strategy", -1), ("strategy", "BURST"), ("strategy", 1.0),
    ("cap", -1), ("cap", 2**31), ("window", -1), ("window", 2**40),
]


# -- the model ---------------------------------------------------------------------


class _ModelDevice:
    def __init__(self, strategy, cap, window, online):
        self.strategy, self.cap, self.window, self.online = strategy, cap, window, online
        self.held: deque[int] = deque()
        self.calls: list[str] = []  # one "unacked" or "acked" per call in flight
        self.overcommitted = False  # configure left more slots in use than allowed
        self.over_cap = False  # configure lowered the cap below what is held

    def slots(self):
        if self.strategy == BURST:
            return self.window or float("inf")
        return 1

    def used(self):
        if self.strategy == ON_ACK:
            return self.calls.count("unacked")
        return len(self.calls)


def _model_device_check(device):
    if not isinstance(device, str):
        raise TypeError(f"device must be a str, got {type(device).__name__}")


def _model_item_check(item):
    if not isinstance(item, int):
        raise TypeError(f"item must be an int, got {type(item).__name__}")
    if not 0 <= item < 2**63:
        raise ValueError(f"item must be in [0, 2**63), got {item!r}")


class Model:
    """DeviceQueues written the obvious way; keeps every device it has seen."""

    def __init__(self, strategy, cap, window, assume_online):
        self.defaults = (strategy, cap, window)
        self.assume_online = assume_online
        self.devs: dict[str, _ModelDevice] = {}

    def dev(self, device):
        if device not in self.devs:
            self.devs[device] = _ModelDevice(*self.defaults, self.assume_online)
        return self.devs[device]

    def idle(self, d):
        return (
            not d.held
            and not d.calls
            and d.online == self.assume_online
            and (d.strategy, d.cap, d.window) == self.defaults
        )

    def _send(self, d):
        d.calls.append("unacked")
        assert d.used() <= d.slots() or d.overcommitted, "a slot beyond the window"

    def _release_one(self, d):
        if d.online and d.held and d.used() < d.slots():
            item = d.held.popleft()
            self._shrunk(d)
            self._send(d)
            return item
        return None

    def _shrunk(self, d):
        if len(d.held) <= d.cap:
            d.over_cap = False

    def _settle(self, d):
        if d.used() <= d.slots():
            d.overcommitted = False

    # API, mirroring DeviceQueues

    def submit(self, device, item):
        _model_device_check(device)
        _model_item_check(item)
        d = self.dev(device)
        if d.online and not d.held and d.used() < d.slots():
            self._send(d)
            return True
        if len(d.held) >= d.cap:
            raise QueueFullError(f"queue of device {device!r} is full ({d.cap} calls)")
        d.held.append(item)
        return False

    def on_ack(self, device):
        _model_device_check(device)
        d = self.dev(device)
        if "unacked" not in d.calls:
            raise ValueError(f"device {device!r} has no unacknowledged call in flight")
        d.calls[d.calls.index("unacked")] = "acked"
        self._settle(d)
        return self._release_one(d)

    def on_end(self, device, acked):
        _model_device_check(device)
        d = self.dev(device)
        if not d.calls:
            raise ValueError(f"device {device!r} has no call in flight")
        state = "acked" if acked else "unacked"
        if state not in d.calls:
            kind = "acknowledged" if acked else "unacknowledged"
            raise ValueError(f"device {device!r} has no {kind} call in flight")
        d.calls.remove(state)
        self._settle(d)
        return self._release_one(d)

    def set_online(self, device, online):
        _model_device_check(device)
        d = self.dev(device)
        d.online = bool(online)
        out = []
        while (item := self._release_one(d)) is not None:
            out.append(item)
        return out

    def is_online(self, device):
        _model_device_check(device)
        return self.dev(device).online

    def discard(self, device, item):
        _model_device_check(device)
        _model_item_check(item)
        d = self.dev(device)
        if item in d.held:
            d.held.remove(item)
            self._shrunk(d)
            return True
        return False

    def configure(self, device, strategy=None, cap=None, window=None):
        _model_device_check(device)
        if strategy is not None and not (isinstance(strategy, int) and 0 <= strategy <= 2):
            raise ValueError(f"unknown delivery strategy {strategy!r}")
        for name, value in (("cap", cap), ("window", window)):
            if value is not None and not 0 <= value < 2**31:
                raise ValueError(f"{name} must be in [0, 2**31), got {value!r}")
        d = self.dev(device)
        if strategy is not None:
            d.strategy = int(strategy)
        if cap is not None:
            d.cap = cap
        if window is not None:
            d.window = window
        d.overcommitted = d.used() > d.slots()
        d.over_cap = len(d.held) > d.cap

    def held(self, device):
        _model_device_check(device)
        return len(self.dev(device).held)

    def inflight(self, device):
        _model_device_check(device)
        return len(self.dev(device).calls)

    @property
    def total_held(self):
        return sum(len(d.held) for d in self.devs.values())

    def drain(self):
        out = []
        for device, d in self.devs.items():
            out.extend((device, item) for item in d.held)
            d.held.clear()
            self._shrunk(d)
        return out

    def __len__(self):
        return sum(not self.idle(d) for d in self.devs.values())


# -- the machine -------------------------------------------------------------------


def _outcome(fn, *args, **kwargs):
    try:
        return ("ok", fn(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001  (compared: type and message)
        return ("error", type(exc), str(exc))


def _grouped(pairs):
    by_device: dict[str, list[int]] = {}
    for device, item in pairs:
        by_device.setdefault(device, []).append(item)
    return by_device


class QueuesMachine(RuleBasedStateMachine):
    """Subclassed per test with CLASSES set to the variants under test."""

    CLASSES: tuple[type, ...] = ()

    @initialize(strategy=strategies_, cap=caps, window=windows, assume_online=presence)
    def start(self, strategy, cap, window, assume_online):
        self.impls = [cls(strategy, cap, window, assume_online) for cls in self.CLASSES]
        self.model = Model(strategy, cap, window, assume_online)
        self.next_item = 0
        self.submitted: list[int] = []
        self.sent: list[int] = []  # returned True by submit or released
        self.gone: list[int] = []  # discarded or drained

    def run(self, op, *args, **kwargs):
        """Apply op to every variant and the model; all must agree."""
        results = [_outcome(getattr(q, op), *args, **kwargs) for q in self.impls]
        expected = _outcome(getattr(self.model, op), *args, **kwargs)
        for result in results:
            assert result == expected, (op, args, kwargs, result, expected)
            if result[0] == "ok" and isinstance(result[1], list):  # plain ints only
                assert all(type(x) is int for x in result[1])
        return expected

    def record(self, outcome):
        if outcome[0] != "ok":
            return
        value = outcome[1]
        if isinstance(value, int) and not isinstance(value, bool):
            self.sent.append(value)
        elif isinstance(value, list):
            self.sent.extend(value)

    # operations
    #
    # All operations share one rule, ``operate``, which draws which one to run
    # (weighted towards submit and on_end).  Separate rules would read better
    # in a falsifying example, but Hypothesis's swarm testing turns a random
    # subset of the rules off for each example, so that most examples would
    # never combine submit, on_end and presence deeply enough to wrap and
    # grow the ring buffer (measured: mutants of the ring code survived).

    @rule(data=st.data())
    def operate(self, data):
        getattr(self, "_" + data.draw(st.sampled_from(OPERATIONS), label="op"))(data)

    def _submit(self, data):
        self._submit_item(data.draw(devices, label="device"), self._fresh())

    def _submit_any_item(self, data):
        # Large or repeated ids: the queues do not care about uniqueness (the
        # bookkeeping counts items as a multiset).
        items = st.integers(0, 2**63 - 1)
        if self.submitted:
            items = st.one_of(items, st.sampled_from(self.submitted[-20:]))
        self._submit_item(data.draw(devices, label="device"), data.draw(items, label="item"))

    def _fresh(self):
        self.next_item += 1
        return self.next_item - 1

    def _submit_item(self, device, item):
        result = self.run("submit", device, item)
        if result[0] == "ok":
            self.submitted.append(item)
            if result[1]:
                self.sent.append(item)
        else:
            assert result[1] is QueueFullError

    # on_ack and on_end mostly follow the protocol (the model says which
    # devices have which calls in flight), so that lifecycles progress; one
    # time in four they go anywhere, to hit the misuse errors.

    def _pick(self, data, wanted):
        busy = [d for d in DEVICES if wanted(self.model.dev(d).calls)]
        if busy and data.draw(st.sampled_from([True, True, True, False]), label="valid"):
            return data.draw(st.sampled_from(busy), label="device"), True
        return data.draw(devices, label="device"), False

    def _on_ack(self, data):
        device, _ = self._pick(data, lambda calls: "unacked" in calls)
        self.record(self.run("on_ack", device))

    def _on_end(self, data):
        device, valid = self._pick(data, bool)
        if valid:
            states = sorted(set(self.model.dev(device).calls))
            acked = data.draw(st.sampled_from(states), label="state") == "acked"
        else:
            acked = data.draw(st.booleans(), label="acked")
        self.record(self.run("on_end", device, acked))

    def _set_online(self, data):
        device = data.draw(devices, label="device")
        self.record(self.run("set_online", device, data.draw(presence, label="online")))

    def _discard(self, data):
        device = data.draw(devices, label="device")
        items = st.integers(0, 2**63 - 1)
        if self.submitted:
            items = st.one_of(st.sampled_from(self.submitted[-20:]), items)
        held = self.model.dev(device).held
        if held:  # mostly one that is there, anywhere in the queue
            items = st.one_of(st.sampled_from(list(held)), st.sampled_from(list(held)), items)
        item = data.draw(items, label="item")
        if self.run("discard", device, item) == ("ok", True):
            self.gone.append(item)

    def _configure(self, data):
        device = data.draw(devices, label="device")
        kwargs = {
            "strategy": data.draw(st.one_of(st.none(), strategies_), label="strategy"),
            "cap": data.draw(st.one_of(st.none(), caps), label="cap"),
            "window": data.draw(st.one_of(st.none(), windows), label="window"),
        }
        assert self.run("configure", device, **kwargs)[0] == "ok"

    def _widen_busy(self, data):
        # Free slots on a device with held items (rare by chance): configure
        # does not send, and a new item must not overtake the held ones.
        device = data.draw(devices, label="device")
        d = self.model.dev(device)
        if d.held:
            window = data.draw(st.sampled_from([0, len(d.calls) + 1]), label="window")
            self.run("configure", device, strategy=BURST, window=window)
            self._submit_item(device, self._fresh())

    def _drain(self, data):
        results = [_outcome(q.drain) for q in self.impls]
        expected = self.model.drain()
        for result in results:
            assert result == results[0]  # the variants agree on the exact order
            assert result[0] == "ok"
            assert _grouped(result[1]) == _grouped(expected)  # FIFO per device
            assert all(type(item) is int for _, item in result[1])
        self.gone.extend(item for _, item in expected)

    def _bad_input(self, data):
        device = data.draw(devices, label="device")
        kind = data.draw(st.sampled_from(["item", "device", "configure"]), label="bad")
        if kind == "item":
            item = data.draw(bad_items)
            assert self.run("submit", device, item)[0] == "error"
            assert self.run("discard", device, item)[0] == "error"
        elif kind == "device":
            op, *args = data.draw(st.sampled_from(BAD_DEVICE_CALLS))
            assert self.run(op, data.draw(bad_devices), *args)[0] == "error"
        else:
            # One bad argument: an error, and nothing applied (all or nothing).
            kwargs = {
                "strategy": data.draw(st.one_of(st.none(), strategies_)),
                "cap": data.draw(st.one_of(st.none(), caps)),
                "window": data.draw(st.one_of(st.none(), windows)),
            }
            name, value = data.draw(st.sampled_from(BAD_CONFIG))
            kwargs[name] = value
            assert self.run("configure", device, **kwargs)[0] == "error"

    # invariants

    @invariant()
    def agree_on_every_device(self):
        for q in self.impls:
            for device in DEVICES:
                assert q.held(device) == self.model.held(device)
                assert q.inflight(device) == self.model.inflight(device)
                assert q.is_online(device) == self.model.is_online(device)
            assert q.total_held == self.model.total_held
            # Idle devices leave no state: only the busy, offline or
            # configured ones count.
            assert len(q) == len(self.model)

    @invariant()
    def caps_hold(self):
        # Lowering a cap keeps what is held: only then may held exceed it.
        for d in self.model.devs.values():
            assert len(d.held) <= d.cap or d.over_cap

    @invariant()
    def nothing_lost_or_duplicated(self):
        if not hasattr(self, "model"):
            return
        held = [item for d in self.model.devs.values() for item in d.held]
        accounted = sorted(self.sent + self.gone + held)
        assert accounted == sorted(self.submitted)

    @invariant()
    def window_respected(self):
        for d in self.model.devs.values():
            assert d.used() <= d.slots() or d.overcommitted


SETTINGS = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_variants_agree(core):
    if core.name == "c":
        classes = (core.DeviceQueues, _core.VARIANTS["py"]["DeviceQueues"])
    else:
        classes = (core.DeviceQueues,)

    class Machine(QueuesMachine):
        CLASSES = classes

    run_state_machine_as_test(Machine, settings=SETTINGS)
