"""``/api/v1/incidents``: declare, update, resolve, close, list, show, timeline."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select

from broadcaster import operations
from broadcaster.access.credentials import Principal
from broadcaster.incidents import service
from broadcaster.incidents.lifecycle import OPEN_STATUSES, TransitionError
from broadcaster.reports import incident_report
from broadcaster.store import Incident, IncidentUpdate
from broadcaster.web.api.schemas import (
    Cursor,
    DeclareIn,
    FollowupOut,
    IncidentDetailOut,
    IncidentId,
    IncidentOut,
    Page,
    PromisesOut,
    ResolveIn,
    RoundOut,
    TimelineEntryOut,
    UpdateIn,
    followup_out,
    page_of,
)
from broadcaster.web.auth import require
from broadcaster.web.errors import ApiError, from_value_error
from broadcaster.web.inputs import Moment
from broadcaster.web.state import state_of

router = APIRouter(prefix="/api/v1/incidents", tags=["incidents"])

Viewer = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]
Limit = Annotated[int, Query(ge=1, le=500, description="page size")]
StatusFilter = Annotated[
    str | None,
    Query(
        pattern="^(open|investigating|identified|monitoring|resolved|closed)$",
        description="open (any of investigating, identified, monitoring) or one status",
    ),
]


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _refused(exc: Exception) -> ApiError:
    if isinstance(exc, service.IncidentNotFound):
        return ApiError(404, str(exc), field="path.incident_id")
    if isinstance(exc, LookupError):
        return ApiError(404, str(exc))
    if isinstance(exc, TransitionError):
        return ApiError(409, str(exc))
    return from_value_error(exc)


@router.get("", response_model=Page[IncidentOut], summary="List incidents, newest first")
async def list_incidents(
    request: Request,
    _: Viewer,
    status: StatusFilter = None,
    severity: Annotated[str | None, Query(pattern="^(minor|major|critical)$")] = None,
    source: Annotated[str | None, Query(max_length=64)] = None,
    q: Annotated[str | None, Query(max_length=200, description="words in the title")] = None,
    since: Annotated[Moment | None, Query(description="declared at or after")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[IncidentOut]:
    state = state_of(request)
    query = select(Incident).order_by(Incident.id.desc()).limit(limit + 1)
    if status == "open":
        query = query.where(Incident.status.in_(OPEN_STATUSES))
    elif status is not None:
        query = query.where(Incident.status == status)
    if severity is not None:
        query = query.where(Incident.severity == severity)
    if source is not None:
        query = query.where(Incident.source == source)
    if q:
        # Bound as a parameter, with LIKE's wildcards escaped: the filter is a substring.
        escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Incident.title.ilike(f"%{escaped}%", escape="\\"))
    if since is not None:
        query = query.where(Incident.created_at >= _utc(since))
    if cursor is not None:
        query = query.where(Incident.id < cursor)
    async with state.database.session() as session:
        rows = list((await session.execute(query)).scalars())
    return page_of(rows, limit, IncidentOut, lambda row: row.id)


@router.post(
    "", response_model=IncidentOut, status_code=201, summary="Declare: the first round goes out"
)
async def declare(body: DeclareIn, request: Request, principal: Operator) -> IncidentOut:
    state = state_of(request)
    decl = service.Declaration(
        title=body.title,
        severity=body.severity,
        message=body.message,
        components=body.components,
        regions=body.regions,
        status=body.status,
        cause_kind=body.cause_kind,
        cause=body.cause,
        author=principal.name,
        actions=body.actions,
        workaround=body.workaround,
        expected_resolution_at=_utc(body.expected_resolution_at),
    )
    try:
        incident = await operations.declare(state.actor(request, principal), decl)
        state.wake()
    except (ValueError, LookupError) as exc:
        raise _refused(exc) from None
    return IncidentOut.model_validate(incident)


@router.get("/{incident_id}", response_model=IncidentDetailOut, summary="One incident, in full")
async def show(incident_id: IncidentId, request: Request, principal: Viewer) -> IncidentDetailOut:
    state = state_of(request)
    try:
        report = await incident_report(state.database, incident_id)
    except LookupError as exc:
        raise _refused(exc) from None
    view = report.view
    promises = PromisesOut()
    for count in report.promises:
        if count.state in ("kept", "late", "open"):
            setattr(promises, count.state, count.count)
        if count.state == "late":
            promises.worst_lateness_seconds = count.worst_lateness_s
    rounds = [
        RoundOut.model_validate(r).model_copy(update={"deliveries": report.per_round.get(r.id, {})})
        for r in view.rounds
    ]
    return IncidentDetailOut(
        **IncidentOut.model_validate(view.incident).model_dump(),
        components=view.components,
        regions=view.regions,
        timeline=[TimelineEntryOut.model_validate(u) for u in view.updates],
        rounds=rounds,
        deliveries_by_channel=report.by_channel,
        promises=promises,
        next_update_due=report.next_update_due,
        followups=[followup_out(f, principal) for f in report.followups],
    )


@router.get(
    "/{incident_id}/timeline", response_model=list[TimelineEntryOut], summary="The timeline"
)
async def timeline(incident_id: IncidentId, request: Request, _: Viewer) -> list[TimelineEntryOut]:
    state = state_of(request)
    async with state.database.session() as session:
        if await session.get(Incident, incident_id) is None:
            raise _refused(service.IncidentNotFound(incident_id))
        rows = (
            await session.execute(
                select(IncidentUpdate)
                .where(IncidentUpdate.incident_id == incident_id)
                .order_by(IncidentUpdate.id)
            )
        ).scalars()
        return [TimelineEntryOut.model_validate(u) for u in rows]


@router.post(
    "/{incident_id}/updates",
    response_model=TimelineEntryOut,
    status_code=201,
    summary="Post an update: it goes out at once",
)
async def post_update(
    incident_id: IncidentId, body: UpdateIn, request: Request, principal: Operator
) -> TimelineEntryOut:
    state = state_of(request)
    update = service.UpdateRequest(
        message=body.message,
        status=body.status,
        cause_kind=body.cause_kind,
        cause=body.cause,
        author=principal.name,
        actions=body.actions,
        workaround=body.workaround,
        expected_resolution_at=_utc(body.expected_resolution_at),
    )
    try:
        entry = await operations.post_update(state.actor(request, principal), incident_id, update)
        state.wake()
    except (ValueError, LookupError) as exc:
        raise _refused(exc) from None
    return TimelineEntryOut.model_validate(entry)


@router.post(
    "/{incident_id}/resolve",
    response_model=TimelineEntryOut,
    status_code=201,
    summary="Resolve: the apology goes out; refused without what the rules require",
)
async def resolve(
    incident_id: IncidentId, body: ResolveIn, request: Request, principal: Operator
) -> TimelineEntryOut:
    state = state_of(request)
    update = service.UpdateRequest(
        message=body.message,
        cause_kind=body.cause_kind,
        cause=body.cause,
        author=principal.name,
        responsibility=body.responsibility,
        regret=body.regret,
        remedy=body.remedy,
        prevention=body.prevention,
        compensation=body.compensation,
    )
    try:
        entry = await operations.resolve(state.actor(request, principal), incident_id, update)
        state.wake()
    except service.ResolutionRefused as exc:
        raise ApiError(422, str(exc), field="body") from None
    except (ValueError, LookupError) as exc:
        raise _refused(exc) from None
    return TimelineEntryOut.model_validate(entry)


@router.post(
    "/{incident_id}/close",
    response_model=IncidentOut,
    summary="Close a resolved incident; refused while follow-ups are open",
)
async def close(incident_id: IncidentId, request: Request, principal: Operator) -> IncidentOut:
    state = state_of(request)
    try:
        incident = await operations.close(state.actor(request, principal), incident_id)
    except (ValueError, LookupError) as exc:
        raise _refused(exc) from None
    return IncidentOut.model_validate(incident)


@router.get("/{incident_id}/followups", response_model=list[FollowupOut], summary="Its follow-ups")
async def incident_followups(
    incident_id: IncidentId, request: Request, principal: Viewer
) -> list[FollowupOut]:
    state = state_of(request)
    try:
        report = await incident_report(state.database, incident_id)
    except LookupError as exc:
        raise _refused(exc) from None
    return [followup_out(f, principal) for f in report.followups]
