"""Where a job's devices come from: resolved in pages, in device-id order.

A :class:`TargetSource` answers two questions: how many devices (once, when
the job starts) and the next page of device ids after a given one.  Pages
in id order (keyset paging) make a job resumable from its cursor -- the
last device started -- and never hold more than a page of a 100,000-device
job in memory.  Devices added while a job runs are reached if they sort
after the cursor (a snapshot is not taken).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Protocol

__all__ = ["TargetSource", "ListTargets", "PAGE_SIZE"]

#: Devices resolved per query.
PAGE_SIZE = 1000


class TargetSource(Protocol):
    async def count(self) -> int:
        """How many devices the selector matches now."""

    async def page(self, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` device ids greater than ``after``, ascending."""


class ListTargets:
    """An explicit list of device ids (the library's and ``deviceIds``)."""

    def __init__(self, device_ids: Iterable[str]) -> None:
        self._ids = sorted(set(device_ids))

    async def count(self) -> int:
        return len(self._ids)

    async def page(self, after: str | None, limit: int) -> list[str]:
        start = 0 if after is None else bisect.bisect_right(self._ids, after)
        return self._ids[start:start + limit]
