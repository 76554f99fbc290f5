"""Rejected inbound messages: counted per reason, logged in summaries.

A hostile or broken device can send thousands of bad messages a second.
One WARNING line each would bury every other line of the log (and cost more
CPU than rejecting them), so :class:`RejectLog` logs the first rejection
after a quiet spell at once, with its detail, and folds the following ones
into one summary line per interval::

    WARNING rejected 3812 inbound messages in the last 10 s: malformed 2990, wrong_device 822
            (e.g. wrong_device: device 'b' answered request 17 of device 'a')

The counts per reason are the dispatcher's ``stats`` (``malformed``,
``wrong_device``, ...), which ``/metrics`` exports; this module only decides
what reaches the log.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["RejectLog"]


class RejectLog:
    """Rate-limited, aggregated log of rejected messages (one per dispatcher).

    ``note(reason, fmt, *args)``: one rejection.  The detail is formatted
    only when it is logged.  Memory is bounded by the number of reasons."""

    __slots__ = ("_log", "_interval", "_counts", "_example", "_handle", "_loop", "summaries")

    def __init__(self, log: logging.Logger, interval: float) -> None:
        self._log = log
        self._interval = interval
        self._counts: dict[str, int] = {}
        self._example: tuple[str, str, tuple] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: summary lines written so far (tests, the fault suite)
        self.summaries = 0

    def note(self, reason: str, fmt: str, *args: Any) -> None:
        if self._handle is None:
            # Quiet until now: this one is logged at once, and the interval starts.
            if self._log.isEnabledFor(logging.WARNING):
                self._log.warning("rejected an inbound message (%s): " + fmt, reason, *args)
            try:
                loop = self._loop or asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (a unit test feeding messages directly): nothing to schedule
            self._loop = loop
            self._handle = loop.call_later(self._interval, self._flush)
            return
        counts = self._counts
        counts[reason] = counts.get(reason, 0) + 1
        if self._example is None:
            self._example = (reason, fmt, args)

    def _flush(self) -> None:
        counts, self._counts = self._counts, {}
        example, self._example = self._example, None
        if not counts:
            self._handle = None  # quiet: the next rejection is logged at once
            return
        total = sum(counts.values())
        by_reason = ", ".join(f"{r} {n}" for r, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        if example is not None and self._log.isEnabledFor(logging.WARNING):
            reason, fmt, args = example
            self._log.warning(
                "rejected %d inbound messages in the last %g s: %s (e.g. %s: " + fmt + ")",
                total, self._interval, by_reason, reason, *args,
            )
        self.summaries += 1
        self._handle = self._loop.call_later(self._interval, self._flush)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
