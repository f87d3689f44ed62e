"""``/api/v1``: deliveries, follow-ups, rules, the audit log, and who the caller is."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import Select, and_, func, or_, select

from broadcaster import operations
from broadcaster.access import audit
from broadcaster.access.credentials import Principal
from broadcaster.clock import Clock
from broadcaster.escalation.explaining import explain_incident
from broadcaster.escalation.holder import load_file, load_text
from broadcaster.followups import service as followups
from broadcaster.followups.checks import owner_warnings
from broadcaster.followups.notify import visit_addresses
from broadcaster.reports import by_channel
from broadcaster.store import Delivery, Followup, Incident
from broadcaster.store.ids import MAX_ID
from broadcaster.web.api.schemas import (
    AuditOut,
    ClaimIn,
    Cursor,
    DeliveryOut,
    DoneIn,
    ExplainOut,
    FollowupCursor,
    FollowupId,
    FollowupOut,
    IdFilter,
    MeOut,
    Page,
    ReloadOut,
    RulesCheckIn,
    RulesCheckOut,
    RulesOut,
    WaiveIn,
    after_followup,
    followup_cursor,
    followup_out,
    page_of,
)
from broadcaster.web.auth import require
from broadcaster.web.errors import (
    AUTHENTICATED,
    WITH_BODY,
    ApiError,
    from_value_error,
    responses,
)
from broadcaster.web.state import WebState, state_of
from rules import RulesError

router = APIRouter(prefix="/api/v1", responses=AUTHENTICATED)

TASK = {**WITH_BODY, **responses(404, 409)}
"""What a follow-up action may answer besides: an unknown task, one not open to it."""

Viewer = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]
Admin = Annotated[Principal, Depends(require("admin"))]
Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
Word = Annotated[str | None, Query(max_length=64)]


@router.get("/me", response_model=MeOut, tags=["access"], summary="Who the caller is")
async def me(principal: Viewer) -> MeOut:
    return MeOut(actor=principal.actor, role=principal.role)


# --- Deliveries --------------------------------------------------------------------------


@router.get(
    "/deliveries",
    response_model=Page[DeliveryOut],
    tags=["deliveries"],
    summary="Deliveries by incident, customer, channel and state (newest first)",
)
async def deliveries(
    request: Request,
    _: Operator,
    incident_id: IdFilter = None,
    customer_id: Word = None,
    channel: Annotated[str | None, Query(max_length=32)] = None,
    state: Annotated[
        str | None,
        Query(pattern="^(pending|sending|sent|failed|delivered|undelivered|rerouted|cancelled)$"),
    ] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[DeliveryOut]:
    web = state_of(request)
    query = select(Delivery).order_by(Delivery.id.desc()).limit(limit + 1)
    if incident_id is not None:
        query = query.where(Delivery.incident_id == incident_id)
    if customer_id is not None:
        query = query.where(Delivery.customer_id == customer_id)
    if channel is not None:
        query = query.where(Delivery.channel == channel)
    if state is not None:
        query = query.where(Delivery.state == state)
    if cursor is not None:
        query = query.where(Delivery.id < cursor)
    async with web.database.session() as session:
        rows = list((await session.execute(query)).scalars())
    return page_of(rows, limit, DeliveryOut, lambda row: row.id)


@router.get(
    "/deliveries/counts",
    response_model=dict[str, dict[str, int]],
    tags=["deliveries"],
    summary="Delivery counts: channel → state → count (no addresses)",
)
async def delivery_counts(
    request: Request,
    _: Viewer,
    incident_id: IdFilter = None,
) -> dict[str, dict[str, int]]:
    query = select(Delivery.channel, Delivery.state, func.count()).group_by(
        Delivery.channel, Delivery.state
    )
    if incident_id is not None:
        query = query.where(Delivery.incident_id == incident_id)
    out: dict[str, dict[str, int]] = {}
    async with state_of(request).database.session() as session:
        kept = (
            None
            if incident_id is None
            else (
                await session.execute(
                    select(Incident.delivery_counts).where(Incident.id == incident_id)
                )
            ).scalar_one_or_none()
        )
        if kept is not None:  # purged under retention.messages: the counts it kept
            return by_channel(kept)
        for channel, state, count in await session.execute(query):
            out.setdefault(channel, {})[state] = count
    return out


# --- Follow-ups --------------------------------------------------------------------------


@router.get(
    "/followups",
    response_model=Page[FollowupOut],
    tags=["followups"],
    summary="The follow-up queue, soonest deadline first",
)
async def list_followups(
    request: Request,
    principal: Viewer,
    state: Annotated[str, Query(pattern="^(open|claimed|done|waived|all)$")] = "open",
    owner: Word = None,
    incident_id: IdFilter = None,
    limit: Limit = 200,
    cursor: FollowupCursor = None,
) -> Page[FollowupOut]:
    query = select(Followup)
    if state == "open":
        query = query.where(Followup.state.in_(followups.OPEN_STATES))
    elif state != "all":
        query = query.where(Followup.state == state)
    if owner is not None:
        query = query.where(followups.on_desk_of(owner))
    if incident_id is not None:
        query = query.where(Followup.incident_id == incident_id)
    return await followup_page(state_of(request), principal, query, limit, cursor)


async def followup_page(
    web: WebState,
    principal: Principal,
    query: Select[Any],
    limit: int,
    cursor: str | None,
) -> Page[FollowupOut]:
    """One page of the follow-ups ``query`` selects, soonest deadline first (then by id),
    after ``cursor``, as ``principal`` may read them."""
    query = query.order_by(Followup.deadline_at, Followup.id).limit(limit + 1)
    if cursor is not None:
        after = after_followup(cursor)
        if after is None:
            raise ApiError(422, "query.cursor: not a cursor this API gave", field="query.cursor")
        deadline, task_id = after
        query = query.where(
            or_(
                Followup.deadline_at > deadline,
                and_(Followup.deadline_at == deadline, Followup.id > task_id),
            )
        )
    async with web.database.session() as session:
        rows = list((await session.execute(query)).scalars())
        postal = await visit_addresses(session, rows[:limit], principal)
    return page_of(
        rows,
        limit,
        FollowupOut,
        followup_cursor,
        lambda task: followup_out(task, principal, postal),
    )


async def _task_out(web: WebState, principal: Principal, task: Followup) -> FollowupOut:
    """A follow-up an action changed, as the queue shows it (a visit's address included)."""
    async with web.database.session() as session:
        postal = await visit_addresses(session, [task], principal)
    return followup_out(task, principal, postal)


def _followup_error(exc: Exception) -> ApiError:
    if isinstance(exc, LookupError):
        return ApiError(404, str(exc), field="path.followup_id")
    message = str(exc)
    if "is already" in message or ", not open" in message:
        return ApiError(409, message)
    if message.startswith(("only a manager", "only its owner", "staff: only an admin")):
        return ApiError(403, message)
    return from_value_error(exc)


@router.post(
    "/followups/{followup_id}/claim",
    response_model=FollowupOut,
    tags=["followups"],
    summary="Claim a follow-up: you will make the call or visit",
    responses=TASK,
)
async def claim(
    followup_id: FollowupId, request: Request, principal: Operator, body: ClaimIn | None = None
) -> FollowupOut:
    web = state_of(request)
    actor = web.actor(request, principal)
    try:
        task = await operations.claim_followup(actor, followup_id, body.staff if body else None)
    except (ValueError, LookupError) as exc:
        raise _followup_error(exc) from None
    return await _task_out(web, principal, task)


@router.post(
    "/followups/{followup_id}/done",
    response_model=FollowupOut,
    tags=["followups"],
    summary="Record the outcome of a follow-up",
    responses=TASK,
)
async def done(
    followup_id: FollowupId, body: DoneIn, request: Request, principal: Operator
) -> FollowupOut:
    web = state_of(request)
    actor = web.actor(request, principal)
    try:
        task = await operations.followup_done(
            actor, followup_id, body.outcome, body.note, body.staff
        )
    except (ValueError, LookupError) as exc:
        raise _followup_error(exc) from None
    return await _task_out(web, principal, task)


@router.post(
    "/followups/{followup_id}/waive",
    response_model=FollowupOut,
    tags=["followups"],
    summary="Waive a follow-up (a manager of its owner, or an admin)",
    responses=TASK,
)
async def waive(
    followup_id: FollowupId, body: WaiveIn, request: Request, principal: Operator
) -> FollowupOut:
    web = state_of(request)
    actor = web.actor(request, principal)
    try:
        task = await operations.waive_followup(actor, followup_id, body.reason, body.staff)
    except (ValueError, LookupError) as exc:
        raise _followup_error(exc) from None
    return await _task_out(web, principal, task)


# --- Rules -------------------------------------------------------------------------------


def _rules_out(web: WebState) -> RulesOut:
    holder = web.rules
    current = holder.current if holder else None
    return RulesOut(
        path=str(holder.path) if holder and holder.path else None,
        loaded=current is not None,
        policies=len(current.policies) if current else 0,
        rules=len(current.rules) if current else 0,
        digest=current.digest if current else None,
        reloads=holder.reloads if holder else 0,
        last_reload_error=holder.error if holder else None,
    )


@router.get("/rules", response_model=RulesOut, tags=["rules"], summary="The active rules")
async def rules_status(request: Request, _: Viewer) -> RulesOut:
    return _rules_out(state_of(request))


@router.post(
    "/rules/check",
    response_model=RulesCheckOut,
    tags=["rules"],
    summary="Check rules YAML (or the configured file) against channels and staff",
    responses=WITH_BODY,
)
async def rules_check(body: RulesCheckIn, request: Request, _: Operator) -> RulesCheckOut:
    web = state_of(request)
    settings = web.settings
    try:
        # Parsing is CPU work: off the event loop, so other requests keep being served.
        if body.text is not None:
            # The check behind start-up and reloads, so what passes here loads there.
            ruleset = await asyncio.to_thread(load_text, body.text, "<request>", settings)
        elif settings.rules.path is not None:
            ruleset = await asyncio.to_thread(load_file, settings.rules.path, settings)
        else:
            raise ApiError(
                422, "no rules file is configured; send the YAML as text", field="body.text"
            )
    except RulesError as exc:
        return RulesCheckOut(ok=False, problems=list(exc.problems))
    return RulesCheckOut(
        ok=True,
        problems=[],
        policies=len(ruleset.policies),
        rules=len(ruleset.rules),
        warnings=owner_warnings(ruleset, settings.staff),
    )


@router.post(
    "/rules/reload",
    response_model=ReloadOut,
    tags=["rules"],
    summary="Reload the rules file now (a bad file keeps the active rules)",
    responses=responses(409),
)
async def rules_reload(request: Request, principal: Admin) -> ReloadOut:
    web = state_of(request)
    try:
        reloaded = await operations.reload_rules(web.actor(request, principal), web.rules)
    except operations.NoRulesFile as exc:
        raise ApiError(409, str(exc)) from None
    return ReloadOut(reloaded=reloaded, error=web.rules.error if web.rules else None)


@router.get(
    "/rules/explain",
    response_model=ExplainOut,
    tags=["rules"],
    summary="Why the rules decide what they do for an incident (and a customer)",
    responses=responses(404, 409),
)
async def rules_explain(
    request: Request,
    _: Operator,
    incident_id: Annotated[int, Query(ge=1, le=MAX_ID)],
    customer_id: Word = None,
) -> ExplainOut:
    web = state_of(request)
    ruleset = web.rules.current if web.rules else None
    if ruleset is None:
        raise ApiError(409, "no rules are loaded (rules.path)")
    clock: Clock = web.clock
    try:
        explanation, plan = await explain_incident(
            web.database, ruleset, incident_id, customer_id, clock.now()
        )
    except LookupError as exc:
        raise ApiError(404, str(exc)) from None
    decision = explanation.decision
    return ExplainOut(
        text=explanation.render_text(),
        policy=plan.policy if plan else decision.policy,
        matched_rules=list(decision.matched_rules),
        required_for_resolution=sorted(decision.required_for_resolution),
    )


# --- Audit -------------------------------------------------------------------------------


@router.get(
    "/audit",
    response_model=Page[AuditOut],
    tags=["access"],
    summary="The audit log, newest first",
)
async def audit_log(
    request: Request,
    _: Admin,
    actor: Annotated[str | None, Query(max_length=120)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[AuditOut]:
    async with state_of(request).database.session() as session:
        rows = await audit.recent(
            session, limit=limit + 1, before_id=cursor, actor=actor, action=action
        )
    return page_of(rows, limit, AuditOut, lambda row: row.id, audit.as_dict)
