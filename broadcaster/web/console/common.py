"""What every console page shares: the router, the page frame and its headers, the
signed-in caller, and reading form fields."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.datastructures import FormData

from broadcaster.access.credentials import Principal
from broadcaster.access.roles import Role, allows
from broadcaster.web.auth import audit_role_refusal, check_csrf, principal_of
from broadcaster.web.errors import ApiError
from broadcaster.web.inputs import no_nul_in

router = APIRouter(prefix="/console", include_in_schema=False)

HERE = Path(__file__).resolve().parent.parent
"""``broadcaster/web``: the console's templates and static files are there."""
REFRESH_SECONDS = 3
LIST_LIMIT = 100

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

NOTICES = {
    "declared": "Incident declared: round 1 goes out now.",
    "updated": "Update posted: customers hear it now.",
    "resolved": "Resolved: the resolution message goes out now.",
    "closed": "Incident closed.",
    "claimed": "Follow-up claimed: it is yours.",
    "done": "Follow-up recorded as done.",
    "waived": "Follow-up waived.",
    "reloaded": "Rules reloaded.",
}

ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=jinja2.select_autoescape(["html"], default_for_string=True),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "—"


def span(seconds: float | None) -> str:
    """A short duration: ``45s``, ``12m 05s``, ``3h 04m``, ``2d 5h``."""
    if seconds is None:
        return "—"
    whole = int(abs(seconds))
    sign = "-" if seconds < 0 else ""
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days}d {hours}h"
    if hours:
        return f"{sign}{hours}h {minutes:02d}m"
    if minutes:
        return f"{sign}{minutes}m {secs:02d}s"
    return f"{sign}{secs}s"


ENV.filters["when"] = when
ENV.filters["span"] = span


class Stop(Exception):
    """Ends a handler early with a response (a redirect to the login, an error page)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


P = ParamSpec("P")


def stoppable(handler: Callable[P, Awaitable[Response]]) -> Callable[P, Awaitable[Response]]:
    @functools.wraps(handler)
    async def run(*args: P.args, **kwargs: P.kwargs) -> Response:
        try:
            return await handler(*args, **kwargs)
        except Stop as stop:
            return stop.response

    return run


def render(
    request: Request,
    template: str,
    principal: Principal | None,
    code: int = 200,
    **context: Any,
) -> HTMLResponse:
    html = ENV.get_template(f"console/{template}").render(
        path=request.url.path,
        principal=principal,
        csrf=principal.csrf_token if principal else "",
        can_operate=principal is not None and allows(principal.role, "operator"),
        is_admin=principal is not None and allows(principal.role, "admin"),
        refresh=REFRESH_SECONDS,
        notice=NOTICES.get(request.query_params.get("ok", "")),
        **context,
    )
    return HTMLResponse(html, code, headers=HEADERS)


def error_page(request: Request, principal: Principal | None, status: int, message: str) -> Stop:
    return Stop(render(request, "error.html", principal, status, status=status, message=message))


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, 303, headers=HEADERS)


async def who(
    request: Request, role: Role, *, write: bool = False, fragment: bool = False
) -> Principal:
    """The signed-in caller with at least ``role``; for ``write``, with the CSRF token."""
    try:
        principal = await principal_of(request)
    except ApiError:
        principal = None
    if principal is None:
        if fragment:
            raise Stop(Response("sign in again", 401, headers=HEADERS))
        back = request.url.path if request.method == "GET" else "/console/incidents"
        raise Stop(redirect(f"/console/login?next={quote(back)}"))
    if not allows(principal.role, role):
        await audit_role_refusal(request, principal, role)
        raise error_page(
            request,
            principal,
            403,
            f"This needs the {role} role; {principal.name} has the {principal.role} role.",
        )
    if write:
        try:
            await check_csrf(request, principal)
        except ApiError as exc:
            raise error_page(request, principal, 403, exc.message) from None
    return principal


def form_text(form: FormData, name: str) -> str:
    """A form field, stripped; raises ``ValueError`` naming it when it holds a NUL
    character (which no field means, and PostgreSQL cannot keep)."""
    value = form.get(name)
    if not isinstance(value, str):
        return ""
    return no_nul_in(name, value.strip())


def form_optional(form: FormData, name: str) -> str | None:
    """A form field; empty means "not given" (the service keeps the previous value)."""
    return form_text(form, name) or None


def form_given(form: FormData, name: str) -> str | None:
    """A field of a form that shows the current value: absent means "keep" (None), empty
    clears (``""``), as the service reads an update."""
    return form_text(form, name) if name in form else None


def form_changed(form: FormData, name: str) -> str | None:
    """A pre-filled field (``name``, with what it showed in ``name_was``): None when left as
    it was shown (the service keeps the value, even if someone changed it meanwhile), else
    what was typed (empty clears)."""
    given = form_given(form, name)
    if given is None or (f"{name}_was" in form and given == form_text(form, f"{name}_was")):
        return None
    return given


def form_list(form: FormData, name: str) -> list[str]:
    return [
        part.strip() for part in form_text(form, name).replace("\n", ",").split(",") if part.strip()
    ]


def form_moment(form: FormData, name: str) -> datetime | None:
    """A ``datetime-local`` field, read as UTC; raises ``ValueError`` naming the field."""
    return parse_moment(name, form_text(form, name))


def parse_moment(name: str, raw: str) -> datetime | None:
    """A ``datetime-local`` value (empty: None), read as UTC; ``ValueError`` naming ``name``."""
    if not raw:
        return None
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{name}: {raw!r} is not a date and time (YYYY-MM-DD HH:MM)") from None
    try:
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{name}: {raw!r} is out of range in UTC") from None


def form_values(form: FormData) -> dict[str, str]:
    """What the user typed, to put back in the form when the action is refused."""
    return {key: value for key, value in form.items() if isinstance(value, str)}


def field_of(message: str) -> str | None:
    head, sep, _ = message.partition(": ")
    return head if sep and head.replace("_", "").isalnum() else None


def safe_next(target: str) -> str:
    if target.startswith("/console/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/console/incidents"
