"""Opening the identity repositories (tenants, customers, users, devices)
on the shared database, and adapting the users' repository to what
authentication needs (:class:`~fleetrpc.api.auth.UserDirectory`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .context import ServerContext

__all__ = ["open_repositories"]


async def _nothing() -> None:
    return None


async def open_repositories(ctx: ServerContext) -> Callable[[], Awaitable[None]]:
    """Fill ``ctx.db`` and the repositories; returns the function that
    closes them.  ``ctx.open_repositories`` (tests) replaces the default."""
    if ctx.open_repositories is not None:
        return await ctx.open_repositories(ctx)
    raise RuntimeError(
        "the identity repositories (tenants, users, devices) are not part of this build yet"
    )
