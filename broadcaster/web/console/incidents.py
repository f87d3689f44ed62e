"""The incident pages: the live list, declaring, one incident (its chart, promises and
what the rules ask of its resolution), updating, resolving and closing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import func, select
from starlette.datastructures import FormData

from broadcaster import operations, reports
from broadcaster.access.credentials import Principal
from broadcaster.compose.context import Offer, describe_offers, offers_of
from broadcaster.followups import service as followups
from broadcaster.incidents import lifecycle
from broadcaster.incidents import service as incidents
from broadcaster.store import Delivery, Incident, Round
from broadcaster.web.api.schemas import IncidentId
from broadcaster.web.console.common import (
    HEADERS,
    LIST_LIMIT,
    error_page,
    field_of,
    form_list,
    form_moment,
    form_optional,
    form_text,
    form_values,
    redirect,
    render,
    router,
    stoppable,
    who,
)
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
SENT_STATES = frozenset({"sent", "delivered", "undelivered"})
PENDING_STATES = frozenset({"pending", "sending"})

LIST_FILTERS = ("open", *lifecycle.STATUSES, "all")


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
@stoppable
async def incident_list(request: Request) -> Response:
    principal = await who(request, "viewer")
    status = _status_filter(request)
    rows = await _rows(state_of(request), status)
    return render(
        request, "incidents.html", principal, rows=rows, status=status, filters=LIST_FILTERS
    )


@router.get("/incidents/rows")
@stoppable
async def incident_rows(request: Request) -> Response:
    """The list's table body, fetched again every few seconds."""
    principal = await who(request, "viewer", fragment=True)
    rows = await _rows(state_of(request), _status_filter(request))
    return render(request, "_incident_rows.html", principal, rows=rows)


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
    try:
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
        incident = await operations.declare(state.actor(request, principal), declaration)
        state.wake()
    except operations.REFUSALS as exc:
        return _declare_form(request, principal, 422, form_values(form), str(exc))
    return redirect(f"/console/incidents/{incident.id}?ok=declared")


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
        is_open=lifecycle.is_open(live["incident"].status),
    )


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


def _update_request(form: FormData, author: str, *, resolution: bool) -> incidents.UpdateRequest:
    apology: dict[str, str | None] = {}
    if resolution:
        apology = {
            name: form_optional(form, name)
            for name in ("responsibility", "regret", "remedy", "prevention", "compensation")
        }
    return incidents.UpdateRequest(
        message=form_text(form, "message"),
        status=None if resolution else form_optional(form, "status"),
        cause_kind=form_optional(form, "cause_kind"),
        cause=form_optional(form, "cause"),
        author=author,
        actions=form_optional(form, "actions"),
        workaround=form_optional(form, "workaround"),
        expected_resolution_at=None if resolution else form_moment(form, "expected_resolution_at"),
        **apology,
    )


async def _change(request: Request, incident_id: int, *, resolution: bool) -> Response:
    """An update or the resolution from the incident page's forms."""
    principal = await who(request, "operator", write=True)
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
            values=form_values(form),
            error=str(exc),
        )
    done = "resolved" if resolution else "updated"
    return redirect(f"/console/incidents/{incident_id}?ok={done}")


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
