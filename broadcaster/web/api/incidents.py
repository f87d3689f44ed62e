"""``/api/v1/incidents``: declare, update, resolve, close, list, show, timeline."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from broadcaster import operations
from broadcaster.access.credentials import Principal
from broadcaster.followups.notify import visit_addresses
from broadcaster.incidents import service
from broadcaster.incidents.lifecycle import OPEN_STATUSES, TransitionError
from broadcaster.reports import FOLLOWUPS_SHOWN, incident_report
from broadcaster.store import Followup, Incident, IncidentUpdate
from broadcaster.store.models import IdempotencyKey
from broadcaster.web.api import idempotency
from broadcaster.web.api.schemas import (
    Cursor,
    DeclareIn,
    FollowupCursor,
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
from broadcaster.web.api.work import followup_page
from broadcaster.web.auth import require
from broadcaster.web.errors import (
    AUTHENTICATED,
    WITH_BODY,
    ApiError,
    from_value_error,
    responses,
)
from broadcaster.web.inputs import Moment
from broadcaster.web.state import state_of

router = APIRouter(prefix="/api/v1/incidents", tags=["incidents"], responses=AUTHENTICATED)

CHANGES = {**WITH_BODY, **responses(404, 409)}
"""What an update or a resolution may answer besides: an unknown incident, a closed one."""

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
    if isinstance(exc, service.ResolutionRefused):
        # One problem a missing field: a client can point at each (the body has them all).
        fields = [f"body.{name}" for name in exc.missing]
        return ApiError(
            422,
            str(exc),
            field=fields[0] if fields else "body",
            errors=[
                {"field": field, "message": f"the rules require {name} to resolve this incident"}
                for field, name in zip(fields, exc.missing, strict=True)
            ],
        )
    refused = from_value_error(exc)
    if refused.field == "body.scope":  # the body names its scope as components and regions
        refused.field = "body.components"
    return refused


def _idempotency(
    request: Request, principal: Principal, key: str | None, body: DeclareIn | UpdateIn
) -> idempotency.Idempotency:
    state = state_of(request)
    return idempotency.Idempotency(
        state.database,
        principal.caller,
        key,
        idempotency.fingerprint(request.method, request.url.path, body),
        state.clock.now(),
    )


Made = TypeVar("Made", Incident, IncidentUpdate)


async def _made(
    request: Request, response: Response, done: IdempotencyKey, model: type[Made]
) -> Made:
    """What the request with this key made (a replay), as it is now."""
    async with state_of(request).database.session() as session:
        row = await session.get(model, done.resource_id)
    if row is None:  # pragma: no cover - incidents and their timelines are not deleted
        raise ApiError(404, f"what this {idempotency.HEADER} made no longer exists")
    idempotency.replayed(response, done)
    return row


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
    "",
    response_model=IncidentOut,
    status_code=201,
    summary="Declare: the first round goes out",
    responses=WITH_BODY,
)
async def declare(
    body: DeclareIn,
    request: Request,
    response: Response,
    principal: Operator,
    idempotency_key: idempotency.Key = None,
) -> IncidentOut:
    state = state_of(request)
    once = _idempotency(request, principal, idempotency_key, body)
    if (done := await once.previous()) is not None:
        return IncidentOut.model_validate(await _made(request, response, done, Incident))
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
        incident = await operations.declare(
            state.actor(request, principal), decl, also=once.record("incident", 201)
        )
        state.wake()
    except (ValueError, LookupError) as exc:
        raise _refused(exc) from None
    except IntegrityError:
        # The same key at the same time: the other request acted; answer as it did.
        if (done := await once.previous()) is None:
            raise
        return IncidentOut.model_validate(await _made(request, response, done, Incident))
    return IncidentOut.model_validate(incident)


@router.get(
    "/{incident_id}",
    response_model=IncidentDetailOut,
    summary="One incident, in full",
    responses=responses(404),
)
async def show(incident_id: IncidentId, request: Request, principal: Viewer) -> IncidentDetailOut:
    state = state_of(request)
    try:
        report = await incident_report(
            state.database,
            incident_id,
            now=state.clock.now(),
            promise_grace=state.settings.schedule.promise_grace,
            followups_shown=FOLLOWUPS_SHOWN,
        )
    except LookupError as exc:
        raise _refused(exc) from None
    async with state.database.session() as session:
        postal = await visit_addresses(session, report.followups, principal)
    view = report.view
    promises = PromisesOut(overdue=report.promises_overdue)
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
        followups=[followup_out(f, principal, postal) for f in report.followups],
        followup_counts=report.followup_counts,
    )


@router.get(
    "/{incident_id}/timeline",
    response_model=list[TimelineEntryOut],
    summary="The timeline",
    responses=responses(404),
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
    responses=CHANGES,
)
async def post_update(
    incident_id: IncidentId,
    body: UpdateIn,
    request: Request,
    response: Response,
    principal: Operator,
    idempotency_key: idempotency.Key = None,
) -> TimelineEntryOut:
    state = state_of(request)
    once = _idempotency(request, principal, idempotency_key, body)
    if (done := await once.previous()) is not None:
        entry = await _made(request, response, done, IncidentUpdate)
        return TimelineEntryOut.model_validate(entry)
    update = service.UpdateRequest(
        message=body.message,
        status=body.status,
        severity=body.severity,
        cause_kind=body.cause_kind,
        cause=body.cause,
        author=principal.name,
        actions=body.actions,
        workaround=body.workaround,
        expected_resolution_at=_utc(body.expected_resolution_at),
        clear_expected_resolution=(
            "expected_resolution_at" in body.model_fields_set
            and body.expected_resolution_at is None
        ),
    )
    try:
        entry = await operations.post_update(
            state.actor(request, principal),
            incident_id,
            update,
            also=once.record("incident_update", 201),
        )
        state.wake()
    except (ValueError, LookupError) as exc:
        raise _refused(exc) from None
    except IntegrityError:
        if (done := await once.previous()) is None:
            raise
        entry = await _made(request, response, done, IncidentUpdate)
    return TimelineEntryOut.model_validate(entry)


@router.post(
    "/{incident_id}/resolve",
    response_model=TimelineEntryOut,
    status_code=201,
    summary="Resolve: the apology goes out; refused without what the rules require",
    responses=CHANGES,
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
    except (ValueError, LookupError) as exc:
        raise _refused(exc) from None
    return TimelineEntryOut.model_validate(entry)


@router.post(
    "/{incident_id}/close",
    response_model=IncidentOut,
    summary="Close a resolved incident; refused while follow-ups are open",
    responses=responses(404, 409),
)
async def close(incident_id: IncidentId, request: Request, principal: Operator) -> IncidentOut:
    state = state_of(request)
    try:
        incident = await operations.close(state.actor(request, principal), incident_id)
    except (ValueError, LookupError) as exc:
        raise _refused(exc) from None
    return IncidentOut.model_validate(incident)


@router.get(
    "/{incident_id}/followups",
    response_model=Page[FollowupOut],
    summary="Its follow-ups, soonest deadline first",
    responses=responses(404),
)
async def incident_followups(
    incident_id: IncidentId,
    request: Request,
    principal: Viewer,
    limit: Annotated[int, Query(ge=1, le=1000, description="page size")] = 200,
    cursor: FollowupCursor = None,
) -> Page[FollowupOut]:
    state = state_of(request)
    async with state.database.session() as session:
        if await session.get(Incident, incident_id) is None:
            raise _refused(service.IncidentNotFound(incident_id))
    query = select(Followup).where(Followup.incident_id == incident_id)
    return await followup_page(state, principal, query, limit, cursor)
