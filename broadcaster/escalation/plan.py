"""The rules at work in the engine: plans snapshotted, cadence and channels by step,
follow-ups created as rounds reach customers, and what a resolution must carry.

Snapshot semantics (docs/rules.md): an incident's policy ladder is fixed at its first
round; later edits of the rules file do not change it. Customer-level actions (follow-ups,
compensation, resolution requirements) use the rules active when they are evaluated.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from broadcaster.config.settings import Settings
from broadcaster.dispatch.worker import COUNTED_STATES, UNTHROTTLED
from broadcaster.escalation.facts import customer_facts, incident_facts, load_customers
from broadcaster.escalation.holder import RulesHolder
from broadcaster.followups.directory import Directory
from broadcaster.followups.service import Notice, create_for_customer
from broadcaster.incidents.retention import history_window
from broadcaster.store import ContactPoint, Delivery, DeliveryEvent, Incident, Round
from rules import (
    CustomerFacts,
    Decision,
    IncidentFacts,
    PlanSnapshot,
    SnapshotError,
    Throttle,
    hold_until,
)

log = logging.getLogger("broadcaster.rules")


class Escalation:
    def __init__(self, settings: Settings, holder: RulesHolder, directory: Directory) -> None:
        self.settings = settings
        self.holder = holder
        self.directory = directory
        # One round's incident facts, for all of its batches: counting the audience once
        # per round, not once per batch of 1,000 customers.
        self._round_facts: (
            tuple[int, IncidentFacts, str, datetime | None, datetime | None] | None
        ) = None

    def _plan(self, incident: Incident) -> PlanSnapshot | None:
        if incident.plan is None:
            return None
        try:
            return PlanSnapshot.from_dict(incident.plan)
        except SnapshotError:
            log.exception("stored plan of incident %s is unreadable; using the rules", incident.id)
            return None

    async def cadence(
        self, session: AsyncSession, incident: Incident, now: datetime
    ) -> tuple[timedelta, list[str] | None, list[str]]:
        """How long until the next update (the step's cadence, or less where a later step
        starts before it: :meth:`~rules.PlanSnapshot.next_round_after`), the step's
        channels, and the staff to tell because the incident just entered that step (each
        step once); snapshots the plan first."""
        fallback = self.settings.schedule.cadence.for_severity(incident.severity)
        ruleset = self.holder.current
        if incident.plan is None and ruleset is not None:
            decision = ruleset.evaluate(await incident_facts(session, incident), None, now=now)
            if decision.policy is not None:
                incident.plan = PlanSnapshot.from_ruleset(ruleset, decision.policy).to_dict()
                log.info(
                    "escalation plan fixed",
                    extra={"incident": incident.id, "policy": decision.policy},
                )
        plan = self._plan(incident)
        if plan is None:
            return fallback, None, []
        age = max(now - incident.created_at, timedelta(0))
        step = plan.step_at(age)
        channels = [c for c in step.channels if c in self.settings.channels] or None
        tell: list[str] = []
        key = int(step.after.total_seconds())
        notified = list(incident.steps_notified or [])
        if step.notify and key not in notified:
            for ref in step.notify:
                tell += self.directory.members(ref)
            incident.steps_notified = [*notified, key]  # a new list: the column is written
        return plan.next_round_after(age), channels, list(dict.fromkeys(tell))

    async def decide(
        self, session: AsyncSession, incident: Incident, now: datetime, *, resolving: bool = False
    ) -> Decision | None:
        """The incident's own decision now (resolution requirements, compensation);
        ``resolving``: as it will be once resolved now, so that rules on
        ``incident.status: resolved`` apply to its resolution."""
        ruleset = self.holder.current
        if ruleset is None:
            return None
        facts = await incident_facts(session, incident)
        if resolving:
            # Never before its start: a host whose clock is behind the declaring one's.
            resolved_at = max(now, facts.started_at)
            facts = dataclasses.replace(facts, status="resolved", resolved_at=resolved_at)
        return ruleset.evaluate(facts, None, now=now, plan=self._plan(incident))

    async def on_batch(
        self,
        session: AsyncSession,
        round_id: int,
        incident_id: int,
        customer_ids: Sequence[str],
        now: datetime,
    ) -> list[Notice]:
        """For a batch of affected customers: create the follow-ups the rules require, and
        hold non-critical messages of customers in their quiet hours until the window ends."""
        ruleset = self.holder.current
        if ruleset is None or not customer_ids:
            return []
        incident = await session.get(Incident, incident_id)
        if incident is None:
            return []
        if self._round_facts is not None and self._round_facts[0] == round_id:
            _, facts, round_kind, next_due, previous = self._round_facts
        else:
            facts = await incident_facts(session, incident)
            round_kind, next_due = (
                await session.execute(
                    select(Round.kind, Round.next_due_at).where(Round.id == round_id)
                )
            ).one()
            previous = (
                await session.execute(
                    select(func.max(Round.started_at)).where(
                        Round.incident_id == incident_id, Round.id < round_id
                    )
                )
            ).scalar_one()
            self._round_facts = (round_id, facts, round_kind, next_due, previous)
        plan = self._plan(incident)
        window = history_window(self.settings, ruleset)
        loaded = await load_customers(session, customer_ids)
        people = await customer_facts(session, loaded, now, window)
        rows = {c.id: c for c in loaded}
        notices: list[Notice] = []
        held_until: dict[datetime, list[str]] = {}
        promised: dict[datetime, list[str]] = {}
        decided: list[tuple[str, CustomerFacts, Decision, datetime | None]] = []
        for customer_id in customer_ids:
            person = people.get(customer_id)
            if person is None:
                continue
            if incident.created_at not in person.incident_history:
                history = tuple(sorted((*person.incident_history, incident.created_at)))
                person = dataclasses.replace(person, incident_history=history)
            decision = ruleset.evaluate(facts, person, now=now, plan=plan)
            held = hold_until(decision.quiet_hours, person.timezone, now, incident.severity)
            decided.append((customer_id, person, decision, held))
        owed = await _promises_owed(
            session, incident_id, round_id, [c for c, _, _, held in decided if held is not None]
        )
        woken: list[str] = []
        for customer_id, person, decision, held in decided:
            owing = owed.get(customer_id)
            if held is not None and owing is not None and owing < held:
                # Their last message promised a time inside their quiet hours (sent before
                # the incident's severity let rounds be held): this one keeps that promise,
                # and promises the end of the window for the next.
                held = None
            if held is not None:
                held_until.setdefault(held, []).append(customer_id)
            elif previous is not None and _was_quiet(decision, person.timezone, previous):
                # The incident's last round fell in their quiet hours, so a message of it
                # may still wait for the window's end: this one goes in its place.
                woken.append(customer_id)
            if next_due is not None:
                # The next round will be held for this customer: this message promises
                # the end of their quiet hours, not a time they will hear nothing at.
                later = hold_until(decision.quiet_hours, person.timezone, next_due, facts.severity)
                if later is not None:
                    promised.setdefault(later, []).append(customer_id)
            # A held message is not throttled: it goes out alone at the window's end,
            # standing in for the earlier ones it cancels, the first notice among them
            # maybe (_supersede).
            if decision.throttle is not None and round_kind not in UNTHROTTLED and held is None:
                await self._throttle(session, round_id, customer_id, decision.throttle, now)
            if decision.followups:
                notices += await create_for_customer(
                    session,
                    incident_id,
                    rows[customer_id],
                    decision.followups,
                    now,
                    self.directory,
                )
        # One statement per end of a quiet window (customers of a time zone share it), not
        # one per customer: at night, with every customer held, a statement each made a
        # round's writing eleven times slower.
        for column, by_time in (("next_attempt_at", held_until), ("promised_at", promised)):
            for at, customers in by_time.items():
                await session.execute(
                    update(Delivery)
                    .where(
                        Delivery.round_id == round_id,
                        Delivery.customer_id.in_(customers),
                        Delivery.state == "pending",
                    )
                    .values({column: at})
                    .execution_options(synchronize_session=False)
                )
        if held_until:
            held_customers = [c for customers in held_until.values() for c in customers]
            await _supersede(session, incident_id, round_id, round_kind, held_customers, now)
        if woken:
            await _supersede(session, incident_id, round_id, round_kind, woken, now, held=False)
        return notices

    async def _throttle(
        self, session: AsyncSession, round_id: int, customer_id: str, rule: Throttle, now: datetime
    ) -> None:
        """A rule's per-customer throttle: beyond ``max`` messages per ``per`` on a channel,
        this round's message moves to the rule's fallback channel (or fails, saying why)."""
        pending = (
            (
                await session.execute(
                    select(Delivery).where(
                        Delivery.round_id == round_id,
                        Delivery.customer_id == customer_id,
                        Delivery.state == "pending",
                    )
                )
            )
            .scalars()
            .all()
        )
        taken = {d.channel for d in pending}
        for delivery in pending:
            if rule.channels and delivery.channel not in rule.channels:
                continue
            recent = (
                await session.execute(
                    select(func.count())
                    .select_from(Delivery)
                    .where(
                        Delivery.customer_id == customer_id,
                        Delivery.channel == delivery.channel,
                        Delivery.id != delivery.id,
                        Delivery.state.in_(COUNTED_STATES),
                        Delivery.created_at >= now - rule.per,
                    )
                )
            ).scalar_one()
            if recent < rule.max:
                continue
            point = None
            fallback = rule.fallback
            spec = self.settings.channels.get(fallback) if fallback else None
            if fallback and spec is not None and fallback not in taken:
                point = (
                    await session.execute(
                        select(ContactPoint)
                        .where(
                            ContactPoint.customer_id == customer_id,
                            ContactPoint.kind == spec.contact,
                            ContactPoint.opted_out.is_(False),
                            ContactPoint.disabled.is_(False),
                        )
                        .order_by(ContactPoint.id)
                        .limit(1)
                    )
                ).scalar_one_or_none()
            if fallback and point is not None:
                session.add(
                    DeliveryEvent(
                        delivery_id=delivery.id,
                        at=now,
                        state="rerouted",
                        detail=f"rule {rule.rule}: throttled on "
                        f"{delivery.channel}; sent on {fallback}",
                    )
                )
                delivery.channel, delivery.address = fallback, point.address
                delivery.contact_point_id = point.id
                taken.add(fallback)
            else:
                delivery.state = "failed"
                delivery.last_error = f"rule {rule.rule}: at most {rule.max} per {rule.per}"
                session.add(
                    DeliveryEvent(
                        delivery_id=delivery.id, at=now, state="failed", detail=delivery.last_error
                    )
                )


def _was_quiet(decision: Decision, timezone: str, at: datetime) -> bool:
    """Whether ``at`` fell in the customer's quiet hours (whatever the severity then)."""
    try:
        return hold_until(decision.quiet_hours, timezone, at, "minor") is not None
    except ValueError:  # a zone unknown here: nothing of theirs was held
        return False


async def _promises_owed(
    session: AsyncSession, incident_id: int, round_id: int, customers: list[str]
) -> dict[str, datetime]:
    """The next update each customer's last message of the incident (before this round)
    promised them: its own promise (``promised_at``), else its round's next due time."""
    if not customers:
        return {}
    last = (
        select(Delivery.customer_id, func.max(Delivery.round_id).label("round_id"))
        .where(
            Delivery.incident_id == incident_id,
            Delivery.customer_id.in_(customers),
            Delivery.round_id < round_id,
            Delivery.state.in_(COUNTED_STATES),
        )
        .group_by(Delivery.customer_id)
        .subquery()
    )
    rows = await session.execute(
        select(last.c.customer_id, Round.next_due_at, func.max(Delivery.promised_at))
        .join(Round, Round.id == last.c.round_id)
        .join(
            Delivery,
            (Delivery.round_id == last.c.round_id) & (Delivery.customer_id == last.c.customer_id),
        )
        .group_by(last.c.customer_id, Round.next_due_at)
    )
    owed: dict[str, datetime] = {}
    for customer_id, next_due, own in rows:
        promise = own or next_due
        if promise is not None:
            owed[customer_id] = promise
    return owed


STANDS_IN = {"first": 2, "update": 1}
"""The kinds a held message takes from the earlier ones it cancels, the stronger first: a
customer never told of the incident gets its first notice, one whose operator news was held
gets an update (each with the latest facts), never "no news yet" in their place."""


async def _supersede(
    session: AsyncSession,
    incident_id: int,
    round_id: int,
    round_kind: str,
    customers: list[str],
    now: datetime,
    *,
    held: bool = True,
) -> int:
    """Customers whose message of this round is held for their quiet hours (``held``): their
    messages of the incident's earlier rounds that still wait (held too, or waiting for a
    retry) are cancelled, superseded by this one. A night of rounds would otherwise arrive as
    a flood of stale updates when the window ends, each promising a time already past. Not
    ``held``: customers whose quiet hours have just ended; what the night held for them,
    due now, is superseded by this round, sent now. The message left says what the cancelled
    ones would have (:data:`STANDS_IN`): the first notice to a customer who has not had it,
    an update where an update was held. Returns how many were cancelled."""
    reason = f"superseded by round {round_id}" + (
        " (held for the customer's quiet hours)" if held else ""
    )
    waiting = Delivery.next_attempt_at > now if held else true()
    cancelled = (
        await session.execute(
            update(Delivery)
            .where(
                Delivery.incident_id == incident_id,
                Delivery.round_id < round_id,
                Delivery.customer_id.in_(customers),
                Delivery.state == "pending",
                waiting,
            )
            .values(state="cancelled", last_error=reason)
            .returning(Delivery.id, Delivery.customer_id, Delivery.round_id, Delivery.kind)
            .execution_options(synchronize_session=False)
        )
    ).all()
    session.add_all(
        [
            DeliveryEvent(delivery_id=row[0], at=now, state="cancelled", detail=reason)
            for row in cancelled
        ]
    )
    if cancelled and round_kind in ("update", "no_news"):
        rounds = {row[2] for row in cancelled if row[3] is None}
        kinds: dict[int, str] = {}
        if rounds:
            found = await session.execute(select(Round.id, Round.kind).where(Round.id.in_(rounds)))
            kinds = {round_id: kind for round_id, kind in found}
        strongest: dict[str, str] = {}
        for _, customer_id, earlier_round, kind in cancelled:
            said = kind or kinds.get(earlier_round, "")
            if STANDS_IN.get(said, 0) > STANDS_IN.get(strongest.get(customer_id, round_kind), 0):
                strongest[customer_id] = said
        by_kind: dict[str, list[str]] = {}
        for customer_id, kind in strongest.items():
            by_kind.setdefault(kind, []).append(customer_id)
        for kind, who in by_kind.items():
            await session.execute(
                update(Delivery)
                .where(
                    Delivery.round_id == round_id,
                    Delivery.customer_id.in_(who),
                    Delivery.state == "pending",
                )
                .values(kind=kind)
                .execution_options(synchronize_session=False)
            )
    return len(cancelled)
