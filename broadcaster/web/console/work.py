"""The follow-up queue, the rules page (and its reload), the audit log and the roles' help."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from starlette.datastructures import FormData, QueryParams

from broadcaster import operations
from broadcaster.access import audit
from broadcaster.access.credentials import Principal
from broadcaster.access.roles import WHAT_ROLES_MAY
from broadcaster.config.settings import Settings
from broadcaster.escalation.holder import load_file
from broadcaster.followups import rights
from broadcaster.followups import service as followups
from broadcaster.followups.directory import Directory
from broadcaster.followups.notify import NO_POSTAL_ADDRESS, visit_addresses
from broadcaster.store import Followup
from broadcaster.web.api.schemas import FollowupId
from broadcaster.web.console.common import (
    LIST_LIMIT,
    form_text,
    form_values,
    redirect,
    render,
    router,
    safe_next,
    stoppable,
    who,
)
from broadcaster.web.inputs import row_id
from broadcaster.web.state import WebState, state_of
from rules import RulesError

FOLLOWUP_FILTERS = ("open", "claimed", "done", "waived", "all")
RULES_TEXT_LIMIT = 200_000


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
    params = request.query_params
    if values and values.get("back"):  # a refused action: the queue as it was shown
        params = QueryParams(urlsplit(safe_next(values["back"])).query)
    chosen = params.get("state", "open")
    if chosen not in FOLLOWUP_FILTERS:
        chosen = "open"
    incident = row_id(params.get("incident", ""))
    # Bounded: the page is rendered whole at each visit, and a round of a large incident may
    # force thousands of follow-ups.
    tasks = await _tasks(state, chosen, incident, QUEUE_SHOWN + 1)
    more = len(tasks) > QUEUE_SHOWN
    tasks = tasks[:QUEUE_SHOWN]
    # The task the refused action was for may not be listed any more (someone else recorded
    # it and the page lists open ones) or have lost its form: what was typed is shown with
    # the error all the same.
    listed = {t.id: t for t in tasks}
    form_hidden = task is not None and (
        task not in listed or listed[task].state not in followups.OPEN_STATES
    )
    typed = [
        (name, value)
        for name, value in (values or {}).items()
        if form_hidden and value and name in TYPED_FIELDS
    ]
    directory = _directory(state)
    admin = principal.role == "admin"
    may_waive = {t.id: admin or directory.may_waive(principal.name, t.owner) for t in tasks}
    # The Claim button only where the claim would be allowed (rights.may_claim, an overdue
    # claimed task's take-over included): the server refuses the others all the same.
    # Where a visit goes: the customers' postal addresses, for those who may read customers.
    async with state.database.session() as session:
        told = await followups.escalation_targets(session, [t.id for t in tasks])
        postal = await visit_addresses(session, tasks, principal)
    now = state.clock.now()
    may_claim = {
        t.id: rights.may_claim(t, principal.name, directory, admin=admin, told=told[t.id], now=now)
        for t in tasks
    }
    return render(
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
        postal=postal,
        no_postal=NO_POSTAL_ADDRESS,
        task=task,
        values=dict(values or {}),
        error=error,
        more=more,
        shown=QUEUE_SHOWN,
        incident=incident,
        typed=typed,
        back=_back(chosen, incident),
    )


TYPED_FIELDS = ("outcome", "note", "reason")
"""What an operator types into a follow-up's forms."""


def _back(chosen: str, incident: int | None) -> str:
    """Where an action on the queue returns to: the queue as it was filtered."""
    query = f"state={chosen}" + (f"&incident={incident}" if incident is not None else "")
    return f"/console/followups?{query}"


async def _tasks(state: WebState, chosen: str, incident: int | None, limit: int) -> list[Followup]:
    """Follow-ups soonest deadline first, of one state (``open``: open or claimed, ``all``)
    and of one incident when given."""
    query = select(Followup).order_by(Followup.deadline_at, Followup.id).limit(limit)
    if chosen == "open":
        query = query.where(Followup.state.in_(followups.OPEN_STATES))
    elif chosen != "all":
        query = query.where(Followup.state == chosen)
    if incident is not None:
        query = query.where(Followup.incident_id == incident)
    async with state.database.session() as session:
        return list((await session.execute(query)).scalars())


QUEUE_SHOWN = 200
"""Follow-ups the console's queue shows at most: those due soonest."""


@router.get("/followups")
@stoppable
async def followup_queue(request: Request) -> Response:
    principal = await who(request, "viewer")
    return await _queue(request, principal)


async def _followup_action(
    request: Request,
    followup_id: int,
    ok: str,
    act: Callable[[operations.Actor, FormData], Awaitable[Followup]],
) -> Response:
    principal = await who(request, "operator", write=True)
    state = state_of(request)
    form = await request.form()
    try:
        back = form_text(form, "back")  # read first: a bad one refuses the action, not after it
        await act(state.actor(request, principal), form)
    except operations.REFUSALS as exc:
        return await _queue(
            request, principal, 422, task=followup_id, values=form_values(form), error=str(exc)
        )
    target = safe_next(back) if back else "/console/followups"
    joiner = "&" if "?" in target else "?"
    return redirect(f"{target}{joiner}ok={ok}")


@router.post("/followups/{followup_id}/claim")
@stoppable
async def claim(followup_id: FollowupId, request: Request) -> Response:
    async def act(actor: operations.Actor, form: FormData) -> Followup:
        return await operations.claim_followup(actor, followup_id)

    return await _followup_action(request, followup_id, "claimed", act)


@router.post("/followups/{followup_id}/done")
@stoppable
async def done(followup_id: FollowupId, request: Request) -> Response:
    async def act(actor: operations.Actor, form: FormData) -> Followup:
        return await operations.followup_done(
            actor, followup_id, form_text(form, "outcome"), form_text(form, "note")
        )

    return await _followup_action(request, followup_id, "done", act)


@router.post("/followups/{followup_id}/waive")
@stoppable
async def waive(followup_id: FollowupId, request: Request) -> Response:
    async def act(actor: operations.Actor, form: FormData) -> Followup:
        return await operations.waive_followup(actor, followup_id, form_text(form, "reason"))

    return await _followup_action(request, followup_id, "waived", act)


# --- Rules -------------------------------------------------------------------------------


def _read_and_check(path: Path, settings: Settings) -> tuple[str | None, list[str], bool]:
    """The rules file's text (cut for the page), its problems, and whether it was checked."""
    try:
        # Shown even when not UTF-8 (load_file below says so, with the line).
        text = path.read_bytes().decode("utf-8", errors="replace")[:RULES_TEXT_LIMIT]
    except OSError as exc:
        return None, [f"{path}: cannot read: {exc.strerror or exc}"], False
    try:
        load_file(path, settings)
    except RulesError as exc:
        return text, list(exc.problems), True
    return text, [], True


async def _rules_page(
    request: Request, principal: Principal, status: int = 200, *, error: str | None = None
) -> HTMLResponse:
    state = state_of(request)
    holder = state.rules
    path = holder.path if holder is not None else state.settings.rules.path
    text: str | None = None
    problems: list[str] = []
    checked = False
    if path is not None:
        # Parsing and checking the file is CPU work (most of a second for a large file): off
        # the event loop, so rounds, dispatch and other requests go on meanwhile.
        text, problems, checked = await asyncio.to_thread(_read_and_check, path, state.settings)
    active = holder.current if holder is not None else None
    return render(
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
@stoppable
async def rules_page(request: Request) -> Response:
    principal = await who(request, "viewer")
    return await _rules_page(request, principal)


@router.post("/rules/reload")
@stoppable
async def rules_reload(request: Request) -> Response:
    principal = await who(request, "admin", write=True)
    state = state_of(request)
    try:
        ok = await operations.reload_rules(state.actor(request, principal), state.rules)
    except operations.NoRulesFile:
        return await _rules_page(request, principal, 409, error="No rules file is configured.")
    if not ok:
        return await _rules_page(
            request,
            principal,
            422,
            error="The file has problems; the previous rules stay active.",
        )
    return redirect("/console/rules?ok=reloaded")


# --- Audit log ---------------------------------------------------------------------------


@router.get("/audit")
@stoppable
async def audit_page(request: Request) -> Response:
    principal = await who(request, "admin")
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
    return render(
        request,
        "audit.html",
        principal,
        entries=entries,
        older=older,
        actor=actor or "",
        action=action or "",
    )


@router.get("/help")
@stoppable
async def roles_page(request: Request) -> Response:
    principal = await who(request, "viewer")
    return render(request, "help.html", principal, roles=WHAT_ROLES_MAY)
