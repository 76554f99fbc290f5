"""What one ``fleetrpc bench`` run measures, and how (:class:`BenchConfig`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["TARGETS", "WORKLOADS", "BenchConfig", "Progress"]

WORKLOADS = ("peak", "latency", "oneway", "fanout", "sequential", "memory")
#: reference: the plain dispatcher (bench/reference.py); limit: the least a
#: dispatcher can do (bench/limit.py); fleetrpc: the Dispatcher.
TARGETS = ("reference", "limit", "fleetrpc")

#: progress(target, workload, done, total, text)
Progress = Callable[[str, str, float, float, str], None]


@dataclass
class BenchConfig:
    """Everything one benchmark run needs; ``quick()`` shrinks it for tests."""

    devices: int = 1000
    qos: int = 1
    #: Seconds of each timed phase (peak, latency, oneway; the bound of the others).
    duration: float = 3.0
    workloads: tuple[str, ...] = WORKLOADS
    targets: tuple[str, ...] = TARGETS
    #: Broker URL; None starts a throwaway tuned Mosquitto.
    url: str | None = None
    #: Simulator worker processes (None: one per CPU, at most 4).
    processes: int | None = None
    #: Concurrent callers in the closed loops (peak, oneway).
    window: int = 1000
    #: Fixed-rate phase: this fraction of the measured peak ...
    rate_fraction: float = 0.5
    #: ... or exactly this many calls/s (same for every target).
    rate: float | None = None
    calls_per_device: int = 5
    fanout_rounds: int = 3
    mem_pending: int = 20_000
    #: Call timeout (s).
    timeout: float = 10.0
    warmup: float = 1.0
    #: Params of every call: echoed back by the devices.
    params: dict = field(default_factory=lambda: {"v": 1, "s": "fleetrpc"})

    def __post_init__(self) -> None:
        unknown = set(self.workloads) - set(WORKLOADS)
        if unknown:
            raise ValueError(f"unknown workloads: {', '.join(sorted(unknown))} (known: {', '.join(WORKLOADS)})")
        unknown = set(self.targets) - set(TARGETS)
        if unknown:
            raise ValueError(f"unknown targets: {', '.join(sorted(unknown))} (known: {', '.join(TARGETS)})")
        if self.qos not in (0, 1):
            raise ValueError("qos must be 0 or 1")
        if self.devices < 1 or self.window < 1 or self.duration <= 0:
            raise ValueError("devices, window and duration must be positive")

    def quick(self) -> BenchConfig:
        """A tiny run for tests: short phases, small windows."""
        self.duration = min(self.duration, 0.5)
        self.warmup = 0.2
        self.window = min(self.window, 32)
        self.calls_per_device = 2
        self.fanout_rounds = 1
        self.mem_pending = min(self.mem_pending, 200)
        self.timeout = min(self.timeout, 5.0)
        if self.processes is None:
            self.processes = 1
        return self
