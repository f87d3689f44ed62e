"""Every API error is JSON: ``{"error": {"message": …, "field": …}, "errors": […]}``.

``field`` names the offending input (``body.title``, ``query.limit``) where there is one,
so a client can point at it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = dict(headers or {})


def from_value_error(exc: Exception, status: int = 422, prefix: str = "body") -> ApiError:
    """The services raise ``ValueError("field: what is wrong")``: split off the field."""
    text = str(exc)
    head, sep, _rest = text.partition(": ")
    if sep and head.replace("_", "").isalnum() and " " not in head:
        return ApiError(status, text, field=f"{prefix}.{head}")
    return ApiError(status, text)


def body(message: str, field: str | None = None, errors: list[Any] | None = None) -> Any:
    error: dict[str, Any] = {"message": message}
    if field is not None:
        error["field"] = field
    out: dict[str, Any] = {"error": error}
    if errors:
        out["errors"] = errors
    return out


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, ApiError):  # pragma: no cover - registered for ApiError only
        raise exc
    return JSONResponse(body(exc.message, exc.field), exc.status, headers=exc.headers)


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, RequestValidationError):  # pragma: no cover
        raise exc
    errors = [
        {"field": _location(e.get("loc", ())), "message": str(e.get("msg", ""))}
        for e in exc.errors()
    ]
    if not errors:
        return JSONResponse(body("invalid request"), 422)
    first = errors[0]
    message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
    return JSONResponse(body(message, first["field"] or None, errors), 422)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, StarletteHTTPException):  # pragma: no cover
        raise exc
    return JSONResponse(
        body(str(exc.detail)), exc.status_code, headers=dict(exc.headers or {}) or None
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
