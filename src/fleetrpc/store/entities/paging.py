"""Paged, searched and sorted listings in SQL, as ThingsBoard's ``PageLink``.

A listing takes ``page_size`` (>= 1), ``page`` (from 0), an optional
``text_search`` (a case-insensitive substring of the entity's name or
title), ``sort_property`` (ThingsBoard's camelCase name, from a fixed list
per entity) and ``sort_order`` (``ASC``/``DESC``), and answers a
:class:`~fleetrpc.store.base.Page` (ThingsBoard's ``PageData``: ``data``,
``totalPages``, ``totalElements``, ``hasNext``).  Every ordering ends with
the id, so pages never overlap nor skip rows that tie.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ...errors import ValidationError
from ..base import Page

__all__ = ["PageData", "ListQuery", "check_paging"]

#: One page of entities: the store's :class:`Page` (one concept, one place);
#: ``to_thingsboard()`` calls each item's own ``to_thingsboard()``.
PageData = Page

#: Largest page one request may ask for.
MAX_PAGE_SIZE = 10_000
# page * page_size must stay far from int64 (PostgreSQL's OFFSET).
_MAX_OFFSET = 1 << 53


def check_paging(page_size: object, page: object) -> tuple[int, int]:
    if type(page_size) is not int or page_size < 1:
        raise ValidationError(f"pageSize must be a positive integer, got {page_size!r}")
    if page_size > MAX_PAGE_SIZE:
        raise ValidationError(f"pageSize must be at most {MAX_PAGE_SIZE}, got {page_size}")
    if type(page) is not int or page < 0:
        raise ValidationError(f"page must be an integer >= 0, got {page!r}")
    if page * page_size > _MAX_OFFSET:
        raise ValidationError(f"page {page} of size {page_size} is out of range")
    return page_size, page


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class ListQuery:
    """Builds one listing's WHERE, ORDER BY, LIMIT and OFFSET with ``$n``
    placeholders (both dialects)."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self.where: list[str] = []
        self.args: list[Any] = []

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def equals(self, column: str, value: Any) -> None:
        if value is None:
            self.where.append(f"{column} IS NULL")
        else:
            self.where.append(f"{column} = {self.arg(value)}")

    def search(self, columns: tuple[str, ...], text: object) -> None:
        """Rows where any of ``columns`` contains ``text``, ignoring case
        (ILIKE on PostgreSQL; LIKE on SQLite, which ignores ASCII case)."""
        if text is None or text == "":
            return
        if not isinstance(text, str):
            raise ValidationError(f"textSearch must be a string, got {type(text).__name__}")
        if "\x00" in text:
            raise ValidationError("textSearch must not contain the NUL character")
        p = self.arg(_like_pattern(text))
        op = "ILIKE" if self.dialect == "postgresql" else "LIKE"
        self.where.append("(" + " OR ".join(f"{c} {op} {p} ESCAPE '\\'" for c in columns) + ")")

    def where_sql(self) -> str:
        return (" WHERE " + " AND ".join(self.where)) if self.where else ""

    def order_sql(
        self,
        sort_property: object,
        sort_order: object,
        allowed: Mapping[str, str],
        default: str,
        id_column: str,
        unique: tuple[str, ...] = (),
    ) -> str:
        """ORDER BY the column of ``sort_property`` (from ``allowed``), then
        the id, except for properties in ``unique`` (unique within the
        listing's scope): there the id adds nothing, and would stop
        PostgreSQL from walking the unique index in order."""
        if sort_property is None or sort_property == "":
            sort_property = default
        if sort_property not in allowed:
            raise ValidationError(
                f"Unsupported sort property '{sort_property}'! Use one of: {', '.join(allowed)}"
            )
        if sort_order is None or sort_order == "":
            sort_order = "ASC"
        if not isinstance(sort_order, str) or sort_order.upper() not in ("ASC", "DESC"):
            raise ValidationError(
                f"Unsupported sort order '{sort_order}'! Only 'ASC' or 'DESC' types are allowed."
            )
        direction = sort_order.upper()
        column = allowed[sort_property]  # type: ignore[index]
        # NULLs sort as the smallest value on both backends.
        nulls = (" NULLS FIRST" if direction == "ASC" else " NULLS LAST") if self.dialect == "postgresql" else ""
        if sort_property in unique:
            return f" ORDER BY {column} {direction}{nulls}"
        return f" ORDER BY {column} {direction}{nulls}, {id_column} {direction}"

    def limit_sql(self, page_size: int, page: int) -> str:
        return f" LIMIT {self.arg(page_size)} OFFSET {self.arg(page * page_size)}"

    async def fetch_page(
        self,
        db: Any,
        table: str,
        columns: str,
        order: str,
        page_size: int,
        page: int,
        entity: Callable[[Any], Any],
        join: str = "",
    ) -> PageData:
        """Run the listing: count the rows of ``table`` (with its alias, if
        any) that match, then read page ``page`` of them in ``order``, each
        row made an entity by ``entity``.  ``join`` is only for the page's
        ORDER BY (the count does not need it)."""
        where = self.where_sql()
        total = await db.fetchval(f"SELECT count(*) FROM {table}{where}", *self.args)
        rows = await db.fetch(
            f"SELECT {columns} FROM {table}{join}{where}{order}{self.limit_sql(page_size, page)}", *self.args
        )
        return PageData.build([entity(r) for r in rows], total, page_size, page)
