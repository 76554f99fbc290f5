"""ThingsBoard's ``PageLink`` query parameters: ``pageSize`` and ``page``
(required), ``textSearch``, ``sortProperty``, ``sortOrder``; answered as
``PageData`` (``data``, ``totalPages``, ``totalElements``, ``hasNext``)."""

from __future__ import annotations

import msgspec
from aiohttp import web

from ..errors import ApiError
from ..openapi import Param

__all__ = ["PageQuery", "page_args", "page_query", "sort_order", "page_params", "bool_param", "required_param"]

MAX_PAGE_SIZE = 10_000


class PageQuery(msgspec.Struct, frozen=True):
    """One listing request as the repositories take it."""

    page_size: int
    page: int
    text_search: str | None = None
    sort_property: str | None = None
    sort_order: str | None = None


def page_args(request: web.Request, max_page_size: int = MAX_PAGE_SIZE) -> tuple[int, int]:
    """The required ``pageSize`` (at most ``max_page_size``) and ``page`` query parameters."""
    q = request.query
    out = []
    for name, low in (("pageSize", 1), ("page", 0)):
        raw = q.get(name)
        if raw is None:
            raise ApiError.bad_request(f"Required request parameter '{name}' for method parameter type int is not present")
        try:
            value = int(raw)
        except ValueError:
            raise ApiError.bad_request(f"Parameter '{name}' must be an integer, not {raw[:32]!r}") from None
        if value < low or value > 10_000_000:
            raise ApiError.bad_request(f"Parameter '{name}' must be >= {low}")
        out.append(value)
    if out[0] > max_page_size:
        raise ApiError.bad_request(f"Parameter 'pageSize' must be at most {max_page_size}")
    return out[0], out[1]


def sort_order(request: web.Request, default: str = "DESC") -> str:
    order = request.query.get("sortOrder") or default
    if order.upper() not in ("ASC", "DESC"):
        raise ApiError.bad_request(f"Unsupported sort order '{order[:32]}'! Only 'ASC' or 'DESC' types are allowed.")
    return order.upper()


def page_query(request: web.Request, sort_properties: tuple[str, ...]) -> PageQuery:
    """The PageLink of an entity listing; a ``sortProperty`` outside
    ``sort_properties`` is a 400."""
    page_size, page = page_args(request)
    q = request.query
    prop = q.get("sortProperty") or None
    if prop is not None and prop not in sort_properties:
        raise ApiError.bad_request(
            f"Unsupported sort property '{prop[:64]}'! Use one of: {', '.join(sort_properties)}")
    return PageQuery(page_size, page, q.get("textSearch") or None, prop, sort_order(request, "ASC"))


def page_params(sort_properties: tuple[str, ...], search: str) -> tuple[Param, ...]:
    """The OpenAPI description of a PageLink."""
    return (
        Param("pageSize", int, True, f"Page size (1-{MAX_PAGE_SIZE})"),
        Param("page", int, True, "Page number, from 0"),
        Param("textSearch", str, False, search),
        Param("sortProperty", str, False, "Sort key", sort_properties),
        Param("sortOrder", str, False, "ASC or DESC", ("ASC", "DESC")),
    )


#: What Spring's StringToBooleanConverter reads as a Boolean (any case).
_TRUE = ("true", "on", "yes", "1")
_FALSE = ("false", "off", "no", "0")


def bool_param(request: web.Request, name: str) -> bool | None:
    """An optional Boolean query parameter as ThingsBoard (Spring) reads
    it: absent or empty -> None; true/false, on/off, yes/no, 1/0 in any
    case; anything else a 400."""
    raw = request.query.get(name)
    if raw is None or raw.strip() == "":
        return None
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ApiError.bad_request(f"Parameter '{name}' must be true or false, not {raw[:32]!r}")


def required_param(request: web.Request, name: str, java_type: str = "String") -> str:
    """A required query parameter; absent: Spring's 400."""
    raw = request.query.get(name)
    if raw is None:
        raise ApiError.bad_request(
            f"Required request parameter '{name}' for method parameter type {java_type} is not present")
    return raw
