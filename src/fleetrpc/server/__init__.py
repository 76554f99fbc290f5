"""``fleetrpc serve``: the ThingsBoard-compatible RPC server.

:class:`~fleetrpc.server.process.Server` starts the parts
(``server/parts.py``) in order around a shared
:class:`~fleetrpc.server.context.ServerContext`; the HTTP API is
``fleetrpc.api``.  See docs/server.md.
"""

from __future__ import annotations

from .context import ServerContext
from .process import Server, serve

__all__ = ["Server", "ServerContext", "serve"]
