"""The console's static files, and signing in and out."""

from __future__ import annotations

import hmac
import secrets

from fastapi import Request, Response
from fastapi.responses import HTMLResponse

from broadcaster.access import audit, credentials
from broadcaster.access.credentials import Principal, account_name_problem
from broadcaster.access.roles import Role, check_role
from broadcaster.store import Account
from broadcaster.web.auth import SESSION_COOKIE, client_source
from broadcaster.web.console.common import (
    HERE,
    form_text,
    redirect,
    render,
    router,
    safe_next,
    stoppable,
    who,
)
from broadcaster.web.state import WebState, state_of

STATIC = HERE / "static"
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
LOGIN_COOKIE = "bc_login"
"""A pre-session token the login form echoes (double submit): no login CSRF."""


@router.get("/static/{name}")
async def static(name: str) -> Response:
    path = STATIC / name
    kind = STATIC_TYPES.get(path.suffix)
    if kind is None or path.parent != STATIC or not path.is_file():
        return Response("not found", 404)
    return Response(
        path.read_bytes(),
        media_type=kind,
        headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"},
    )


# --- Login and logout --------------------------------------------------------------------


def _secure(state: WebState) -> bool:
    return state.settings.messages.public_url.lower().startswith("https://")


def _login_form(
    request: Request,
    status: int = 200,
    *,
    error: str | None = None,
    name: str = "",
    after: str | None = None,
) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        None,
        status,
        login_token=token,
        next=safe_next(after if after is not None else request.query_params.get("next", "")),
        error=error,
        name=name,
    )
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        max_age=3600,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=_secure(state_of(request)),
    )
    return response


@router.get("", response_model=None)
async def home() -> Response:
    return redirect("/console/incidents")


@router.get("/login")
async def login_page(request: Request) -> Response:
    return _login_form(request)


async def _audit_login(state: WebState, name: str, source: str, ok: bool) -> None:
    async with state.database.session() as session:
        account = await session.get(Account, name) if name else None
    role: Role = check_role(account.role) if account is not None else "viewer"
    entry = audit.entry(
        Principal("account", name or "(empty)", role),
        "console.login",
        f"account:{name}",
        source,
        state.clock.now(),
        outcome="ok" if ok else "refused",
        detail=None if ok else {"reason": "wrong name or password"},
    )
    if account is None:
        entry.role = ""  # nobody has that name: no role to record
    async with state.database.session() as session, session.begin():
        session.add(entry)


@router.post("/login")
async def login(request: Request) -> Response:
    state = state_of(request)
    form = await request.form()
    try:
        name = form_text(form, "name")
        sent = form_text(form, "login_token")
        form_text(form, "next")
    except ValueError as exc:
        return _login_form(request, 422, error=str(exc), name="", after="")
    password = form.get("password")
    expected = request.cookies.get(LOGIN_COOKIE, "")
    possible = account_name_problem(name) is None
    if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        return _login_form(
            request,
            403,
            error="The login form expired; please try again.",
            name=name if possible else "",
            after=form_text(form, "next"),
        )
    if not possible:
        # No account can have this name (too long, or with control, line-break or bidi
        # characters): the answer to a wrong password, before the throttle (whose memory
        # it would fill) and the audit log (whose lines it could forge).
        return _login_form(
            request, 401, error="Wrong name or password.", name="", after=form_text(form, "next")
        )
    source = client_source(request)
    wait = state.logins.begin(name, state.clock.now())
    if wait is not None:
        await _audit_login(state, name, source, False)
        minutes = max(1, int(wait.total_seconds() // 60) + 1)
        return _login_form(
            request,
            429,
            error=f"Too many failed sign-ins for this name; try again in {minutes} min.",
            name=name,
            after=form_text(form, "next"),
        )
    made = None
    if name and isinstance(password, str) and password:
        made = await credentials.login(state.database, state.clock, name, password, source)
    await _audit_login(state, name, source, made is not None)
    if made is None:
        return _login_form(
            request, 401, error="Wrong name or password.", name=name, after=form_text(form, "next")
        )
    state.logins.succeeded(name)
    session_id, _principal = made
    response = redirect(safe_next(form_text(form, "next")))
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=int(credentials.SESSION_LIFETIME.total_seconds()),
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(state),
    )
    response.delete_cookie(LOGIN_COOKIE, path="/console")
    return response


@router.post("/logout")
@stoppable
async def logout(request: Request) -> Response:
    state = state_of(request)
    principal = await who(request, "viewer", write=True)
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        await credentials.logout(state.database, state.clock, cookie)
    await audit.record(
        state.database,
        state.clock,
        principal,
        "console.logout",
        principal.actor,
        client_source(request),
    )
    response = redirect("/console/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
