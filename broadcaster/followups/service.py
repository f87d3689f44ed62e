"""Follow-up tasks: created idempotently from the rules, claimed, done or waived; reminders
and escalation when they run late.

One task per (incident, customer, rule). Its owner is named when it is created (the
customer's account manager, a group's on-call person, ...); when the rule names nobody for
the customer, the first escalation link that names someone, else ``staff.unassigned_owner``,
else the directory's first admin owns it, and with none of them it is kept unowned (said
at error level): a forced follow-up is never dropped. Tasks remind the owner every
``reminder_every`` until the deadline, then escalate along the rule's chain (or, when the
rule names none, up the owner's managers), one link every ``escalation_interval``, always to
someone other than the owner. Claiming a task makes the claimer its owner, so only those
the rules made responsible for it, a manager of the owner or an admin may; once overdue, a
claimed task may be taken over by those it escalated to, a manager of its owner or an admin,
who may also record its outcome (:mod:`broadcaster.followups.rights`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from broadcaster.clock import Clock
from broadcaster.followups.directory import Directory, NoOwner, OnlyThem
from broadcaster.followups.rights import (
    claim_refusal,
    may_claim,
    may_record,
    owner_name,
    record_refusal,
)
from broadcaster.store import (
    Also,
    Customer,
    Database,
    Followup,
    FollowupEvent,
    Incident,
    StaffNotice,
)
from rules import FollowupRequirement, StaffRef

OUTCOMES = ("reached", "voicemail", "declined", "unreachable")
OPEN_STATES = ("open", "claimed")
log = logging.getLogger("broadcaster.followups")
DEFAULT_ESCALATION_INTERVAL = timedelta(hours=1)
MAX_ESCALATIONS = 3
NOBODY = ""
"""The owner of a forced follow-up for whom nobody could be found (see :func:`owner_for`):
kept, so that its incident cannot be closed without it, for an admin to claim or waive."""


class FollowupError(ValueError):
    """An operation the task's state or the caller's role does not allow."""


@dataclass(frozen=True)
class Notice:
    """Somebody must be told about a task: ``assigned``, ``reminder`` or ``escalation``."""

    followup_id: int
    staff: str
    kind: str


def queue_notice(
    session: AsyncSession,
    *,
    key: str,
    kind: str,
    staff: str,
    incident_id: int,
    now: datetime,
    followup_id: int | None = None,
    round_number: int | None = None,
) -> None:
    """Queue a notice to ``staff`` in the caller's transaction: it is sent (and tried again
    when sending fails) by :func:`broadcaster.followups.notify.send_due_notices`. ``key``
    names it once: the same notice is never queued twice."""
    session.add(
        StaffNotice(
            key=key,
            kind=kind,
            staff=staff,
            incident_id=incident_id,
            followup_id=followup_id,
            round_number=round_number,
            state="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )


def _queue(session: AsyncSession, task: Followup, notice: Notice, key: str, now: datetime) -> None:
    queue_notice(
        session,
        key=key,
        kind=notice.kind,
        staff=notice.staff,
        incident_id=task.incident_id,
        now=now,
        followup_id=task.id,
    )


async def create_for_customer(
    session: AsyncSession,
    incident_id: int,
    customer: Customer,
    requirements: list[FollowupRequirement],
    now: datetime,
    directory: Directory,
) -> list[Notice]:
    """Create the tasks the rules require for one customer (once each); who to tell. None
    for a closed incident: closing it is refused until its rounds are sent, and nothing
    may be asked of staff after that."""
    notices: list[Notice] = []
    if not requirements:
        return notices
    status = (
        await session.execute(select(Incident.status).where(Incident.id == incident_id))
    ).scalar_one_or_none()
    if status == "closed":
        log.warning(
            "the rules require a follow-up for a closed incident; it was not created",
            extra={"incident": incident_id, "customer": customer.id},
        )
        return notices
    for req in requirements:
        exists = (
            await session.execute(
                select(Followup.id).where(
                    Followup.incident_id == incident_id,
                    Followup.customer_id == customer.id,
                    Followup.rule == req.rule,
                )
            )
        ).scalar_one_or_none()
        if exists is not None:
            continue
        owner, level, how = owner_for(directory, req, customer.account_manager)
        where = {"incident": incident_id, "customer": customer.id, "rule": req.rule, "how": how}
        if owner == NOBODY:
            # Said loudly, since a forced follow-up is the point of the rule: kept (its
            # incident cannot be closed without it) for an admin to claim or waive.
            log.error(
                "a forced follow-up has nobody to own it; it is kept unowned for an admin",
                extra=where,
            )
        elif how:
            log.warning("a forced follow-up's rule names nobody; another owns it", extra=where)
        every = req.reminder_every.total_seconds() if req.reminder_every else None
        task = Followup(
            incident_id=incident_id,
            customer_id=customer.id,
            rule=req.rule,
            kind=req.kind,
            owner=owner,
            owner_ref=str(req.owner),
            state="open",
            deadline_at=now + req.deadline,
            reminder_every_s=every,
            next_reminder_at=now + req.reminder_every if req.reminder_every and owner else None,
            escalation=[str(ref) for ref in req.escalation] or None,
            escalation_interval_s=(
                req.escalation_interval.total_seconds() if req.escalation_interval else None
            ),
            escalation_level=level,
            next_escalation_at=now + req.deadline,
            created_at=now,
        )
        session.add(task)
        await session.flush()
        session.add(
            FollowupEvent(
                followup_id=task.id,
                at=now,
                kind="created",
                staff=owner or None,
                detail=f"rule {req.rule}: {req.kind} by {task.deadline_at:%Y-%m-%d %H:%M}Z"
                + (f"; {how}" if how else ""),
            )
        )
        if owner == NOBODY:
            continue
        notice = Notice(task.id, owner, "assigned")
        _queue(session, task, notice, f"followup-{task.id}-assigned", now)
        notices.append(notice)
    return notices


def owner_for(
    directory: Directory, req: FollowupRequirement, account_manager: str | None
) -> tuple[str, int, str]:
    """Who owns a new task, the escalation level it starts at, and, when the rule's owner
    names nobody for this customer (no account manager, an empty group), how another was
    found: a forced follow-up must never silently disappear.

    In order: the first escalation link that names someone (the escalation then starts
    after that link: it must not come back to the owner as if to someone else);
    ``staff.unassigned_owner``; the directory's first admin; else nobody (:data:`NOBODY`):
    the task is kept, its incident cannot be closed without it, and an admin must claim or
    waive it."""
    try:
        return directory.resolve(req.owner, account_manager), 0, ""
    except NoOwner as nobody:
        why = f"{req.owner} names nobody ({nobody})"
    for index, ref in enumerate(req.escalation):
        try:
            return directory.resolve(ref, account_manager), index + 1, f"{why}; owned by {ref}"
        except NoOwner:
            continue
    fallback = directory.staff.unassigned_owner
    if fallback and directory.person(fallback) is not None:
        return fallback, 0, f"{why}; owned by staff.unassigned_owner, {fallback}"
    admins = directory.admins()
    if admins:
        return admins[0], 0, f"{why}; owned by the admin {admins[0]}"
    return NOBODY, 0, f"{why}, nor is there a staff.unassigned_owner or an admin: unowned"


async def due_notices(database: Database, clock: Clock, directory: Directory) -> list[Notice]:
    """Reminders and escalations due now, queued (:func:`queue_notice`); their times move on
    in the same transaction. On PostgreSQL the tasks are locked as they are read, so two
    sweeps at once (a leader handing over) do not both remind."""
    now = clock.now()
    notices: list[Notice] = []
    query = select(Followup).where(Followup.state.in_(OPEN_STATES))
    if database.skip_locked:
        query = query.with_for_update(skip_locked=True)
    async with database.session() as session, session.begin():
        tasks = (await session.execute(query)).scalars().all()
        for task in tasks:
            if now < task.deadline_at:
                if task.next_reminder_at is not None and task.next_reminder_at <= now:
                    every = timedelta(seconds=task.reminder_every_s or 0)
                    task.next_reminder_at = now + every if every else None
                    if task.owner == NOBODY:
                        continue
                    reminder = Notice(task.id, task.owner, "reminder")
                    key = f"followup-{task.id}-reminder-{int(now.timestamp())}"
                    _queue(session, task, reminder, key, now)
                    notices.append(reminder)
                    session.add(
                        FollowupEvent(
                            followup_id=task.id, at=now, kind="reminded", staff=task.owner
                        )
                    )
                continue
            if task.next_escalation_at is None or task.next_escalation_at > now:
                continue
            manager = None
            if any(link == "account_manager" for link in task.escalation or ()):
                customer = await session.get(Customer, task.customer_id)
                manager = customer.account_manager if customer is not None else None
            target, level, skipped = _escalation_target(task, directory, manager)
            if skipped:
                log.warning(
                    "escalation links of an overdue follow-up name nobody but its owner; skipped",
                    extra={"followup": task.id, "links": skipped},
                )
            passed = f"; skipped {', '.join(skipped)}" if skipped else ""
            overdue = f"overdue since {task.deadline_at:%Y-%m-%d %H:%M}Z"
            task.escalation_level = level
            if target is None:
                task.next_escalation_at = None
                if skipped or not await _escalated_before(session, task.id):
                    # Said once: an overdue task nobody else hears of is worth a look.
                    log.warning(
                        "an overdue follow-up has nobody but its owner to escalate to",
                        extra={"followup": task.id, "owner": task.owner},
                    )
                    session.add(
                        FollowupEvent(
                            followup_id=task.id,
                            at=now,
                            kind="not_escalated",
                            staff=task.owner or None,
                            detail=f"{overdue}; nobody but its owner to escalate to{passed}",
                        )
                    )
                continue
            interval = (
                timedelta(seconds=task.escalation_interval_s or 0) or DEFAULT_ESCALATION_INTERVAL
            )
            task.next_escalation_at = now + interval
            escalation = Notice(task.id, target, "escalation")
            key = f"followup-{task.id}-escalation-{task.escalation_level}"
            _queue(session, task, escalation, key, now)
            notices.append(escalation)
            session.add(
                FollowupEvent(
                    followup_id=task.id,
                    at=now,
                    kind="escalated",
                    staff=target,
                    detail=overdue + passed,
                )
            )
    return notices


async def _escalated_before(session: AsyncSession, followup_id: int) -> bool:
    found = await session.execute(
        select(FollowupEvent.id)
        .where(FollowupEvent.followup_id == followup_id, FollowupEvent.kind == "escalated")
        .limit(1)
    )
    return found.first() is not None


async def escalation_targets(session: AsyncSession, followup_ids: list[int]) -> dict[int, set[str]]:
    """Whom each task was escalated to, as its history records it (an ``account_manager``
    link's person, whom the rights cannot work out from the chain alone, among them)."""
    told: dict[int, set[str]] = {followup_id: set() for followup_id in followup_ids}
    if not followup_ids:
        return told
    rows = await session.execute(
        select(FollowupEvent.followup_id, FollowupEvent.staff).where(
            FollowupEvent.followup_id.in_(followup_ids), FollowupEvent.kind == "escalated"
        )
    )
    for followup_id, staff in rows:
        if staff:
            told[followup_id].add(staff)
    return told


def _escalation_target(
    task: Followup, directory: Directory, account_manager: str | None
) -> tuple[str | None, int, list[str]]:
    """Whom to tell of the overdue ``task`` next, the escalation level that makes, and the
    links of the rule's chain passed over, each with why: a link that names nobody (no
    account manager, an empty group) must not end the chain before the links after it, and
    one that names only the task's owner must not send the owner their own task as if to
    someone else (a group's member other than the owner is told instead). Without a chain,
    the owner's managers, one level up at each step."""
    chain = task.escalation or []
    level = task.escalation_level
    if chain:
        skipped: list[str] = []
        while level < len(chain):
            link = chain[level]
            level += 1
            try:
                ref = StaffRef.parse(link)
                return directory.resolve(ref, account_manager, besides=task.owner), level, skipped
            except OnlyThem:
                skipped.append(f"{link} (only {task.owner}, the owner)")
            except (NoOwner, ValueError):
                skipped.append(f"{link} (nobody)")
        return None, level, skipped
    if level >= MAX_ESCALATIONS:
        return None, level, []
    current: str | None = task.owner
    for _ in range(level + 1):
        current = directory.manager_of(current) if current else None
    return (None if current == task.owner else current), level + 1, []


async def _task(session: AsyncSession, followup_id: int) -> Followup:
    task = await session.get(Followup, followup_id, with_for_update=True)
    if task is None:
        raise LookupError(f"no follow-up with id {followup_id}")
    return task


async def claim(
    database: Database,
    clock: Clock,
    followup_id: int,
    staff: str,
    directory: Directory,
    *,
    admin: bool = False,
    also: Also | None = None,
) -> Followup:
    """Take a follow-up: ``staff`` becomes its owner, who records its outcome. Only for
    those :func:`broadcaster.followups.rights.may_claim` allows (``admin``: a caller the
    console or API know to hold the admin role), so that nobody takes a task the rules gave
    to a named person or group, or records an outcome by claiming first. An overdue claimed
    task may be taken over (from whoever claimed it) by those it escalated to, a manager of
    its owner or an admin: the history says from whom."""
    async with database.session() as session, session.begin():
        task = await _task(session, followup_id)
        now = clock.now()
        if task.state not in OPEN_STATES or (task.state == "claimed" and staff == task.owner):
            raise FollowupError(f"follow-up {followup_id} is {task.state}, not open")
        told = (await escalation_targets(session, [task.id]))[task.id]
        if task.state == "claimed" and now < task.deadline_at:
            raise FollowupError(
                f"follow-up {followup_id} is claimed, not open: {owner_name(task.owner)} holds "
                f"it; from its deadline ({task.deadline_at:%Y-%m-%d %H:%M}Z) those it "
                f"escalates to, a manager of {owner_name(task.owner)} or an admin may take "
                "it over"
            )
        if not may_claim(task, staff, directory, admin=admin, told=told, now=now):
            raise FollowupError(claim_refusal(task, staff, directory, told=told))
        previous = task.owner
        taken_over = task.state == "claimed"
        task.state, task.owner = "claimed", staff
        session.add(
            FollowupEvent(
                followup_id=task.id,
                at=now,
                kind="claimed",
                staff=staff,
                detail=(
                    f"taken over from {previous}, overdue since {task.deadline_at:%Y-%m-%d %H:%M}Z"
                    if taken_over
                    else None
                ),
            )
        )
        if also is not None:
            also(session, task)
        return task


async def done(
    database: Database,
    clock: Clock,
    followup_id: int,
    staff: str,
    outcome: str,
    note: str,
    *,
    directory: Directory | None = None,
    admin: bool = False,
    also: Also | None = None,
) -> Followup:
    """Record a follow-up's outcome. ``staff`` must be its owner (who claimed it, if anyone
    did), someone it was escalated to, a manager of the owner or a directory admin (the
    last two with ``directory``), as for a waiver: an outcome closes the task as surely as
    a waiver does. ``admin`` is for callers the console or API already know to hold the
    admin role."""
    if outcome not in OUTCOMES:
        raise FollowupError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
    if not note.strip():
        raise FollowupError("note: say what happened, for the customer's history")
    async with database.session() as session, session.begin():
        task = await _task(session, followup_id)
        if task.state not in OPEN_STATES:
            raise FollowupError(f"follow-up {followup_id} is already {task.state}")
        told = (await escalation_targets(session, [task.id]))[task.id]
        if not may_record(task, staff, directory, admin=admin, told=told):
            raise FollowupError(record_refusal(task, staff, directory, told=told))
        now = clock.now()
        task.state, task.outcome, task.note = "done", outcome, note.strip()
        task.closed_at, task.closed_by = now, staff
        session.add(
            FollowupEvent(
                followup_id=task.id,
                at=now,
                kind="done",
                staff=staff,
                detail=f"{outcome}: {note.strip()}",
            )
        )
        if also is not None:
            also(session, task)
        return task


async def waive(
    database: Database,
    clock: Clock,
    followup_id: int,
    staff: str,
    reason: str,
    directory: Directory,
    *,
    admin: bool = False,
    also: Also | None = None,
) -> Followup:
    """Waive a follow-up: ``staff`` must be a manager of its owner or a directory admin;
    ``admin`` is for callers the console or API already know to hold the admin role."""
    if not reason.strip():
        raise FollowupError("reason: a waiver needs a reason")
    async with database.session() as session, session.begin():
        task = await _task(session, followup_id)
        if task.state not in OPEN_STATES:
            raise FollowupError(f"follow-up {followup_id} is already {task.state}")
        if not admin and not directory.may_waive(staff, task.owner):
            raise FollowupError(
                f"only a manager of {owner_name(task.owner)} or an admin may waive follow-up "
                f"{followup_id}"
            )
        now = clock.now()
        task.state, task.note, task.closed_at, task.closed_by = "waived", reason.strip(), now, staff
        session.add(
            FollowupEvent(
                followup_id=task.id, at=now, kind="waived", staff=staff, detail=reason.strip()
            )
        )
        if also is not None:
            also(session, task)
        return task


async def open_for_incident(session: AsyncSession, incident_id: int) -> list[Followup]:
    return list(
        (
            await session.execute(
                select(Followup)
                .where(Followup.incident_id == incident_id, Followup.state.in_(OPEN_STATES))
                .order_by(Followup.id)
            )
        )
        .scalars()
        .all()
    )


async def list_followups(
    database: Database,
    *,
    state: str | None = None,
    owner: str | None = None,
    limit: int | None = None,
) -> list[Followup]:
    """Follow-ups, soonest deadline first: every one, or the first ``limit``; with
    ``owner``, those on their desk (:func:`on_desk_of`)."""
    query = select(Followup).order_by(Followup.deadline_at, Followup.id).limit(limit)
    if state == "open":
        query = query.where(Followup.state.in_(OPEN_STATES))
    elif state is not None:
        query = query.where(Followup.state == state)
    if owner is not None:
        query = query.where(on_desk_of(owner))
    async with database.session() as session:
        return list((await session.execute(query)).scalars().all())


def on_desk_of(staff: str) -> ColumnElement[bool]:
    """The follow-ups that are ``staff``'s to act on: those they own, and those escalated
    to them (their history's ``escalated`` events name them), which they may take over once
    overdue."""
    escalated = select(FollowupEvent.followup_id).where(
        FollowupEvent.kind == "escalated", FollowupEvent.staff == staff
    )
    return or_(Followup.owner == staff, Followup.id.in_(escalated))
