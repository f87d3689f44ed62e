"""Checks every input of the web layer shares: what the store cannot keep is refused as the
caller's error (4xx, naming the field), not met as a database error (500).

- NUL characters: PostgreSQL text cannot hold them (SQLite would store them). Body fields
  use the customer import's own check (``broadcaster.customers.rows.NoNul``); here are the
  path, the query and the console's form fields.
- Dates that leave years 1-9999 once converted to UTC, which the store cannot write.
- Row ids: ASCII digits within 64 bits (``str.isdigit`` also accepts ``²``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import parse_qsl

from pydantic import AfterValidator
from starlette.types import ASGIApp, Receive, Scope, Send

from broadcaster.store.ids import MAX_ID
from broadcaster.web.limits import refuse


def no_nul_in(field: str, value: str) -> str:
    """``value``; raises ``ValueError("field: contains a NUL character")`` when it has one."""
    if "\x00" in value:
        raise ValueError(f"{field}: contains a NUL character")
    return value


def storable(value: datetime) -> datetime:
    """``value`` if the store can keep it (in UTC, within years 1-9999)."""
    try:
        if value.tzinfo is not None:
            value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError("out of range: it must fall within years 1 to 9999 in UTC") from None
    return value


Moment = Annotated[datetime, AfterValidator(storable)]


_MAX_ID_DIGITS = len(str(MAX_ID))


def row_id(text: str) -> int | None:
    """``text`` as a row id, or None when it is not one (not ASCII digits, or too large)."""
    if not (text.isascii() and text.isdigit()):
        return None
    if len(text.lstrip("0")) > _MAX_ID_DIGITS:
        return None  # and int() of over 4,300 digits would raise
    value = int(text)
    return value if 0 < value <= MAX_ID else None


class NulGuard:
    """Refuse with 422 a request whose path or query holds a NUL character (``%00``),
    naming the parameter, before any handler reads it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            field = _nul_field(scope)
            if field is not None:
                await refuse(send, 422, f"{field}: contains a NUL character", field=field)
                return
        await self.app(scope, receive, send)


def _nul_field(scope: Scope) -> str | None:
    raw_path = scope.get("raw_path") or b""  # optional in ASGI
    if "\x00" in scope.get("path", "") or b"%00" in raw_path:
        return "path"
    query = (scope.get("query_string") or b"").decode("latin-1")
    if "%00" not in query and "\x00" not in query:
        return None
    for name, value in parse_qsl(query, keep_blank_values=True, encoding="utf-8", errors="replace"):
        if "\x00" in value or "\x00" in name:
            return f"query.{name.replace(chr(0), '')}"
    return "query"
