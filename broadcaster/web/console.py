"""The staff web console: server-rendered pages (Jinja2, autoescaped) under ``/console``.

It runs the same :mod:`broadcaster.operations` as the API, so every action is audited the
same way. Logins make a console session (cookie ``bc_session``: HttpOnly, SameSite=Strict,
Secure when the public URL is https); every form that changes something echoes the
session's CSRF token. Viewers read; operators declare, update, resolve, close and work the
follow-up queue; admins also reload the rules and read the audit log. Two small fragments
(the incident list and an incident's live state) are fetched again every few seconds by
``static/console.js``; the pages work without it.
"""

from __future__ import annotations

import functools
import hmac
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import func, select
from starlette.datastructures import FormData

from broadcaster import operations, reports
from broadcaster.access import audit, credentials
from broadcaster.access.credentials import Principal
from broadcaster.access.roles import WHAT_ROLES_MAY, Role, allows, check_role
from broadcaster.escalation.holder import load_file
from broadcaster.followups import rights
from broadcaster.followups import service as followups
from broadcaster.followups.directory import Directory
from broadcaster.incidents import lifecycle
from broadcaster.incidents import service as incidents
from broadcaster.store import Account, Delivery, Followup, Incident, Round
from broadcaster.web.api.schemas import FollowupId, IncidentId
from broadcaster.web.auth import SESSION_COOKIE, check_csrf, client_source, principal_of
from broadcaster.web.errors import ApiError
from broadcaster.web.inputs import no_nul_in, row_id
from broadcaster.web.state import WebState, state_of
from rules import RulesError

router = APIRouter(prefix="/console", include_in_schema=False)

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
LOGIN_COOKIE = "bc_login"
"""A pre-session token the login form echoes (double submit): no login CSRF."""
REFRESH_SECONDS = 3
LIST_LIMIT = 100
RULES_TEXT_LIMIT = 200_000

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

# Delivery states in the order the chart stacks them, with how the list counts them.
CHART_STATES = (
    "sent",
    "delivered",
    "sending",
    "pending",
    "failed",
    "undelivered",
    "rerouted",
    "cancelled",
)
SENT_STATES = frozenset({"sent", "delivered", "undelivered"})
PENDING_STATES = frozenset({"pending", "sending"})

LIST_FILTERS = ("open", *lifecycle.STATUSES, "all")
FOLLOWUP_FILTERS = ("open", "claimed", "done", "waived", "all")
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

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=jinja2.select_autoescape(["html"], default_for_string=True),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "—"


def _span(seconds: float | None) -> str:
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


_env.filters["when"] = _when
_env.filters["span"] = _span


class _Stop(Exception):
    """Ends a handler early with a response (a redirect to the login, an error page)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


P = ParamSpec("P")


def _stoppable(handler: Callable[P, Awaitable[Response]]) -> Callable[P, Awaitable[Response]]:
    @functools.wraps(handler)
    async def run(*args: P.args, **kwargs: P.kwargs) -> Response:
        try:
            return await handler(*args, **kwargs)
        except _Stop as stop:
            return stop.response

    return run


def _render(
    request: Request,
    template: str,
    principal: Principal | None,
    code: int = 200,
    **context: Any,
) -> HTMLResponse:
    html = _env.get_template(f"console/{template}").render(
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


def _error_page(request: Request, principal: Principal | None, status: int, message: str) -> _Stop:
    return _Stop(_render(request, "error.html", principal, status, status=status, message=message))


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, 303, headers=HEADERS)


async def _who(
    request: Request, role: Role, *, write: bool = False, fragment: bool = False
) -> Principal:
    """The signed-in caller with at least ``role``; for ``write``, with the CSRF token."""
    try:
        principal = await principal_of(request)
    except ApiError:
        principal = None
    if principal is None:
        if fragment:
            raise _Stop(Response("sign in again", 401, headers=HEADERS))
        back = request.url.path if request.method == "GET" else "/console/incidents"
        raise _Stop(_redirect(f"/console/login?next={quote(back)}"))
    if not allows(principal.role, role):
        raise _error_page(
            request,
            principal,
            403,
            f"This needs the {role} role; {principal.name} has the {principal.role} role.",
        )
    if write:
        try:
            await check_csrf(request, principal)
        except ApiError as exc:
            raise _error_page(request, principal, 403, exc.message) from None
    return principal


def _text(form: FormData, name: str) -> str:
    """A form field, stripped; raises ``ValueError`` naming it when it holds a NUL
    character (which no field means, and PostgreSQL cannot keep)."""
    value = form.get(name)
    if not isinstance(value, str):
        return ""
    return no_nul_in(name, value.strip())


def _optional(form: FormData, name: str) -> str | None:
    """A form field; empty means "not given" (the service keeps the previous value)."""
    return _text(form, name) or None


def _list(form: FormData, name: str) -> list[str]:
    return [
        part.strip() for part in _text(form, name).replace("\n", ",").split(",") if part.strip()
    ]


def _moment(form: FormData, name: str) -> datetime | None:
    """A ``datetime-local`` field, read as UTC; raises ``ValueError`` naming the field."""
    raw = _text(form, name)
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


def _values(form: FormData) -> dict[str, str]:
    """What the user typed, to put back in the form when the action is refused."""
    return {key: value for key, value in form.items() if isinstance(value, str)}


def _field_of(message: str) -> str | None:
    head, sep, _ = message.partition(": ")
    return head if sep and head.replace("_", "").isalnum() else None


def _safe_next(target: str) -> str:
    if target.startswith("/console/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/console/incidents"


# --- Static files ------------------------------------------------------------------------


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
    response = _render(
        request,
        "login.html",
        None,
        status,
        login_token=token,
        next=_safe_next(after if after is not None else request.query_params.get("next", "")),
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
    return _redirect("/console/incidents")


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
        name = _text(form, "name")
        sent = _text(form, "login_token")
        _text(form, "next")
    except ValueError as exc:
        return _login_form(request, 422, error=str(exc), name="", after="")
    password = form.get("password")
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        return _login_form(
            request,
            403,
            error="The login form expired; please try again.",
            name=name,
            after=_text(form, "next"),
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
            after=_text(form, "next"),
        )
    made = None
    if name and isinstance(password, str) and password:
        made = await credentials.login(state.database, state.clock, name, password, source)
    await _audit_login(state, name, source, made is not None)
    if made is None:
        return _login_form(
            request, 401, error="Wrong name or password.", name=name, after=_text(form, "next")
        )
    state.logins.succeeded(name)
    session_id, _principal = made
    response = _redirect(_safe_next(_text(form, "next")))
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
@_stoppable
async def logout(request: Request) -> Response:
    state = state_of(request)
    principal = await _who(request, "viewer", write=True)
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
    response = _redirect("/console/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# --- Incident list -----------------------------------------------------------------------


@dataclass
class Row:
    incident: Incident
    age_s: float
    rounds_out: int = 0
    next_due: datetime | None = None
    sent: int = 0
    pending: int = 0
    failed: int = 0


async def _rows(state: WebState, status: str) -> list[Row]:
    chosen = None if status == "all" else status
    found = await incidents.list_incidents(state.database, status=chosen, limit=LIST_LIMIT)
    now = state.clock.now()
    rows = {
        i.id: Row(i, ((i.closed_at or i.resolved_at or now) - i.created_at).total_seconds())
        for i in found
    }
    if not rows:
        return []
    ids = list(rows)
    # An incident whose deliveries are (being) purged shows the counts it kept.
    kept = [
        (i.id, delivery_state, count)
        for i in found
        if i.delivery_counts is not None
        for _round, _channel, delivery_state, count in i.delivery_counts
    ]
    live = [i.id for i in found if i.delivery_counts is None]
    async with state.database.session() as session:
        for incident_id, delivery_state, count in kept + list(
            await session.execute(
                select(Delivery.incident_id, Delivery.state, func.count())
                .where(Delivery.incident_id.in_(live))
                .group_by(Delivery.incident_id, Delivery.state)
            )
        ):
            row = rows[incident_id]
            if delivery_state in SENT_STATES:
                row.sent += count
            elif delivery_state in PENDING_STATES:
                row.pending += count
            elif delivery_state == "failed":
                row.failed += count
        for incident_id, round_state, count, due in await session.execute(
            select(Round.incident_id, Round.state, func.count(), func.min(Round.due_at))
            .where(Round.incident_id.in_(ids))
            .group_by(Round.incident_id, Round.state)
        ):
            row = rows[incident_id]
            if round_state in ("dispatched", "materialising"):
                row.rounds_out += count
            elif round_state == "pending" and lifecycle.is_open(row.incident.status):
                row.next_due = due
    return list(rows.values())


def _status_filter(request: Request) -> str:
    chosen = request.query_params.get("status", "open")
    return chosen if chosen in LIST_FILTERS else "open"


@router.get("/incidents")
@_stoppable
async def incident_list(request: Request) -> Response:
    principal = await _who(request, "viewer")
    status = _status_filter(request)
    rows = await _rows(state_of(request), status)
    return _render(
        request, "incidents.html", principal, rows=rows, status=status, filters=LIST_FILTERS
    )


@router.get("/incidents/rows")
@_stoppable
async def incident_rows(request: Request) -> Response:
    """The list's table body, fetched again every few seconds."""
    principal = await _who(request, "viewer", fragment=True)
    rows = await _rows(state_of(request), _status_filter(request))
    return _render(request, "_incident_rows.html", principal, rows=rows)


# --- Declare -----------------------------------------------------------------------------

DECLARE_DEFAULTS = {"severity": "major", "cause_kind": "unknown", "status": "investigating"}


def _declare_form(
    request: Request,
    principal: Principal,
    status: int = 200,
    values: Mapping[str, str] | None = None,
    error: str | None = None,
) -> HTMLResponse:
    return _render(
        request,
        "declare.html",
        principal,
        status,
        values={**DECLARE_DEFAULTS, **(values or {})},
        error=error,
        error_field=_field_of(error) if error else None,
        severities=lifecycle.SEVERITIES,
        cause_kinds=lifecycle.CAUSE_KINDS,
        statuses=lifecycle.OPEN_STATUSES,
    )


@router.get("/incidents/new")
@_stoppable
async def declare_page(request: Request) -> Response:
    principal = await _who(request, "operator")
    return _declare_form(request, principal)


@router.post("/incidents")
@_stoppable
async def declare(request: Request) -> Response:
    principal = await _who(request, "operator", write=True)
    state = state_of(request)
    form = await request.form()
    try:
        declaration = incidents.Declaration(
            title=_text(form, "title"),
            severity=_text(form, "severity"),
            message=_text(form, "message"),
            components=_list(form, "components"),
            regions=_list(form, "regions"),
            status=_text(form, "status") or "investigating",
            cause_kind=_text(form, "cause_kind") or "unknown",
            cause=_optional(form, "cause"),
            author=principal.name,
            actions=_optional(form, "actions"),
            workaround=_optional(form, "workaround"),
            expected_resolution_at=_moment(form, "expected_resolution_at"),
        )
        incident = await operations.declare(state.actor(request, principal), declaration)
        state.wake()
    except operations.REFUSALS as exc:
        return _declare_form(request, principal, 422, _values(form), str(exc))
    return _redirect(f"/console/incidents/{incident.id}?ok=declared")


# --- One incident ------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    state: str
    count: int
    x: float
    width: float


@dataclass(frozen=True)
class Bar:
    channel: str
    total: int
    sent: int
    segments: list[Segment]
    counts: dict[str, int]


def chart(by_channel: Mapping[str, Mapping[str, int]], width: float = 360.0) -> list[Bar]:
    """One stacked bar per channel, scaled to the busiest channel: the delivery chart."""
    biggest = max((sum(states.values()) for states in by_channel.values()), default=0)
    bars = []
    for channel, states in sorted(by_channel.items()):
        order = [s for s in CHART_STATES if s in states] + sorted(
            s for s in states if s not in CHART_STATES
        )
        x = 0.0
        segments = []
        for name in order:
            w = width * states[name] / biggest if biggest else 0.0
            segments.append(Segment(name, states[name], round(x, 2), round(w, 2)))
            x += w
        bars.append(
            Bar(
                channel,
                sum(states.values()),
                sum(n for s, n in states.items() if s in SENT_STATES),
                segments,
                {name: states[name] for name in order},
            )
        )
    return bars


@dataclass
class Requirements:
    """What the rules ask of this incident's resolution, now."""

    fields: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    compensation: list[str] = field(default_factory=list)
    error: str | None = None


async def _requirements(state: WebState, incident_id: int) -> Requirements:
    if state.escalation is None:
        return Requirements()
    async with state.database.session() as session:
        incident = await session.get(Incident, incident_id)
        if incident is None or not lifecycle.is_open(incident.status):
            return Requirements()
        try:
            decision = await state.escalation.decide(session, incident, state.clock.now())
        except Exception as exc:  # the page must still show; the service decides again
            return Requirements(error=f"the rules could not be evaluated: {exc}")
    if decision is None:
        return Requirements()
    return Requirements(
        sorted(decision.required_for_resolution),
        list(decision.matched_rules),
        [f"{c.kind} of {c.amount} {c.currency} (rule {c.rule})" for c in decision.compensation],
    )


async def _live_context(state: WebState, incident_id: int) -> dict[str, Any]:
    report = await reports.incident_report(state.database, incident_id)
    now = state.clock.now()
    incident = report.view.incident
    promises = {p.state: p for p in report.promises}
    late = promises.get("late")
    return {
        "report": report,
        "incident": incident,
        "now": now,
        "age_s": (
            (incident.closed_at or incident.resolved_at or now) - incident.created_at
        ).total_seconds(),
        "bars": chart(report.by_channel),
        "promise_counts": {
            s: (promises[s].count if s in promises else 0) for s in ("kept", "late", "open")
        },
        "worst_late_s": late.worst_lateness_s if late else None,
        "open_followups": sum(1 for f in report.followups if f.state in followups.OPEN_STATES),
    }


async def _incident_page(
    request: Request,
    principal: Principal,
    incident_id: int,
    status: int = 200,
    *,
    form: str | None = None,
    values: Mapping[str, str] | None = None,
    error: str | None = None,
) -> Response:
    state = state_of(request)
    try:
        live = await _live_context(state, incident_id)
    except incidents.IncidentNotFound:
        raise _error_page(request, principal, 404, f"There is no incident {incident_id}.") from None
    needs = await _requirements(state, incident_id)
    missing: list[str] = []
    if form == "resolve" and error:
        missing = [f for f in needs.fields if not (values or {}).get(f)]
    return _render(
        request,
        "incident.html",
        principal,
        status,
        **live,
        needs=needs,
        missing=missing,
        form=form,
        values=dict(values or {}),
        error=error,
        error_field=_field_of(error) if error else None,
        cause_kinds=lifecycle.CAUSE_KINDS,
        statuses=lifecycle.OPEN_STATUSES,
        is_open=lifecycle.is_open(live["incident"].status),
    )


@router.get("/incidents/{incident_id}")
@_stoppable
async def incident_page(incident_id: IncidentId, request: Request) -> Response:
    principal = await _who(request, "viewer")
    return await _incident_page(request, principal, incident_id)


@router.get("/incidents/{incident_id}/live")
@_stoppable
async def incident_live(incident_id: IncidentId, request: Request) -> Response:
    """The incident page's live part (status, rounds, chart, promises, follow-ups)."""
    principal = await _who(request, "viewer", fragment=True)
    try:
        live = await _live_context(state_of(request), incident_id)
    except incidents.IncidentNotFound:
        return Response("no such incident", 404, headers=HEADERS)
    return _render(request, "_incident_live.html", principal, **live)


def _update_request(form: FormData, author: str, *, resolution: bool) -> incidents.UpdateRequest:
    apology: dict[str, str | None] = {}
    if resolution:
        apology = {
            name: _optional(form, name)
            for name in ("responsibility", "regret", "remedy", "prevention", "compensation")
        }
    return incidents.UpdateRequest(
        message=_text(form, "message"),
        status=None if resolution else _optional(form, "status"),
        cause_kind=_optional(form, "cause_kind"),
        cause=_optional(form, "cause"),
        author=author,
        actions=_optional(form, "actions"),
        workaround=_optional(form, "workaround"),
        expected_resolution_at=None if resolution else _moment(form, "expected_resolution_at"),
        **apology,
    )


async def _change(request: Request, incident_id: int, *, resolution: bool) -> Response:
    """An update or the resolution from the incident page's forms."""
    principal = await _who(request, "operator", write=True)
    state = state_of(request)
    form = await request.form()
    send = operations.resolve if resolution else operations.post_update
    try:
        change = _update_request(form, principal.name, resolution=resolution)
        await send(state.actor(request, principal), incident_id, change)
        state.wake()
    except operations.REFUSALS as exc:
        return await _incident_page(
            request,
            principal,
            incident_id,
            422,
            form="resolve" if resolution else "update",
            values=_values(form),
            error=str(exc),
        )
    done = "resolved" if resolution else "updated"
    return _redirect(f"/console/incidents/{incident_id}?ok={done}")


@router.post("/incidents/{incident_id}/update")
@_stoppable
async def post_update(incident_id: IncidentId, request: Request) -> Response:
    return await _change(request, incident_id, resolution=False)


@router.post("/incidents/{incident_id}/resolve")
@_stoppable
async def resolve(incident_id: IncidentId, request: Request) -> Response:
    return await _change(request, incident_id, resolution=True)


@router.post("/incidents/{incident_id}/close")
@_stoppable
async def close(incident_id: IncidentId, request: Request) -> Response:
    principal = await _who(request, "operator", write=True)
    state = state_of(request)
    try:
        await operations.close(state.actor(request, principal), incident_id)
    except operations.REFUSALS as exc:
        return await _incident_page(
            request, principal, incident_id, 422, form="close", error=str(exc)
        )
    return _redirect(f"/console/incidents/{incident_id}?ok=closed")


# --- Follow-up queue ---------------------------------------------------------------------


def _directory(state: WebState) -> Directory:
    return state.directory or Directory(state.settings.staff)


async def _queue(
    request: Request,
    principal: Principal,
    status: int = 200,
    *,
    task: int | None = None,
    values: Mapping[str, str] | None = None,
    error: str | None = None,
) -> Response:
    state = state_of(request)
    chosen = request.query_params.get("state", "open")
    if chosen not in FOLLOWUP_FILTERS:
        chosen = "open"
    tasks: list[Followup] = await followups.list_followups(
        state.database, state=None if chosen == "all" else chosen
    )
    directory = _directory(state)
    admin = principal.role == "admin"
    may_waive = {t.id: admin or directory.may_waive(principal.name, t.owner) for t in tasks}
    # The Claim button only where the claim would be allowed (rights.may_claim): the
    # server refuses the others all the same.
    may_claim = {
        t.id: t.state == "open" and rights.may_claim(t, principal.name, directory, admin=admin)
        for t in tasks
    }
    return _render(
        request,
        "followups.html",
        principal,
        status,
        tasks=tasks,
        now=state.clock.now(),
        chosen=chosen,
        filters=FOLLOWUP_FILTERS,
        outcomes=followups.OUTCOMES,
        may_waive=may_waive,
        may_claim=may_claim,
        task=task,
        values=dict(values or {}),
        error=error,
    )


@router.get("/followups")
@_stoppable
async def followup_queue(request: Request) -> Response:
    principal = await _who(request, "viewer")
    return await _queue(request, principal)


async def _followup_action(
    request: Request,
    followup_id: int,
    ok: str,
    act: Callable[[operations.Actor, FormData], Awaitable[Followup]],
) -> Response:
    principal = await _who(request, "operator", write=True)
    state = state_of(request)
    form = await request.form()
    try:
        back = _text(form, "back")  # read first: a bad one refuses the action, not after it
        await act(state.actor(request, principal), form)
    except operations.REFUSALS as exc:
        return await _queue(
            request, principal, 422, task=followup_id, values=_values(form), error=str(exc)
        )
    target = _safe_next(back) if back else "/console/followups"
    joiner = "&" if "?" in target else "?"
    return _redirect(f"{target}{joiner}ok={ok}")


@router.post("/followups/{followup_id}/claim")
@_stoppable
async def claim(followup_id: FollowupId, request: Request) -> Response:
    async def act(actor: operations.Actor, form: FormData) -> Followup:
        return await operations.claim_followup(actor, followup_id)

    return await _followup_action(request, followup_id, "claimed", act)


@router.post("/followups/{followup_id}/done")
@_stoppable
async def done(followup_id: FollowupId, request: Request) -> Response:
    async def act(actor: operations.Actor, form: FormData) -> Followup:
        return await operations.followup_done(
            actor, followup_id, _text(form, "outcome"), _text(form, "note")
        )

    return await _followup_action(request, followup_id, "done", act)


@router.post("/followups/{followup_id}/waive")
@_stoppable
async def waive(followup_id: FollowupId, request: Request) -> Response:
    async def act(actor: operations.Actor, form: FormData) -> Followup:
        return await operations.waive_followup(actor, followup_id, _text(form, "reason"))

    return await _followup_action(request, followup_id, "waived", act)


# --- Rules -------------------------------------------------------------------------------


def _rules_page(
    request: Request, principal: Principal, status: int = 200, *, error: str | None = None
) -> HTMLResponse:
    state = state_of(request)
    holder = state.rules
    path = holder.path if holder is not None else state.settings.rules.path
    text: str | None = None
    problems: list[str] = []
    checked = False
    if path is not None:
        try:
            # Shown even when not UTF-8 (load_file below says so, with the line).
            text = path.read_bytes().decode("utf-8", errors="replace")[:RULES_TEXT_LIMIT]
        except OSError as exc:
            problems = [f"{path}: cannot read: {exc.strerror or exc}"]
        else:
            try:
                load_file(path, state.settings)
            except RulesError as exc:
                problems = list(exc.problems)
            checked = True
    active = holder.current if holder is not None else None
    return _render(
        request,
        "rules.html",
        principal,
        status,
        rules_path=path,
        text=text,
        checked=checked,
        problems=problems,
        active=active,
        holder=holder,
        error=error,
    )


@router.get("/rules")
@_stoppable
async def rules_page(request: Request) -> Response:
    principal = await _who(request, "viewer")
    return _rules_page(request, principal)


@router.post("/rules/reload")
@_stoppable
async def rules_reload(request: Request) -> Response:
    principal = await _who(request, "admin", write=True)
    state = state_of(request)
    holder = state.rules
    source = client_source(request)
    if holder is None or holder.path is None:
        await audit.record(
            state.database,
            state.clock,
            principal,
            "rules.reload",
            "rules",
            source,
            outcome="refused",
            detail={"reason": "no rules file is configured"},
        )
        return _rules_page(request, principal, 409, error="No rules file is configured.")
    ok = holder.reload()
    await audit.record(
        state.database,
        state.clock,
        principal,
        "rules.reload",
        f"rules:{holder.path}",
        source,
        outcome="ok" if ok else "refused",
        detail=None if ok else {"problems": (holder.error or "").splitlines()},
    )
    if not ok:
        return _rules_page(
            request,
            principal,
            422,
            error="The file has problems; the previous rules stay active.",
        )
    return _redirect("/console/rules?ok=reloaded")


# --- Audit log ---------------------------------------------------------------------------


@router.get("/audit")
@_stoppable
async def audit_page(request: Request) -> Response:
    principal = await _who(request, "admin")
    state = state_of(request)
    before_raw = request.query_params.get("before", "")
    before = row_id(before_raw)
    actor = request.query_params.get("actor", "").strip() or None
    action = request.query_params.get("action", "").strip() or None
    async with state.database.session() as session:
        entries = await audit.recent(
            session, limit=LIST_LIMIT, before_id=before, actor=actor, action=action
        )
    older = entries[-1].id if len(entries) == LIST_LIMIT else None
    return _render(
        request,
        "audit.html",
        principal,
        entries=entries,
        older=older,
        actor=actor or "",
        action=action or "",
    )


@router.get("/help")
@_stoppable
async def roles_page(request: Request) -> Response:
    principal = await _who(request, "viewer")
    return _render(request, "help.html", principal, roles=WHAT_ROLES_MAY)


__all__ = ["chart", "router"]
