"""Every API error is JSON: ``{"error": {"message": …, "field": …}, "errors": […]}``.

``field`` names the offending input (``body.title``, ``query.limit``) where there is one,
so a client can point at it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

BODY_UNREADABLE = "There was an error parsing the body"
"""FastAPI's detail for a body it could not decode."""


class ErrorDetail(BaseModel):
    message: str
    field: str | None = Field(
        None, description="the offending input (body.title, query.limit, path.incident_id)"
    )


class FieldError(BaseModel):
    field: str
    message: str


class ErrorOut(BaseModel):
    """Every error the API answers (4xx): ``error``, and for a refused input every problem
    found in ``errors``."""

    error: ErrorDetail
    errors: list[FieldError] | None = Field(
        None, description="every problem found (a schema's 422, a refused resolution)"
    )


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The body could not be read as JSON (not UTF-8, or nested too deeply)",
    401: "No credentials, or not valid ones (WWW-Authenticate: Bearer)",
    403: "The caller's role does not allow it",
    404: "An id that does not exist",
    409: "A step the current state does not allow",
    413: "A body over http.max_body_bytes",
    415: "A body that is not JSON",
    422: "Invalid input: the fields at fault, in errors",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of these error statuses, each with the body they have."""
    return {code: {"model": ErrorOut, "description": ERROR_DESCRIPTIONS[code]} for code in codes}


AUTHENTICATED = responses(401, 403, 422)
"""What every API route may answer: no or bad credentials, a role too low, invalid input."""
WITH_BODY = responses(400, 413, 415)
"""What a route that reads a JSON body may also answer."""


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
        errors: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = dict(headers or {})
        self.errors = errors


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
    return JSONResponse(body(exc.message, exc.field, exc.errors), exc.status, headers=exc.headers)


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, RequestValidationError):  # pragma: no cover
        raise exc
    errors = [_described(e) for e in exc.errors()]
    if not errors:
        return JSONResponse(body("invalid request"), 422)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind and not _is_json(kind) and any(e["field"] == "body" for e in errors):
        # Not JSON at all (a form, text): FastAPI read it as a string and said "Input should
        # be a valid dictionary", which did not say what was wrong.
        return JSONResponse(
            body(f"send the body as JSON (Content-Type: application/json), not {kind}"),
            415,
        )
    first = errors[0]
    message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
    return JSONResponse(body(message, first["field"] or None, errors), 422)


def _described(error: Mapping[str, Any]) -> dict[str, str]:
    """One validation error as ``{"field", "message"}``. A body that is not JSON says where
    and why (FastAPI's location is ``body`` and the character offset, its message only
    "JSON decode error")."""
    loc = tuple(error.get("loc", ()))
    if error.get("type") == "json_invalid":
        where = f" at character {loc[1]}" if len(loc) > 1 else ""
        reason = (error.get("ctx") or {}).get("error", "")
        return {"field": "body", "message": f"not valid JSON{where}: {reason}".rstrip(": ")}
    return {"field": _location(loc), "message": str(error.get("msg", ""))}


async def _store_refused(request: Request, exc: Exception) -> JSONResponse:
    """A value the store cannot keep that no check caught (PostgreSQL refuses NUL in text):
    the request's fault, 422, not a server error. Any other database error stays a 500."""
    if not isinstance(exc, DBAPIError) or not _is_nul(exc):
        raise exc
    return JSONResponse(body("a value contains a NUL character, which cannot be stored"), 422)


def _is_nul(exc: DBAPIError) -> bool:
    text = str(exc.orig)
    return "0x00" in text and ("UTF8" in text or "UTF-8" in text)


def _is_json(kind: str) -> bool:
    return kind == "application/json" or kind.endswith("+json")


async def _http(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, StarletteHTTPException):  # pragma: no cover
        raise exc
    if exc.status_code == 400 and exc.detail == BODY_UNREADABLE:
        # FastAPI's words when the body could not be decoded at all: say what it takes.
        message = "the body could not be read as JSON: it is not UTF-8 text, or nested too deeply"
        return JSONResponse(body(message, "body"), 400)
    return JSONResponse(
        body(str(exc.detail)), exc.status_code, headers=dict(exc.headers or {}) or None
    )


_FASTAPI_422 = "#/components/schemas/HTTPValidationError"


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the 422 FastAPI documents of itself (``{"detail": ...}``,
    which no route answers) replaced by the error body every route does answer."""
    document = FastAPI.openapi(app)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    if ErrorOut.__name__ not in schemas:
        ours = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, schema in ours.pop("$defs", {}).items():
            schemas.setdefault(name, schema)
        schemas[ErrorOut.__name__] = ours
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            answer = operation.get("responses", {}).get("422", {})
            for media in answer.get("content", {}).values():
                if media.get("schema", {}).get("$ref") == _FASTAPI_422:
                    media["schema"] = {"$ref": f"#/components/schemas/{ErrorOut.__name__}"}
                    answer["description"] = ERROR_DESCRIPTIONS[422]
    if "HTTPValidationError" in schemas and _FASTAPI_422 not in json.dumps(document):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    return document


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(DBAPIError, _store_refused)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
