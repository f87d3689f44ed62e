"""Every route's guard: a bearer token or a console session, a role, and CSRF for forms.

``Depends(require("operator"))`` on a route gives it the caller's :class:`Principal`, or
answers 401 (no or bad credentials) or 403 (a role too low). Requests that carry the console's
session cookie and change something must echo the session's CSRF token, in the
``X-CSRF-Token`` header or a ``csrf_token`` form field; bearer tokens are not sent by
browsers on their own, so they need none. A caller refused for their role is audited
(:func:`audit_role_refusal`).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

from fastapi import Request

from broadcaster.access import audit, credentials
from broadcaster.access.credentials import Principal
from broadcaster.access.roles import Role, allows
from broadcaster.web.errors import ApiError
from broadcaster.web.state import client_source, state_of

log = logging.getLogger("broadcaster.web")

SESSION_COOKIE = "bc_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
__all__ = [
    "SESSION_COOKIE",
    "audit_role_refusal",
    "check_csrf",
    "client_source",
    "principal_of",
    "require",
]


async def principal_of(request: Request) -> Principal | None:
    """The caller, from the Authorization header or else the session cookie; cached."""
    if "principal" in request.scope.get("state", {}):
        cached: Principal | None = request.state.principal
        return cached
    state = state_of(request)
    principal: Principal | None = None
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if header:
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError(
                401,
                "use 'Authorization: Bearer <token>'",
                field="Authorization",
                headers={"WWW-Authenticate": 'Bearer error="invalid_request"'},
            )
        principal = await credentials.authenticate_token(state.database, state.clock, value.strip())
        if principal is None:
            raise ApiError(
                401,
                "the token is unknown, revoked or expired",
                field="Authorization",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
    elif cookie := request.cookies.get(SESSION_COOKIE):
        principal = await credentials.session_principal(state.database, state.clock, cookie)
    request.state.principal = principal
    return principal


async def check_csrf(request: Request, principal: Principal) -> None:
    if request.method in SAFE_METHODS or principal.csrf_token is None:
        return
    sent = request.headers.get("x-csrf-token")
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        field = form.get("csrf_token")
        sent = field if isinstance(field, str) else None
    if not sent or not hmac.compare_digest(sent.encode(), principal.csrf_token.encode()):
        raise ApiError(403, "the form's CSRF token is missing or wrong; reload the page")


async def audit_role_refusal(request: Request, principal: Principal, role: Role) -> None:
    """Write the audit entry of a request refused because the caller's role is below
    ``role``: one a request. The action is the route (``POST /api/v1/rules/reload``, its
    path's template), the target the path asked for."""
    if request.scope.get("state", {}).get("role_refusal_audited"):
        return
    request.state.role_refusal_audited = True
    state = state_of(request)
    route = request.scope.get("route")
    template = getattr(route, "path", None) or request.url.path
    raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode()
    try:
        await audit.record(
            state.database,
            state.clock,
            principal,
            f"{request.method} {template}"[:64],
            raw_path.decode("ascii", "backslashreplace"),  # as sent: percent-encoded
            client_source(request),
            outcome="refused",
            detail={"reason": "role too low", "needs": role},
        )
    except Exception:  # the caller still gets their 403, not a 500, when the store fails
        log.exception("could not audit a refusal for the role", extra={"actor": principal.actor})


def require(role: Role) -> Callable[[Request], Awaitable[Principal]]:
    async def guard(request: Request) -> Principal:
        principal = await principal_of(request)
        if principal is None:
            raise ApiError(
                401,
                "authentication required: an API token (Authorization: Bearer) or a console login",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not allows(principal.role, role):
            await audit_role_refusal(request, principal, role)
            raise ApiError(
                403, f"this needs the {role} role; {principal.actor} has {principal.role}"
            )
        await check_csrf(request, principal)
        return principal

    guard.__name__ = f"require_{role}"
    return guard
