"""Incident operations: declare, update, resolve, close; each writes the timeline and rounds.

Every operation that customers must hear about makes a round due *now*: it pulls the
incident's pending round forward (that keeps the promise early) or, when none is
pending, creates one. The daemon picks it up from the store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from broadcaster.clock import Clock
from broadcaster.incidents import lifecycle
from broadcaster.intake.text import clean_text, printable

if TYPE_CHECKING:
    from broadcaster.escalation.plan import Escalation
    from rules import Compensation

from broadcaster.store import (
    Also,
    Database,
    Followup,
    Incident,
    IncidentScope,
    IncidentUpdate,
    Round,
)


class IncidentNotFound(LookupError):
    def __init__(self, incident_id: int) -> None:
        super().__init__(f"no incident with id {incident_id}")
        self.incident_id = incident_id


@dataclass(frozen=True)
class Declaration:
    title: str
    severity: str
    message: str
    components: Sequence[str] = ()
    regions: Sequence[str] = ()
    status: str = "investigating"
    cause_kind: str = "unknown"
    cause: str | None = None
    author: str = ""
    actions: str | None = None
    workaround: str | None = None
    expected_resolution_at: datetime | None = None
    source: str = "operator"
    external_id: str | None = None
    """Feeds set these (unique together): the declaration fails if the item exists."""
    hold: timedelta = timedelta(0)
    """Delay of the first round (a feed's flapping guard); operators send at once."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """The source's labels (feeds and webhooks), for the rules' ``incident.labels``."""


@dataclass(frozen=True)
class UpdateRequest:
    """An update or a resolution. Fields left ``None`` carry over from the previous
    timeline entry; an empty string clears them. The apology fields apply to resolutions."""

    message: str
    status: str | None = None
    cause_kind: str | None = None
    cause: str | None = None
    author: str = ""
    actions: str | None = None
    workaround: str | None = None
    expected_resolution_at: datetime | None = None
    responsibility: str | None = None
    regret: str | None = None
    remedy: str | None = None
    prevention: str | None = None
    compensation: str | None = None
    severity: str | None = None
    """An update's new severity (None keeps it): the cadence, the rules and the urgency of
    this round and the later ones follow it."""
    clear_expected_resolution: bool = False
    """Withdraw the expected resolution (a time told that no longer holds); None above
    keeps it."""


_Written = TypeVar("_Written", Declaration, UpdateRequest)


def _carry(new: str | None, old: str | None) -> str | None:
    if new is None:
        return old
    return new.strip() or None


@dataclass
class IncidentView:
    """An incident with its scope and timeline, for ``incident show``."""

    incident: Incident
    components: list[str] = field(default_factory=list)
    regions: list[str] = field(default_factory=list)
    updates: list[IncidentUpdate] = field(default_factory=list)
    rounds: list[Round] = field(default_factory=list)


_OPERATOR_TEXT_FIELDS: Final = (
    "message", "cause", "actions", "workaround", "responsibility", "regret", "remedy",
    "prevention", "compensation",
)  # fmt: skip


def _printable(value: str | None, *, single_line: bool = False) -> str | None:
    """An operator's text as customers will get it: nothing invisible that could make a
    message read differently than it was written (a bidirectional override in a title
    reverses an email's subject) or break its encoding; a title on one line."""
    if value is None:
        return None
    return clean_text(value, single_line=True) if single_line else printable(value)


def _cleaned(entry: _Written) -> _Written:
    """``entry`` (a declaration or an update request) with its texts made printable."""
    changes: dict[str, Any] = {
        name: _printable(getattr(entry, name))
        for name in _OPERATOR_TEXT_FIELDS
        if hasattr(entry, name)
    }
    if isinstance(entry, Declaration):
        changes["title"] = _printable(entry.title, single_line=True)
        changes["components"] = [_printable(v, single_line=True) for v in entry.components]
        changes["regions"] = [_printable(v, single_line=True) for v in entry.regions]
    return replace(entry, **changes)


def _validate_declaration(decl: Declaration) -> None:
    if not decl.title.strip():
        raise ValueError("title: must not be empty")
    _check_length("title", decl.title, lifecycle.MAX_TITLE_CHARS)
    if not decl.message.strip():
        raise ValueError("message: customers need a message; say what is happening")
    _check_length("message", decl.message, lifecycle.MAX_MESSAGE_CHARS)
    for key, names in (("components", decl.components), ("regions", decl.regions)):
        if len(names) > lifecycle.MAX_SCOPE_ITEMS:
            raise ValueError(f"{key}: {len(names)} named; at most {lifecycle.MAX_SCOPE_ITEMS}")
    lifecycle.check_severity(decl.severity)
    lifecycle.check_cause_kind(decl.cause_kind)
    if decl.status not in lifecycle.OPEN_STATUSES:
        raise ValueError(f"status: a new incident is {', '.join(lifecycle.OPEN_STATUSES)}")
    if not decl.components and not decl.regions:
        raise ValueError("scope: name at least one component or region, or nobody is told")
    for key, names in (("components", decl.components), ("regions", decl.regions)):
        for index, name in enumerate(names):
            if len(name.strip()) > lifecycle.MAX_SCOPE_CHARS:
                raise ValueError(
                    f"{key}[{index}]: {len(name.strip())} characters; "
                    f"at most {lifecycle.MAX_SCOPE_CHARS}"
                )
    if decl.cause_kind != "unknown" and not (decl.cause or "").strip():
        raise ValueError(f"cause: a {decl.cause_kind} cause needs a description")
    _check_texts(decl)


_LONG_TEXT_FIELDS: Final = tuple(name for name in _OPERATOR_TEXT_FIELDS if name != "message")
"""The texts limited to ``lifecycle.MAX_TEXT_CHARS`` (the message has its own limit)."""


def _check_length(field: str, value: str | None, limit: int) -> None:
    """The same limits whichever way an operator writes (the API's schema has them too)."""
    if value is not None and len(value.strip()) > limit:
        raise ValueError(f"{field}: {len(value.strip())} characters; at most {limit}")


def _check_texts(entry: Declaration | UpdateRequest) -> None:
    """Every text the entry gives (cause, actions, workaround, the apology's) within
    ``lifecycle.MAX_TEXT_CHARS``: the console and the CLI stored what the API refused, and
    customers got it in every message."""
    for name in _LONG_TEXT_FIELDS:
        _check_length(name, getattr(entry, name, None), lifecycle.MAX_TEXT_CHARS)


def _not_past(expected: datetime | None, now: datetime) -> None:
    """A new expected resolution must lie ahead: customers read it as a promise ("we expect
    this to be resolved by ..."), and one already past went out as written."""
    if expected is not None and expected <= now:
        raise ValueError(
            f"expected_resolution_at: {expected.isoformat()} is not in the future "
            f"(now {now.isoformat(timespec='seconds')}); give a time ahead, or none"
        )


async def declare(
    database: Database, clock: Clock, decl: Declaration, *, also: Also | None = None
) -> Incident:
    """Create the incident, its first timeline entry and its first round, due now."""
    decl = _cleaned(decl)
    _validate_declaration(decl)
    now = clock.now()
    _not_past(decl.expected_resolution_at, now)
    async with database.session() as session, session.begin():
        incident = Incident(
            title=decl.title.strip(),
            severity=decl.severity,
            status=decl.status,
            declared_by=decl.author,
            source=decl.source,
            external_id=decl.external_id,
            created_at=now,
            updated_at=now,
            rounds_made=1,
            labels=dict(decl.labels) or None,
        )
        session.add(incident)
        await session.flush()
        for kind, values in (("component", decl.components), ("region", decl.regions)):
            for value in dict.fromkeys(v.strip() for v in values if v.strip()):
                session.add(IncidentScope(incident_id=incident.id, kind=kind, value=value))
        update = IncidentUpdate(
            incident_id=incident.id,
            kind="declared",
            status=decl.status,
            message=decl.message.strip(),
            cause_kind=decl.cause_kind,
            cause=decl.cause,
            actions=_carry(decl.actions, None),
            workaround=_carry(decl.workaround, None),
            expected_resolution_at=decl.expected_resolution_at,
            author=decl.author,
            created_at=now,
        )
        session.add(update)
        await session.flush()
        session.add(
            Round(
                incident_id=incident.id,
                number=1,
                kind="first",
                due_at=now + decl.hold,
                update_id=update.id,
            )
        )
        if also is not None:
            also(session, incident)
    return incident


def _entry(
    incident_id: int,
    kind: str,
    status: str,
    request: UpdateRequest,
    last: IncidentUpdate | None,
    now: datetime,
) -> IncidentUpdate:
    """A timeline entry; what the request leaves out carries over from ``last``."""
    _check_texts(request)
    cause_kind = request.cause_kind or (last.cause_kind if last else "unknown")
    cause = _carry(request.cause, last.cause if last else None)
    if cause_kind != "unknown" and not cause:
        raise ValueError(f"cause: a {cause_kind} cause needs a description")
    if request.clear_expected_resolution and request.expected_resolution_at is not None:
        raise ValueError(
            "expected_resolution_at: give a new time or withdraw the old one, not both"
        )
    _not_past(request.expected_resolution_at, now)
    expected = request.expected_resolution_at or (last.expected_resolution_at if last else None)
    if request.clear_expected_resolution:
        expected = None
    return IncidentUpdate(
        incident_id=incident_id,
        kind=kind,
        status=status,
        message=request.message.strip(),
        cause_kind=cause_kind,
        cause=cause,
        actions=_carry(request.actions, last.actions if last else None),
        workaround=_carry(request.workaround, last.workaround if last else None),
        expected_resolution_at=None if kind == "resolved" else expected,
        author=request.author,
        created_at=now,
    )


async def _locked_incident(session: AsyncSession, incident_id: int) -> Incident:
    incident = await session.get(Incident, incident_id, with_for_update=True)
    if incident is None:
        raise IncidentNotFound(incident_id)
    return incident


async def _round_now(
    session: AsyncSession, incident: Incident, kind: str, update_id: int, now: datetime
) -> Round | None:
    """Make a round of ``kind`` due now: the pending one pulled forward, or a new one.

    While the first round has not started, nobody has been told: an update goes out as that
    first notice (with its opening). A resolution inside a feed's hold (the first round not
    yet due) cancels it, with nothing to send (None): the hold is there to keep a flapping
    alert from customers, and an apology for an incident they never heard of is noise. (A
    first round already due, that the daemon has not reached, becomes the resolution: the
    customers were affected for that long.)"""
    pending = (
        (
            await session.execute(
                select(Round)
                .where(Round.incident_id == incident.id, Round.state == "pending")
                .order_by(Round.number.desc())
                .with_for_update()
            )
        )
        .scalars()
        .all()
    )
    if pending:
        target = pending[0]
        if target.kind == "first":
            if kind != "resolution":
                kind = "first"
            elif target.due_at > max(now, incident.created_at):  # in a feed's hold
                for extra in pending:
                    extra.state = "cancelled"
                return None
        target.kind = kind
        target.update_id = update_id
        target.due_at = min(target.due_at, now)
        for extra in pending[1:]:
            extra.state = "cancelled"
        return target
    told = (
        await session.execute(
            select(Round.id)
            .where(
                Round.incident_id == incident.id, Round.state.in_(("materialising", "dispatched"))
            )
            .limit(1)
        )
    ).first() is not None
    due = now
    if not told:  # its first round was cancelled in its hold: this is the first notice
        if kind == "resolution":
            return None
        kind = "first"
        # And it keeps that hold: a flapping alert back again is not news before then.
        held = (
            await session.execute(
                select(func.max(Round.due_at)).where(
                    Round.incident_id == incident.id, Round.kind == "first"
                )
            )
        ).scalar_one_or_none()
        due = max(due, held) if held is not None else due
    incident.rounds_made += 1
    target = Round(
        incident_id=incident.id,
        number=incident.rounds_made,
        kind=kind,
        due_at=due,
        update_id=update_id,
    )
    session.add(target)
    return target


async def post_update(
    database: Database,
    clock: Clock,
    incident_id: int,
    request: UpdateRequest,
    *,
    also: Also | None = None,
) -> IncidentUpdate:
    """Add a timeline entry and send it to the audience at once (reopens a resolved one)."""
    request = _cleaned(request)
    if not request.message.strip():
        raise ValueError("message: an update needs a message for customers")
    _check_length("message", request.message, lifecycle.MAX_MESSAGE_CHARS)
    if request.cause_kind is not None:
        lifecycle.check_cause_kind(request.cause_kind)
    if request.severity is not None:
        lifecycle.check_severity(request.severity)
    now = clock.now()
    async with database.session() as session, session.begin():
        incident = await _locked_incident(session, incident_id)
        status = lifecycle.check_update(incident.status, request.status)
        reopened = incident.status == "resolved"
        last = await latest_update(session, incident_id)
        update = _entry(
            incident_id, "reopened" if reopened else "update", status, request, last, now
        )
        session.add(update)
        await session.flush()
        incident.status = status
        incident.updated_at = now
        if request.severity is not None and request.severity != incident.severity:
            for column, value in severity_changed(request.severity).items():
                setattr(incident, column, value)
        if reopened:
            incident.resolved_at = None
        await _round_now(session, incident, "update", update.id, now)
        if also is not None:
            also(session, update)
    return update


def severity_changed(severity: str) -> dict[str, object]:
    """The incident row's new values when its severity changes (staff or a feed): the
    escalation plan is taken again from the rules at the next round, as the rules decide for
    the new facts (a minor incident raised to critical gets the critical ladder, at its age;
    the snapshot guards a plan against rule edits, not against the incident's own facts),
    and the staff of the new ladder's current step are told."""
    return {"severity": severity, "plan": None, "steps_notified": None}


class ResolutionRefused(ValueError):
    """The rules require fields this resolution lacks (``missing``, sorted)."""

    def __init__(self, message: str, missing: list[str]) -> None:
        super().__init__(message)
        self.missing = missing


async def resolve(
    database: Database,
    clock: Clock,
    incident_id: int,
    request: UpdateRequest,
    escalation: Escalation | None = None,
    *,
    also: Also | None = None,
) -> IncidentUpdate:
    """Resolve: the final round (the resolution message) goes out now; no rounds after it."""
    request = _cleaned(request)
    if not request.message.strip():
        raise ValueError("message: the resolution needs a message for customers")
    _check_length("message", request.message, lifecycle.MAX_MESSAGE_CHARS)
    if request.cause_kind is not None:
        lifecycle.check_cause_kind(request.cause_kind)
    now = clock.now()
    async with database.session() as session, session.begin():
        incident = await _locked_incident(session, incident_id)
        lifecycle.check_resolve(incident.status)
        last = await latest_update(session, incident_id)
        update = _entry(incident_id, "resolved", "resolved", request, last, now)
        # Stored stripped (blank means none): the rules' requirements are checked on
        # exactly what is stored, so "   " does not pass for a remedy.
        update.responsibility = _carry(request.responsibility, None)
        update.regret = _carry(request.regret, None)
        update.remedy = _carry(request.remedy, None)
        update.prevention = _carry(request.prevention, None)
        update.compensation = _carry(request.compensation, None)
        decision = (
            await escalation.decide(session, incident, now, resolving=True) if escalation else None
        )
        if decision is not None:
            given = {
                "cause": update.cause if update.cause_kind != "unknown" else None,
                "remedy": update.remedy,
                "prevention": update.prevention,
                "responsibility": update.responsibility,
                "regret": update.regret,
            }
            missing = sorted(f for f in decision.required_for_resolution if not given.get(f))
            if missing:
                rules = ", ".join(decision.required_by) or "policy"
                note = " (a cause counts with cause_kind known or suspected)"
                raise ResolutionRefused(
                    f"the rules ({rules}) require {', '.join(missing)} before this incident "
                    "can be resolved" + (note if "cause" in missing else ""),
                    missing,
                )
        if update.compensation is None and decision is not None and decision.compensation:
            # Kept as data, not words: each customer's message says it in their language.
            update.compensation_offers = [_offer(c) for c in decision.compensation]
        session.add(update)
        await session.flush()
        incident.status = "resolved"
        incident.updated_at = now
        incident.resolved_at = now
        await _round_now(session, incident, "resolution", update.id, now)
        if also is not None:
            also(session, update)
    return update


class CloseRefused(lifecycle.TransitionError):
    """Forced follow-ups are still open, or may yet be created: a round of the incident (its
    resolution) has not reached all of its customers."""


UNSENT_ROUND_STATES = ("pending", "materialising")
"""A round in these states has not yet been written out to its whole audience: as it is,
the rules may still require follow-ups for the customers it reaches."""


def _offer(compensation: Compensation) -> dict[str, str]:
    """A compensation as ``incident_updates.compensation_offers`` keeps it: the amount the
    decimal as the rules wrote it (``"10.00"``)."""
    return {
        "kind": compensation.kind,
        "amount": str(compensation.amount),
        "currency": compensation.currency,
        "rule": compensation.rule,
    }


async def close(
    database: Database,
    clock: Clock,
    incident_id: int,
    author: str = "",
    *,
    also: Also | None = None,
) -> Incident:
    """Close a resolved incident: a timeline entry, no message to customers. Refused while
    its resolution round has not been sent (the rules may still require follow-ups for the
    customers it reaches) and while forced follow-ups are open (a manager can waive them)."""
    now = clock.now()
    async with database.session() as session, session.begin():
        incident = await _locked_incident(session, incident_id)
        lifecycle.check_close(incident.status)
        # A round's follow-ups are written with its batches, before it is marked dispatched:
        # once none is pending or materialising, every follow-up the rules required exists.
        unsent = (
            (
                await session.execute(
                    select(Round)
                    .where(Round.incident_id == incident_id, Round.state.in_(UNSENT_ROUND_STATES))
                    .order_by(Round.number)
                )
            )
            .scalars()
            .all()
        )
        if unsent:
            listed = ", ".join(
                f"round {r.number} ({'the resolution' if r.kind == 'resolution' else r.kind}, "
                f"{'not started' if r.state == 'pending' else 'being sent'})"
                for r in unsent
            )
            raise CloseRefused(
                f"incident {incident_id} cannot be closed yet: {listed} has not been sent to "
                "its customers, and the rules may still require follow-ups for them. Close it "
                "again once the daemon has sent it (usually within seconds of the resolution; "
                f"'broadcaster incident show {incident_id}' lists the rounds and their states)"
            )
        open_tasks = (
            (
                await session.execute(
                    select(Followup)
                    .where(
                        Followup.incident_id == incident_id, Followup.state.in_(("open", "claimed"))
                    )
                    .order_by(Followup.id)
                )
            )
            .scalars()
            .all()
        )
        if open_tasks:
            listed = "; ".join(
                f"#{t.id} {t.kind} {t.customer_id} by {t.owner or 'nobody yet (an admin claims)'} "
                f"(due {t.deadline_at:%Y-%m-%d %H:%M}Z)"
                for t in open_tasks
            )
            raise CloseRefused(
                f"{len(open_tasks)} forced follow-up(s) still open: {listed}. Record them with "
                "'followups done' or have a manager waive them"
            )
        incident.status = "closed"
        incident.closed_at = now
        incident.updated_at = now
        session.add(
            IncidentUpdate(
                incident_id=incident_id,
                kind="closed",
                status="closed",
                message="",
                author=author,
                created_at=now,
            )
        )
        if also is not None:
            also(session, incident)
    return incident


async def latest_update(session: AsyncSession, incident_id: int) -> IncidentUpdate | None:
    result = await session.execute(
        select(IncidentUpdate)
        .where(IncidentUpdate.incident_id == incident_id, IncidentUpdate.kind != "closed")
        .order_by(IncidentUpdate.id.desc())
        .limit(1)
    )
    return result.scalar_one_or_none()


async def list_incidents(
    database: Database, *, status: str | None = None, limit: int = 50
) -> list[Incident]:
    query = select(Incident).order_by(Incident.id.desc()).limit(limit)
    if status == "open":
        query = query.where(Incident.status.in_(lifecycle.OPEN_STATUSES))
    elif status is not None:
        query = query.where(Incident.status == status)
    async with database.session() as session:
        return list((await session.execute(query)).scalars().all())


async def show(database: Database, incident_id: int) -> IncidentView:
    async with database.session() as session:
        incident = await session.get(Incident, incident_id)
        if incident is None:
            raise IncidentNotFound(incident_id)
        view = IncidentView(incident=incident)
        scopes = await session.execute(
            select(IncidentScope.kind, IncidentScope.value)
            .where(IncidentScope.incident_id == incident_id)
            .order_by(IncidentScope.id)
        )
        for kind, value in scopes:
            (view.components if kind == "component" else view.regions).append(value)
        view.updates = list(
            (
                await session.execute(
                    select(IncidentUpdate)
                    .where(IncidentUpdate.incident_id == incident_id)
                    .order_by(IncidentUpdate.id)
                )
            )
            .scalars()
            .all()
        )
        view.rounds = list(
            (
                await session.execute(
                    select(Round).where(Round.incident_id == incident_id).order_by(Round.number)
                )
            )
            .scalars()
            .all()
        )
        return view


async def count_open(database: Database) -> int:
    async with database.session() as session:
        result = await session.execute(
            select(func.count())
            .select_from(Incident)
            .where(Incident.status.in_(lifecycle.OPEN_STATUSES))
        )
        return int(result.scalar_one())
