"""The incident pages: the live list, declaring, one incident (its chart, promises and
what the rules ask of its resolution), updating, resolving and closing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from starlette.datastructures import FormData

from broadcaster import operations, reports
from broadcaster.access.credentials import Principal
from broadcaster.compose.context import Offer, describe_offers, offers_of
from broadcaster.followups import service as followups
from broadcaster.incidents import lifecycle
from broadcaster.incidents import service as incidents
from broadcaster.store import Delivery, Incident, IncidentUpdate, Round
from broadcaster.web.api.schemas import IncidentId
from broadcaster.web.console import once
from broadcaster.web.console.common import (
    HEADERS,
    LIST_LIMIT,
    error_page,
    field_of,
    form_changed,
    form_list,
    form_moment,
    form_optional,
    form_text,
    form_values,
    parse_moment,
    redirect,
    render,
    router,
    stoppable,
    who,
)
from broadcaster.web.console.unreached import unreached_context
from broadcaster.web.errors import ApiError
from broadcaster.web.inputs import row_id
from broadcaster.web.state import WebState, state_of

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
SENT_STATES = frozenset({"sent", "delivered"})
PENDING_STATES = frozenset({"pending", "sending"})
FAILED_STATES = frozenset({"failed", "undelivered"})
"""Not sent: refused by the channel, or (undelivered) accepted and then rejected by the
carrier. Rerouted and cancelled deliveries are in none of the list's three columns."""

LIST_FILTERS = ("open", *lifecycle.STATUSES, "all")
REFUSED: tuple[type[Exception], ...] = (*operations.REFUSALS, ApiError)
"""A refused action, or a form's nonce used for another action (ApiError)."""


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


async def _incidents(state: WebState, status: str, before: int | None) -> list[Incident]:
    """A page of the list, newest first: at most ``LIST_LIMIT`` + 1 (one more says there
    are older ones), those with an id below ``before`` when given."""
    query = select(Incident).order_by(Incident.id.desc()).limit(LIST_LIMIT + 1)
    if status == "open":
        query = query.where(Incident.status.in_(lifecycle.OPEN_STATUSES))
    elif status != "all":
        query = query.where(Incident.status == status)
    if before is not None:
        query = query.where(Incident.id < before)
    async with state.database.session() as session:
        return list((await session.execute(query)).scalars())


async def _rows(state: WebState, found: list[Incident]) -> list[Row]:
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
            elif delivery_state in FAILED_STATES:
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


def _before(request: Request) -> int | None:
    """The list's cursor: the page shows incidents older (lower id) than this one."""
    return row_id(request.query_params.get("before", ""))


@router.get("/incidents")
@stoppable
async def incident_list(request: Request) -> Response:
    principal = await who(request, "viewer")
    status = _status_filter(request)
    before = _before(request)
    state = state_of(request)
    found = await _incidents(state, status, before)
    older = found[LIST_LIMIT - 1].id if len(found) > LIST_LIMIT else None
    return render(
        request,
        "incidents.html",
        principal,
        rows=await _rows(state, found[:LIST_LIMIT]),
        status=status,
        filters=LIST_FILTERS,
        before=before,
        older=older,
    )


@router.get("/incidents/rows")
@stoppable
async def incident_rows(request: Request) -> Response:
    """The list's table body, fetched again every few seconds."""
    principal = await who(request, "viewer", fragment=True)
    state = state_of(request)
    found = await _incidents(state, _status_filter(request), _before(request))
    return render(
        request, "_incident_rows.html", principal, rows=await _rows(state, found[:LIST_LIMIT])
    )


# --- Declare -----------------------------------------------------------------------------

DECLARE_DEFAULTS = {"severity": "major", "cause_kind": "unknown", "status": "investigating"}


def _declare_form(
    request: Request,
    principal: Principal,
    status: int = 200,
    values: Mapping[str, str] | None = None,
    error: str | None = None,
) -> HTMLResponse:
    return render(
        request,
        "declare.html",
        principal,
        status,
        values={**DECLARE_DEFAULTS, **(values or {})},
        error=error,
        error_field=field_of(error) if error else None,
        severities=lifecycle.SEVERITIES,
        cause_kinds=lifecycle.CAUSE_KINDS,
        statuses=lifecycle.OPEN_STATUSES,
        nonce=once.new(),
    )


@router.get("/incidents/new")
@stoppable
async def declare_page(request: Request) -> Response:
    principal = await who(request, "operator")
    return _declare_form(request, principal)


@router.post("/incidents")
@stoppable
async def declare(request: Request) -> Response:
    principal = await who(request, "operator", write=True)
    state = state_of(request)
    form = await request.form()
    key = once.key(state, principal, once.of(form), request.url.path, form)
    try:
        done = await key.previous()
        if done is None:
            declaration = incidents.Declaration(
                title=form_text(form, "title"),
                severity=form_text(form, "severity"),
                message=form_text(form, "message"),
                components=form_list(form, "components"),
                regions=form_list(form, "regions"),
                status=form_text(form, "status") or "investigating",
                cause_kind=form_text(form, "cause_kind") or "unknown",
                cause=form_optional(form, "cause"),
                author=principal.name,
                actions=form_optional(form, "actions"),
                workaround=form_optional(form, "workaround"),
                expected_resolution_at=form_moment(form, "expected_resolution_at"),
            )
            incident = await operations.declare(
                state.actor(request, principal), declaration, also=key.record("incident", 303)
            )
            state.wake()
            return redirect(f"/console/incidents/{incident.id}?ok=declared")
    except operations.REFUSALS as exc:
        return _declare_form(request, principal, 422, form_values(form), str(exc))
    except ApiError as exc:
        return _declare_form(request, principal, 422, form_values(form), exc.message)
    except IntegrityError:
        # The same form submitted twice at once: the other submit declared it.
        if (done := await key.previous()) is None:
            raise
    # Submitted again: show what the first submit declared.
    return redirect(f"/console/incidents/{done.resource_id}?ok=declared")


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


def columns(by_channel: Mapping[str, Mapping[str, int]]) -> list[str]:
    """The counts table's columns: every known state, and any other one present, so that
    each row adds up to its bar's total."""
    present = {state for states in by_channel.values() for state in states}
    return [*CHART_STATES, *sorted(present - set(CHART_STATES))]


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
            decision = await state.escalation.decide(
                session, incident, state.clock.now(), resolving=True
            )
        except Exception as exc:  # the page must still show; the service decides again
            return Requirements(error=f"the rules could not be evaluated: {exc}")
    if decision is None:
        return Requirements()
    return Requirements(
        sorted(decision.required_for_resolution),
        list(decision.matched_rules),
        [
            describe_offers([Offer(c.kind, str(c.amount), c.currency, c.rule)], rules=True)
            for c in decision.compensation
        ],
    )


async def _live_context(state: WebState, incident_id: int) -> dict[str, Any]:
    now = state.clock.now()
    report = await reports.incident_report(
        state.database,
        incident_id,
        now=now,
        promise_grace=state.settings.schedule.promise_grace,
        followups_shown=reports.FOLLOWUPS_SHOWN,
    )
    incident = report.view.incident
    due = report.next_update_due
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
        "columns": columns(report.by_channel),
        "promise_counts": {
            s: (promises[s].count if s in promises else 0) for s in ("kept", "late", "open")
        },
        "worst_late_s": late.worst_lateness_s if late else None,
        # A "next update by" already broken, before a round settles it as late: said in
        # words, as /metrics counts it (broadcaster_promises_overdue).
        "overdue_promises": report.promises_overdue,
        "overdue_s": (
            (now - report.overdue_since).total_seconds() if report.overdue_since else None
        ),
        "grace_s": state.settings.schedule.promise_grace.total_seconds(),
        "next_update_late_s": (
            (now - due).total_seconds()
            if due is not None and now - due > state.settings.schedule.promise_grace
            else None
        ),
        "open_followups": sum(
            n for s, n in report.followup_counts.items() if s in followups.OPEN_STATES
        ),
        "followup_counts": report.followup_counts,
        "followups_total": sum(report.followup_counts.values()),
        # The compensation the rules granted at a resolution, as staff read it (customers
        # read it in their own language), by timeline entry.
        "offers": {
            u.id: describe_offers(offers_of(u.compensation_offers), rules=True)
            for u in report.view.updates
            if u.compensation_offers
        },
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
        raise error_page(request, principal, 404, f"There is no incident {incident_id}.") from None
    needs = await _requirements(state, incident_id)
    missing: list[str] = []
    if form == "resolve" and error:
        missing = [f for f in needs.fields if not (values or {}).get(f)]
    incident = live["incident"]
    is_open = lifecycle.is_open(incident.status)
    # The form the refused action came from may no longer be shown (another operator
    # resolved or closed the incident meanwhile): what was typed is shown with the error.
    form_hidden = (form == "update" and incident.status == "closed") or (
        form == "resolve" and not is_open
    )
    typed = [
        (name, value)
        for name, value in (values or {}).items()
        if form_hidden and value and name not in NOT_TYPED and not name.endswith("_was")
    ]
    return render(
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
        error_field=field_of(error) if error else None,
        cause_kinds=lifecycle.CAUSE_KINDS,
        statuses=lifecycle.OPEN_STATUSES,
        severities=lifecycle.SEVERITIES,
        is_open=is_open,
        typed=typed,
        current=_current(live["report"].view.updates, incident),
        nonces={"update": once.new(), "resolve": once.new()},  # one per form
        **await unreached_context(state, principal, incident_id),
    )


NOT_TYPED = frozenset({"csrf_token", once.FIELD})
MOMENT_FORMAT = "%Y-%m-%dT%H:%M:%S"
"""A ``datetime-local`` input's value (with seconds: the form shows a time as it is kept)."""


def _current(updates: list[IncidentUpdate], incident: Incident) -> dict[str, str]:
    """What the update form shows to start with: what the latest entry says, so an emptied
    field withdraws it (the service clears a text given empty)."""
    last = next((u for u in reversed(updates) if u.kind != "closed"), None)
    expected = last.expected_resolution_at if last else None
    return {
        "severity": incident.severity,
        "cause_kind": last.cause_kind if last else "unknown",
        "cause": (last.cause if last else None) or "",
        "actions": (last.actions if last else None) or "",
        "workaround": (last.workaround if last else None) or "",
        "expected_resolution_at": (
            expected.astimezone(UTC).strftime(MOMENT_FORMAT) if expected else ""
        ),
    }


@router.get("/incidents/{incident_id}")
@stoppable
async def incident_page(incident_id: IncidentId, request: Request) -> Response:
    principal = await who(request, "viewer")
    return await _incident_page(request, principal, incident_id)


@router.get("/incidents/{incident_id}/live")
@stoppable
async def incident_live(incident_id: IncidentId, request: Request) -> Response:
    """The incident page's live part (status, rounds, chart, promises, follow-ups)."""
    principal = await who(request, "viewer", fragment=True)
    try:
        live = await _live_context(state_of(request), incident_id)
    except incidents.IncidentNotFound:
        return Response("no such incident", 404, headers=HEADERS)
    return render(request, "_incident_live.html", principal, **live)


def _resolution_request(form: FormData, author: str) -> incidents.UpdateRequest:
    """The resolve form: its empty fields keep what the last update said (cause) or give
    nothing (the apology)."""
    return incidents.UpdateRequest(
        message=form_text(form, "message"),
        cause_kind=form_optional(form, "cause_kind"),
        cause=form_optional(form, "cause"),
        author=author,
        responsibility=form_optional(form, "responsibility"),
        regret=form_optional(form, "regret"),
        remedy=form_optional(form, "remedy"),
        prevention=form_optional(form, "prevention"),
        compensation=form_optional(form, "compensation"),
    )


def _update_request(form: FormData, author: str) -> incidents.UpdateRequest:
    """The update form, which shows the current values (:func:`_current`) with what it
    showed in ``<name>_was``: a field left as shown keeps the value (whatever it is by now),
    a changed one replaces it, an emptied text withdraws it."""
    expected = form_changed(form, "expected_resolution_at")
    return incidents.UpdateRequest(
        message=form_text(form, "message"),
        status=form_optional(form, "status"),
        severity=form_changed(form, "severity") or None,
        cause_kind=form_changed(form, "cause_kind") or None,
        cause=form_changed(form, "cause"),
        author=author,
        actions=form_changed(form, "actions"),
        workaround=form_changed(form, "workaround"),
        expected_resolution_at=parse_moment("expected_resolution_at", expected or ""),
        clear_expected_resolution=expected == "",  # emptied: the time told no longer holds
    )


async def _change(request: Request, incident_id: int, *, resolution: bool) -> Response:
    """An update or the resolution from the incident page's forms; one submitted again (its
    nonce made it already) is answered as the first one was."""
    principal = await who(request, "operator", write=True)
    state = state_of(request)
    form = await request.form()
    key = once.key(state, principal, once.of(form), request.url.path, form)
    ok = f"/console/incidents/{incident_id}?ok={'resolved' if resolution else 'updated'}"
    try:
        if await key.previous() is not None:
            return redirect(ok)
        actor = state.actor(request, principal)
        made = key.record("incident_update", 303)
        if resolution:
            await operations.resolve(
                actor, incident_id, _resolution_request(form, principal.name), also=made
            )
        else:
            await operations.post_update(
                actor, incident_id, _update_request(form, principal.name), also=made
            )
        state.wake()
    except REFUSED as exc:
        return await _incident_page(
            request,
            principal,
            incident_id,
            422,
            form="resolve" if resolution else "update",
            values=form_values(form),
            error=exc.message if isinstance(exc, ApiError) else str(exc),
        )
    except IntegrityError:
        # The same form submitted twice at once: the other submit made it.
        if await key.previous() is None:
            raise
    return redirect(ok)


@router.post("/incidents/{incident_id}/update")
@stoppable
async def post_update(incident_id: IncidentId, request: Request) -> Response:
    return await _change(request, incident_id, resolution=False)


@router.post("/incidents/{incident_id}/resolve")
@stoppable
async def resolve(incident_id: IncidentId, request: Request) -> Response:
    return await _change(request, incident_id, resolution=True)


@router.post("/incidents/{incident_id}/close")
@stoppable
async def close(incident_id: IncidentId, request: Request) -> Response:
    principal = await who(request, "operator", write=True)
    state = state_of(request)
    try:
        await operations.close(state.actor(request, principal), incident_id)
    except operations.REFUSALS as exc:
        return await _incident_page(
            request, principal, incident_id, 422, form="close", error=str(exc)
        )
    return redirect(f"/console/incidents/{incident_id}?ok=closed")
