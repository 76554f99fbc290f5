"""The typed keys under which the application keeps what its handlers share."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from ..server.context import ServerContext

#: The server's parts (settings, dispatcher, engine, repositories, ...).
CTX: web.AppKey[ServerContext] = web.AppKey("fleetrpc_ctx", object)  # type: ignore[arg-type]
#: The route table as the OpenAPI document describes it (api/openapi.py).
OPERATIONS: web.AppKey[list[Any]] = web.AppKey("fleetrpc_operations", list)
#: Who makes a request (api/auth.py's ``Principal``), set by the middleware on
#: every authenticated /api request.  A typed request key where aiohttp has
#: them (3.14 and newer warn on plain strings), else the plain string.
PRINCIPAL: Any = web.RequestKey("fleetrpc_principal", object) if hasattr(web, "RequestKey") else "principal"
