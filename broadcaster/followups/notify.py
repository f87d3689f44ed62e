"""Telling staff: follow-up tasks assigned, reminders, escalations, and an incident's
escalation steps, over the staff notification channel.

A notice is a row of ``staff_notices`` (:class:`~broadcaster.store.StaffNotice`), written
in the transaction that made it due (:func:`~broadcaster.followups.service.queue_notice`),
so a daemon that stops before sending it, or a relay that fails for a moment, loses
nothing. :func:`send_due_notices` claims the due ones under a lease (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL), sends them, and records each outcome: sent; a retryable failure
tried again with the delivery backoff, up to ``delivery.max_attempts``; a permanent one
failed. A follow-up's notice also goes into its history (``notified``). A follow-up's
notice whose follow-up was closed before it went out is cancelled, and so is an escalation
step's whose incident ended. The daemon's follow-up sweep sends them (a round that queued
some wakes it); the outcome of an attempt is written only if the notice is still held for
that attempt (owner and attempt count), so a late answer never overwrites a later one.

A follow-up's message is the ``followup_task`` template, in ``messages.default_language``:
which notice it is (assigned, reminder, escalation) and the task's id, whom to contact, how
to reach them (with their language, their time zone and the deadline in it), their history
over the rules' history window, for a visit where to go (their postal address, or that none
is on file), the owner (for an escalation), what to say and how the one told records the
outcome (commands that work for them). The context gives each of these as
data for the templates to phrase (:func:`task_context_of`); the English sentences of old
(``contact``, ``history``, ``what_to_say``) are kept for templates written for them.

An escalation step's message is the ``incident_step`` template, in the same language: the
incident (id, title, severity, status, how long it has been open), the step of its stored
plan that the round entered (when known), its public page and its console page, and what is
expected of the one told.

Times are given in the recipient's zone (``staff.people.<id>.timezone``, else
``staff.timezone``, else UTC), the zone named: a task's deadline (the customer's local one
beside it stays in the customer's zone), an incident's start and its step's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from babel import Locale, UnknownLocaleError
from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from broadcaster.access.credentials import Principal
from broadcaster.access.roles import allows
from broadcaster.clock import Clock
from broadcaster.compose.context import IncidentFacts, Personal, StepFacts
from broadcaster.compose.forms import form_for
from broadcaster.compose.locale import format_when
from broadcaster.compose.render import Renderer, RenderRequest
from broadcaster.config.durations import format_duration
from broadcaster.config.settings import DeliverySettings, RulesSettings
from broadcaster.dispatch.backoff import delay_after
from broadcaster.dispatch.content import facts_of
from broadcaster.followups.directory import Directory
from broadcaster.followups.rights import may_claim, may_record
from broadcaster.followups.service import NOBODY, OPEN_STATES, escalation_targets
from broadcaster.incidents import lifecycle
from broadcaster.incidents.service import latest_update
from broadcaster.store import (
    ContactPoint,
    Customer,
    Database,
    Delivery,
    Followup,
    FollowupEvent,
    Incident,
    IncidentScope,
    Round,
    StaffNotice,
)
from broadcaster.store.retry import retried
from channels.base import Channel, DeliveryError, Message, Target, concurrency_of
from rules import PlanSnapshot, SnapshotError

log = logging.getLogger("broadcaster.followups")

CLAIM_BATCH = 10
"""Notices one claim takes and sends at once, for a channel that declares no concurrency
(the email channel's is its pool): no more than the channel sends side by side. Their
leases are renewed while they send (the channel is shared with a round's deliveries, and a
notice can wait behind them for a connection)."""

RENEWALS_PER_LEASE = 3

DEFAULT_HISTORY_WINDOW: timedelta = RulesSettings().history_window
"""The look-back of a task's "incidents that affected them" when the caller names none:
``rules.history_window``'s default."""


class Cancelled(Exception):
    """The notice is moot: its follow-up was closed (or, for a step's, its incident ended)
    before it went out."""


@dataclass(frozen=True)
class _Claimed:
    id: int
    key: str
    kind: str
    staff: str
    incident_id: int
    followup_id: int | None
    attempts: int
    round_number: int | None = None


@dataclass(frozen=True)
class _Outcome:
    state: str  # sent | pending (to try again) | failed | cancelled
    detail: str
    retry_at: datetime | None = None


async def send_due_notices(
    database: Database,
    clock: Clock,
    channel: Channel | None,
    renderer: Renderer,
    directory: Directory,
    *,
    owner: str,
    settings: DeliverySettings,
    public_url: str,
    rng: random.Random | None = None,
    history_window: timedelta | None = None,
) -> int:
    """Send every staff notice that is due (and any whose sender's lease ran out); returns
    how many went out. One notice's failure, whatever it is, does not keep the others.

    ``history_window`` is the look-back of the customer's history in a task's text, as the
    rules count it (the longer of ``rules.history_window`` and the rules' own windows);
    :data:`DEFAULT_HISTORY_WINDOW` when not given."""
    window = DEFAULT_HISTORY_WINDOW if history_window is None else history_window
    sent = 0
    batch = concurrency_of(channel) or CLAIM_BATCH

    async def one(notice: _Claimed) -> bool:
        outcome = await _attempt(
            database, clock, channel, renderer, directory, notice, settings, public_url, rng, window
        )
        await _record(database, clock.now(), owner, notice, outcome, settings.lease)
        return outcome.state == "sent"

    while True:
        claimed = await _claim(database, clock.now(), owner, settings, batch)
        if not claimed:
            return sent
        done = asyncio.Event()
        keeper = asyncio.create_task(_keep_leases(database, clock, owner, claimed, settings, done))
        try:
            sent += sum(await asyncio.gather(*(one(notice) for notice in claimed)))
        finally:
            done.set()
            await keeper
        if len(claimed) < batch:
            return sent


async def _keep_leases(
    database: Database,
    clock: Clock,
    owner: str,
    claimed: list[_Claimed],
    settings: DeliverySettings,
    done: asyncio.Event,
) -> None:
    """Renew the leases of ``claimed`` every third of a lease until ``done``; a renewal that
    fails is logged and tried at the next turn (the sends go on)."""
    held = or_(*(and_(StaffNotice.id == n.id, StaffNotice.attempts == n.attempts) for n in claimed))
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), settings.lease.total_seconds() / RENEWALS_PER_LEASE)
        if done.is_set():
            return
        try:
            async with database.session() as session, session.begin():
                await session.execute(
                    update(StaffNotice)
                    .where(held, StaffNotice.lease_owner == owner, StaffNotice.state == "sending")
                    .values(lease_expires_at=clock.now() + settings.lease)
                )
        except Exception as exc:  # the store may be down: the sends go on
            log.warning(
                "could not renew the leases of staff notices still sending",
                extra={"count": len(claimed), "reason": repr(exc)},
            )


async def _claim(
    database: Database, now: datetime, owner: str, settings: DeliverySettings, limit: int
) -> list[_Claimed]:
    due = or_(
        and_(StaffNotice.state == "pending", StaffNotice.next_attempt_at <= now),
        and_(StaffNotice.state == "sending", StaffNotice.lease_expires_at <= now),
    )
    query = select(StaffNotice).where(due).order_by(StaffNotice.next_attempt_at, StaffNotice.id)
    query = query.limit(limit)
    if database.skip_locked:
        query = query.with_for_update(skip_locked=True)
    async with database.session() as session, session.begin():
        rows = (await session.execute(query)).scalars().all()
        claimed = []
        for row in rows:
            if row.state == "sending":
                log.warning(
                    "a staff notice's sender stopped before recording it; it may go out twice",
                    extra={"notice": row.key},
                )
            row.state = "sending"
            row.lease_owner = owner
            row.lease_expires_at = now + settings.lease
            row.attempts += 1
            claimed.append(
                _Claimed(
                    row.id,
                    row.key,
                    row.kind,
                    row.staff,
                    row.incident_id,
                    row.followup_id,
                    row.attempts,
                    row.round_number,
                )
            )
    return claimed


async def _attempt(
    database: Database,
    clock: Clock,
    channel: Channel | None,
    renderer: Renderer,
    directory: Directory,
    notice: _Claimed,
    settings: DeliverySettings,
    public_url: str,
    rng: random.Random | None,
    window: timedelta,
) -> _Outcome:
    person = directory.person(notice.staff)
    if channel is None:
        return _Outcome("failed", f"{notice.kind} failed: no staff notification channel")
    address = None
    if person is not None:
        address = person.phone if channel.contact == "sms" else person.email
    if person is None or not address:
        reason = f"no {'phone' if channel.contact == 'sms' else 'email'} for {notice.staff!r}"
        return _Outcome("failed", f"{notice.kind} failed: {reason}")
    now = clock.now()
    try:
        if notice.kind == "step":
            zone = directory.staff.timezone_of(notice.staff)
            message = await _step_message(
                database, renderer, notice, person.name, channel, now, zone
            )
        else:
            message = await _message(
                database, renderer, notice, person.name, channel, now, window, public_url, directory
            )
        receipt = await channel.send(Target(address, person.name, notice.staff), message)
    except Cancelled as moot:
        return _Outcome("cancelled", f"{notice.kind} cancelled: {moot}")
    except Exception as exc:  # one notice's fault must not keep the others
        error = exc if isinstance(exc, DeliveryError) else None
        if error is None:
            log.exception("staff notice failed", extra={"notice": notice.key})
        reason = error.reason if error is not None else f"unexpected error: {exc!r}"
        if (error is None or error.retryable) and notice.attempts < settings.max_attempts:
            retry_after = error.retry_after if error is not None else None
            delay = delay_after(notice.attempts, settings.backoff, retry_after, rng)
            retry_at = clock.now() + delay
            detail = f"{notice.kind} failed: {reason}; trying again at {retry_at:%H:%M:%S}Z"
            return _Outcome("pending", detail, retry_at)
        if error is None or error.retryable:
            reason = f"gave up after {notice.attempts} attempts: {reason}"
        return _Outcome("failed", f"{notice.kind} failed: {reason}")
    return _Outcome("sent", f"{notice.kind} sent ({receipt.provider_message_id or 'ok'})")


async def _record(
    database: Database,
    now: datetime,
    owner: str,
    notice: _Claimed,
    outcome: _Outcome,
    lease: timedelta,
) -> None:
    """Write ``outcome`` if the notice is still ours: held by ``owner`` for this very attempt
    (the attempt count is the fence: after our lease ran out, another sender, or another
    task of this daemon under the same owner, may have claimed it again); a follow-up's also
    into its history. A write that fails is tried again for up to ``lease`` while the lease
    is kept; only then is the failure logged, the lease left to run out and the notice
    tried again."""
    if outcome.state != "sent":
        log.warning(
            "staff notice not sent",
            extra={"notice": notice.key, "staff": notice.staff, "detail": outcome.detail},
        )

    async def write() -> None:
        async with database.session() as session, session.begin():
            result = await session.execute(
                update(StaffNotice)
                .where(
                    StaffNotice.id == notice.id,
                    StaffNotice.lease_owner == owner,
                    StaffNotice.state == "sending",
                    StaffNotice.attempts == notice.attempts,
                )
                .values(
                    state=outcome.state,
                    next_attempt_at=outcome.retry_at or now,
                    lease_owner=None,
                    lease_expires_at=None,
                    last_error=None if outcome.state == "sent" else outcome.detail,
                    sent_at=now if outcome.state == "sent" else None,
                )
            )
            if not getattr(result, "rowcount", 0):
                log.warning("a staff notice's lease was lost", extra={"notice": notice.key})
                return
            if notice.followup_id is not None:
                session.add(
                    FollowupEvent(
                        followup_id=notice.followup_id,
                        at=now,
                        kind="notified",
                        staff=notice.staff,
                        detail=outcome.detail,
                    )
                )

    try:
        await retried(write, within=lease, what="a staff notice")
    except Exception:
        log.exception(
            "could not record a staff notice",
            extra={"notice": notice.key, "detail": outcome.detail},
        )


async def _step_message(
    database: Database,
    renderer: Renderer,
    notice: _Claimed,
    staff_name: str,
    channel: Channel,
    now: datetime,
    zone: str,
) -> Message:
    """An incident's escalation step asks for this person's attention (the duty manager at
    4 h, say): the ``incident_step`` template, in ``messages.default_language``, its times
    in ``zone`` (the recipient's)."""
    async with database.session() as session:
        incident = await session.get(Incident, notice.incident_id)
        if incident is None or not lifecycle.is_open(incident.status):
            raise Cancelled("the incident is over")
        facts = await step_notice_facts(session, incident, round_number=notice.round_number)
    return renderer.message(
        RenderRequest(
            kind="incident_step",
            form=form_for(channel.contact),
            facts=facts,
            language=renderer.templates.default_language,
            timezone=zone,
            now=now,
            personal=Personal(staff_name, "", ""),
        ),
        idempotency_key=notice.key,
    )


async def step_notice_facts(
    session: AsyncSession,
    incident: Incident,
    *,
    round_number: int | None = None,
    now: datetime | None = None,
) -> IncidentFacts:
    """What an escalation step's notice (``incident_step``) says of ``incident``: its latest
    timeline entry, its status, when it was opened (its age is the render's ``now`` less
    that), and the step of its stored plan, the one in force when round ``round_number``
    started (a notice's), else at ``now`` (a preview's). Raises :class:`DeliveryError` when
    the incident has no timeline."""
    latest = await latest_update(session, incident.id)
    if latest is None:
        raise DeliveryError(f"incident {incident.id} has no timeline", retryable=False)
    scopes = await _scopes(session, incident.id)
    step = await _step_of(session, incident, round_number, now)
    return dataclasses.replace(
        facts_of(incident, latest, scopes, None),
        status=incident.status,
        opened_at=incident.created_at,
        escalation_step=step,
    )


async def _scopes(session: AsyncSession, incident_id: int) -> list[tuple[str, str]]:
    """The incident's scopes (kind, value): what its facts say it affects."""
    rows = await session.execute(
        select(IncidentScope.kind, IncidentScope.value).where(
            IncidentScope.incident_id == incident_id
        )
    )
    return [(kind, value) for kind, value in rows]


async def _step_of(
    session: AsyncSession, incident: Incident, round_number: int | None, now: datetime | None
) -> StepFacts | None:
    """The step a ``step`` notice announces: the one of the incident's stored plan in force
    when the notice's round started (when the notice was queued), or, with no round, at
    ``now``. None when that is not known: no plan, an unreadable one, or neither a started
    round nor a time."""
    if incident.plan is None:
        return None
    try:
        plan = PlanSnapshot.from_dict(incident.plan)
    except SnapshotError:
        return None
    started = now
    if round_number is not None:
        started = (
            await session.execute(
                select(Round.started_at).where(
                    Round.incident_id == incident.id, Round.number == round_number
                )
            )
        ).scalar_one_or_none()
    if started is None:
        return None
    step = plan.step_at(max(started - incident.created_at, timedelta(0)))
    return StepFacts(plan.steps.index(step) + 1, len(plan.steps), plan.policy, step.after)


async def _message(
    database: Database,
    renderer: Renderer,
    notice: _Claimed,
    staff_name: str,
    channel: Channel,
    now: datetime,
    window: timedelta,
    public_url: str,
    directory: Directory,
) -> Message:
    async with database.session() as session:
        task = await session.get(Followup, notice.followup_id)
        if task is None:
            raise Cancelled(f"follow-up {notice.followup_id} is gone")
        if task.state not in OPEN_STATES:
            raise Cancelled(f"follow-up {task.id} is {task.state}")
        incident = await session.get(Incident, task.incident_id)
        customer = await session.get(Customer, task.customer_id)
        latest = await latest_update(session, task.incident_id)
        if incident is None or customer is None or latest is None:
            raise DeliveryError(f"follow-up {task.id} lost its incident", retryable=False)
        scopes = await _scopes(session, incident.id)
        points = (
            await session.execute(
                select(ContactPoint.kind, ContactPoint.address).where(
                    ContactPoint.customer_id == customer.id, ContactPoint.kind.in_(("email", "sms"))
                )
            )
        ).all()
        # As the rules count a customer's incidents (escalation.facts.customer_facts): those
        # they were sent something about, started within the window; this one included.
        # A window of 0 looks back without limit (their whole history).
        hits = select(Delivery.incident_id).where(Delivery.customer_id == customer.id)
        if window > timedelta(0):
            hits = hits.join(Incident, Incident.id == Delivery.incident_id).where(
                Incident.created_at >= now - window
            )
        hit = set((await session.execute(hits.group_by(Delivery.incident_id))).scalars().all())
        told = (await escalation_targets(session, [task.id]))[task.id]
    hit.add(incident.id)
    facts = facts_of(incident, latest, scopes, None)
    language = renderer.templates.default_language
    task_context = task_context_of(
        task,
        notice.kind,
        notice.staff,
        customer,
        [address for _, address in points],
        incidents=len(hit),
        window=window,
        title=incident.title,
        language=language,
        now=now,
        public_url=public_url,
        directory=directory,
        told=told,
    )
    return renderer.message(
        RenderRequest(
            kind="followup_task",
            form=form_for(channel.contact),
            facts=facts,
            language=language,
            timezone=directory.staff.timezone_of(notice.staff),
            now=now,
            personal=Personal(staff_name, "", ""),
            task=task_context,
        ),
        idempotency_key=notice.key,
    )


def task_context_of(
    task: Followup,
    notice: str,
    staff: str,
    customer: Customer,
    addresses: list[str],
    *,
    incidents: int,
    window: timedelta,
    title: str,
    language: str,
    now: datetime,
    public_url: str,
    directory: Directory,
    told: set[str],
) -> dict[str, object]:
    """The ``task`` of a follow-up's notice to ``staff``: facts for the templates to phrase
    in their language (docs/templates.md), and the English sentences of old. The deadline
    is given in ``staff``'s zone (``staff.people.<id>.timezone``, else ``staff.timezone``,
    else UTC), and beside it in the customer's."""
    owner = directory.person(task.owner) if task.owner != NOBODY else None
    zone = directory.staff.timezone_of(staff)
    postal = postal_lines(customer.postal_address)
    claim, done = _commands(task, staff, directory, told, now)
    console = f"{public_url.rstrip('/')}/console/followups"
    count, unit = _window_parts(window)
    structured: dict[str, object] = {
        "id": task.id,
        "notice": notice,
        "overdue": now >= task.deadline_at,
        "owner": (owner.name if owner is not None else task.owner) or None,
        "owner_id": task.owner or None,
        "addresses": addresses,
        "language": customer.language,
        "language_name": _language_name(customer.language, language),
        "timezone": customer.timezone,
        "local_deadline": format_when(
            task.deadline_at, customer.timezone, language, now, ahead=True
        ),
        "incidents": incidents,
        "window_count": count,
        "window_unit": unit,
        "tier": customer.tier,
        "postal_address": postal,
        "staff_timezone": zone,
        "console": console,
        "claim_command": claim,
        "done_command": done,
    }
    spoken = structured["language_name"]
    named = f"{spoken} ({customer.language})" if spoken else customer.language
    since = f"in the last {_span(window)}" if window > timedelta(0) else "so far"
    # The English sentences of old, for templates written for them (the shipped ones
    # phrase the facts above in their own language).
    visit = ""
    if task.kind == "visit":
        visit = "; " + (
            f"their postal address is {', '.join(postal)}" if postal else NO_POSTAL_ADDRESS
        )
    english = {
        "contact": f"{', '.join(addresses) or 'no phone or email on file'}; they read {named}; "
        f"their time zone is {customer.timezone}, where the deadline is "
        f"{structured['local_deadline']}{visit}",
        "history": f"{_count(incidents, 'incident')} affected them {since}; tier {customer.tier}",
        "what_to_say": _overdue(task, notice, directory) + _say(task, title, claim, done, console),
    }
    return {
        "customer": customer.name,
        "deadline": format_when(task.deadline_at, zone, language, now, ahead=True),
        "kind": task.kind,
        "incident": title,
        **english,
        **structured,
    }


NO_POSTAL_ADDRESS = "no postal address is on file"
"""What a visit task says (in English: the console, the CLI, the sentences of old) of a
customer without one."""


def postal_lines(stored: str | None) -> list[str]:
    """A stored postal address as its lines (none: [])."""
    return [line for line in (stored or "").split("\n") if line.strip()]


async def visit_addresses(
    session: AsyncSession, tasks: Iterable[Followup], principal: Principal
) -> dict[str, list[str]]:
    """Where the visits among ``tasks`` go, as ``principal`` may read it: ``{customer_id:
    lines}`` (:func:`postal_lines`: [] for a customer with no postal address on file), in
    one query for the whole list. Empty for a role that may not read customers (a viewer),
    and without the customers of calls and emails: the console's queue and the API's
    follow-ups show the same addresses to the same people."""
    if not allows(principal.role, "operator"):
        return {}
    visited = sorted({task.customer_id for task in tasks if task.kind == "visit"})
    if not visited:
        return {}
    rows = await session.execute(
        select(Customer.id, Customer.postal_address).where(Customer.id.in_(visited))
    )
    return {customer_id: postal_lines(address) for customer_id, address in rows}


def _language_name(tag: str, language: str) -> str | None:
    """The customer's language as a reader of ``language`` names it ("Dutch", "Nederlands");
    None when Babel does not know it."""
    try:
        name = Locale.parse(tag.replace("-", "_")).get_display_name(
            Locale.parse(language.replace("-", "_"))
        )
    except (UnknownLocaleError, ValueError, TypeError):
        return None
    return str(name) if name else None


def _window_parts(window: timedelta) -> tuple[int | None, str | None]:
    """The history window as a count and a unit the templates name ("30", "day"); none for
    a window of 0 (the customer's whole history)."""
    seconds = int(window.total_seconds())
    if seconds <= 0:
        return None, None
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            return seconds // size, unit
    return seconds, "second"


def _commands(
    task: Followup, staff: str, directory: Directory, told: set[str], now: datetime
) -> tuple[str | None, str | None]:
    """The commands with which ``staff`` takes the task (None when they need not, or may
    not) and records its outcome (None when they may not even after claiming it: the
    task was given to someone else since the notice was queued): only commands that work
    for them."""
    done = f"broadcaster followups done {task.id} --as {staff}"
    if may_record(task, staff, directory, told=told):
        return None, done
    if may_claim(task, staff, directory, told=told, now=now):
        return f"broadcaster followups claim {task.id} --as {staff}", done
    return None, None


def _span(window: timedelta) -> str:
    """A history window as staff read it: "30 days", "12 hours", "90 minutes"."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        count, rest = divmod(int(window.total_seconds()), size)
        if count and not rest:
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return format_duration(window)


def _overdue(task: Followup, notice: str, directory: Directory) -> str:
    if notice != "escalation":
        return ""
    if task.owner == NOBODY:
        return "Nobody owns it, and it is overdue: see that it is done. "
    owner = directory.person(task.owner)
    named = f"{owner.name} ({task.owner})" if owner is not None else task.owner
    return f"{named}, its owner, recorded no outcome by the deadline: see that it is done. "


def _say(task: Followup, title: str, claim: str | None, done: str | None, console: str) -> str:
    """What to do, and how the one told records it (in English, the ``what_to_say`` of
    old): this task's own id and their staff id, claiming it first when they must."""
    record = f"Record the outcome on the console ({console})"
    if done is not None:
        command = (
            f"'{done} --outcome reached --note \"what was said\"' "
            "(or --outcome voicemail, declined or unreachable)"
        )
        if claim is not None:
            command = f"'{claim}', then {command}"
        record += f" or with {command}"
    record += "."
    if task.kind == "visit":
        return f"Visit in person about '{title}'. {record}"
    return (
        f"Apologise for '{title}', say what happened and what we did, ask how it affected "
        f"them, and offer what the rules attach. {record}"
    )


def _count(n: int, noun: str) -> str:
    """``1 minute``, ``2 minutes``: the English sentences of old (the noun's plain plural)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
