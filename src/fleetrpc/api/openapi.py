"""The OpenAPI document (``/api/openapi.json``) and the docs page (``/api/docs``).

Each feature's ``setup()`` registers its routes through :func:`operation`,
naming the msgspec types of the body and the answer; the document is built
from that route table and ``msgspec.json.schema_components`` of those types,
so it cannot drift from the code.  The docs page is a plain HTML list of the
operations (no JavaScript, nothing fetched from elsewhere at run time).
"""

from __future__ import annotations

import html
import re
from typing import Any

import msgspec
from aiohttp import web

from .errors import ErrorBody
from .keys import OPERATIONS

__all__ = ["Answer", "Operation", "Param", "operation", "openapi_document", "setup"]


class Param(msgspec.Struct, frozen=True):
    """A query parameter."""

    name: str
    type: Any = str
    required: bool = False
    description: str = ""
    enum: tuple[str, ...] = ()


class Answer(msgspec.Struct, frozen=True):
    """An extra status whose JSON body is not the plain error body (a
    route's ``statuses`` give others as a bare description).  When the
    status is one every authenticated route answers already (403: errorCode
    20), the two are described together: both descriptions, either body."""

    description: str
    #: the msgspec type of the answer's JSON body
    body: Any


class Operation(msgspec.Struct, frozen=True):
    method: str
    path: str
    tag: str
    summary: str
    body: Any = None
    #: the msgspec type of the 200's JSON body, or a tuple of types: any one
    #: of them (msgspec describes no union of untagged Structs)
    response: Any = None
    #: the answer is not JSON: "text" (bare text) or "empty"
    response_kind: str = "json"
    query: tuple[Param, ...] = ()
    #: extra statuses -> a description, or an Answer (a description and a body)
    statuses: dict[int, str | Answer] = {}
    public: bool = False


def operation(
    app: web.Application,
    route: web.AbstractRoute,
    *,
    tag: str,
    summary: str,
    body: Any = None,
    response: Any = None,
    response_kind: str = "json",
    query: tuple[Param, ...] | list[Param] = (),
    statuses: dict[int, str | Answer] | None = None,
) -> web.AbstractRoute:
    """Record ``route`` in the API description (returns it)."""
    info = route.resource.get_info() if route.resource is not None else {}
    path = info.get("formatter") or info.get("path") or ""
    app[OPERATIONS].append(Operation(
        method=route.method, path=path, tag=tag, summary=summary, body=body, response=response,
        response_kind=response_kind, query=tuple(query), statuses=dict(statuses or {}),
        public=bool(getattr(route.handler, "fleetrpc_public", False)),
    ))
    return route


_PATH_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")
_STD_ERRORS = {
    401: "Not authenticated: errorCode 10 (no or bad token) or 11 (token expired)",
    403: "Permission denied (errorCode 20)",
    429: "Too many requests (errorCode 33)",
}


def _scalar_schema(t: Any) -> dict[str, Any]:
    return {int: {"type": "integer"}, bool: {"type": "boolean"}, float: {"type": "number"}}.get(t, {"type": "string"})


def openapi_document(app: web.Application, *, title: str = "fleetrpc", version: str = "0") -> dict[str, Any]:
    """The OpenAPI 3.0 document of every recorded operation."""
    ops: list[Operation] = app[OPERATIONS]
    types: list[Any] = [ErrorBody]
    for op in ops:
        answers = [a.body for a in op.statuses.values() if isinstance(a, Answer)]
        shapes = op.response if isinstance(op.response, tuple) else (op.response,)
        for t in (op.body, *shapes, *answers):
            if t is not None and t not in types:
                types.append(t)
    schemas, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    ref = dict(zip(types, schemas))
    error = {"content": {"application/json": {"schema": ref[ErrorBody]}}}
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        params = [
            {"name": name, "in": "path", "required": True,
             "schema": {"type": "string", "format": "uuid"} if name.lower().endswith("id") else {"type": "string"}}
            for name in _PATH_PARAM.findall(op.path)
        ]
        for q in op.query:
            schema = _scalar_schema(q.type)
            if q.enum:
                schema["enum"] = list(q.enum)
            if q.type is int:
                schema["minimum"] = 0
            params.append({"name": q.name, "in": "query", "required": q.required, "schema": schema,
                           "description": q.description})
        responses: dict[str, Any] = {}
        if op.response_kind == "json" and op.response is not None:
            schema = ({"anyOf": [ref[t] for t in op.response]} if isinstance(op.response, tuple)
                      else ref[op.response])
            responses["200"] = {"description": "OK", "content": {"application/json": {"schema": schema}}}
        else:
            responses["200"] = {"description": "OK" if op.response_kind != "rpc" else
                                "The device's reply (any JSON; empty when the reply is empty)"}
        responses["400"] = {"description": "Bad request (errorCode 31)", **error}
        if not op.public:
            for status, text in _STD_ERRORS.items():
                responses[str(status)] = {"description": text, **error}
        for status, text in op.statuses.items():
            if not isinstance(text, Answer):
                responses[str(status)] = {"description": text}
                continue
            schema = ref[text.body]
            description = text.description
            std = responses.get(str(status))
            if std is not None and "content" in std:
                description = f"{std['description']}; or {description}"
                schema = {"anyOf": [ref[ErrorBody], schema]}
            responses[str(status)] = {"description": description,
                                      "content": {"application/json": {"schema": schema}}}
        spec: dict[str, Any] = {
            "tags": [op.tag], "summary": op.summary, "operationId": _operation_id(op),
            "parameters": params, "responses": responses,
        }
        if op.body is not None:
            spec["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref[op.body]}}}
        if not op.public:
            spec["security"] = [{"bearer": []}]
        else:
            spec["security"] = []
        path = _PATH_PARAM.sub(r"{\1}", op.path)
        paths.setdefault(path, {})[op.method.lower()] = spec
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": version,
                 "description": "ThingsBoard-compatible RPC API of fleetrpc. Authenticate with "
                                "POST /api/auth/login, then send `X-Authorization: Bearer <token>`."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "apiKey", "in": "header", "name": "X-Authorization",
                                           "description": "Bearer <token>"}},
        },
    }


def _operation_id(op: Operation) -> str:
    words = re.sub(r"\{[^}]*\}", "by_id", op.path).strip("/").replace("/", "_").replace("-", "_")
    return f"{op.method.lower()}_{words}"


async def openapi_json(request: web.Request) -> web.Response:
    from .. import __version__

    return web.json_response(openapi_document(request.app, version=__version__))


async def docs_page(request: web.Request) -> web.Response:
    """A plain HTML list of the operations."""
    ops: list[Operation] = request.app[OPERATIONS]
    rows = []
    tag = None
    for op in sorted(ops, key=lambda o: (o.tag, o.path, o.method)):
        if op.tag != tag:
            tag = op.tag
            rows.append(f"<h2>{html.escape(tag)}</h2>")
        q = "".join(f" <code>{html.escape(p.name)}</code>" for p in op.query)
        rows.append(
            f"<p><b>{op.method}</b> <code>{html.escape(op.path)}</code> &mdash; {html.escape(op.summary)}"
            f"{'<br><small>query:' + q + '</small>' if q else ''}</p>"
        )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>fleetrpc API</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}code{background:#eee}</style>"
        "</head><body><h1>fleetrpc API</h1><p>The machine-readable description: "
        "<a href='/api/openapi.json'>/api/openapi.json</a> (OpenAPI 3).</p>" + "".join(rows) + "</body></html>"
    )
    return web.Response(text=page, content_type="text/html")


openapi_json.fleetrpc_public = True
docs_page.fleetrpc_public = True


def setup(app: web.Application, ctx: Any) -> None:
    if ctx.settings.http.docs:
        app.router.add_get("/api/openapi.json", openapi_json)
        app.router.add_get("/api/docs", docs_page)
