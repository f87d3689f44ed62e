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

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from broadcaster.config.settings import Settings
from broadcaster.dispatch.worker import COUNTED_STATES, UNTHROTTLED
from broadcaster.escalation.facts import customer_facts, incident_facts, load_customers
from broadcaster.escalation.holder import RulesHolder
from broadcaster.followups.directory import Directory
from broadcaster.followups.service import Notice, create_for_customer
from broadcaster.incidents.retention import history_window
from broadcaster.store import ContactPoint, Delivery, DeliveryEvent, Incident, Round
from rules import Decision, IncidentFacts, PlanSnapshot, SnapshotError, Throttle, hold_until

log = logging.getLogger("broadcaster.rules")


class Escalation:
    def __init__(self, settings: Settings, holder: RulesHolder, directory: Directory) -> None:
        self.settings = settings
        self.holder = holder
        self.directory = directory
        # One round's incident facts, for all of its batches: counting the audience once
        # per round, not once per batch of 1,000 customers.
        self._round_facts: tuple[int, IncidentFacts, str, datetime | None] | None = None

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
            _, facts, round_kind, next_due = self._round_facts
        else:
            facts = await incident_facts(session, incident)
            round_kind, next_due = (
                await session.execute(
                    select(Round.kind, Round.next_due_at).where(Round.id == round_id)
                )
            ).one()
            self._round_facts = (round_id, facts, round_kind, next_due)
        plan = self._plan(incident)
        window = history_window(self.settings, ruleset)
        loaded = await load_customers(session, customer_ids)
        people = await customer_facts(session, loaded, now, window)
        rows = {c.id: c for c in loaded}
        notices: list[Notice] = []
        held_until: dict[datetime, list[str]] = {}
        promised: dict[datetime, list[str]] = {}
        for customer_id in customer_ids:
            person = people.get(customer_id)
            if person is None:
                continue
            if incident.created_at not in person.incident_history:
                history = tuple(sorted((*person.incident_history, incident.created_at)))
                person = dataclasses.replace(person, incident_history=history)
            decision = ruleset.evaluate(facts, person, now=now, plan=plan)
            held = hold_until(decision.quiet_hours, person.timezone, now, incident.severity)
            if held is not None:
                held_until.setdefault(held, []).append(customer_id)
            if next_due is not None:
                # The next round will be held for this customer: this message promises
                # the end of their quiet hours, not a time they will hear nothing at.
                later = hold_until(decision.quiet_hours, person.timezone, next_due, facts.severity)
                if later is not None:
                    promised.setdefault(later, []).append(customer_id)
            if decision.throttle is not None and round_kind not in UNTHROTTLED:
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
            await _supersede_held(session, incident_id, round_id, held_customers, now)
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


async def _supersede_held(
    session: AsyncSession, incident_id: int, round_id: int, customers: list[str], now: datetime
) -> int:
    """Customers whose message of this round is held for their quiet hours: their messages
    of the incident's earlier rounds that still wait (held too, or waiting for a retry) are
    cancelled, superseded by this one. A night of rounds would otherwise arrive as a flood of
    stale updates when the window ends, each promising a time already past. Returns how many
    were cancelled."""
    reason = f"superseded by round {round_id} (held for the customer's quiet hours)"
    ids = list(
        (
            await session.execute(
                update(Delivery)
                .where(
                    Delivery.incident_id == incident_id,
                    Delivery.round_id < round_id,
                    Delivery.customer_id.in_(customers),
                    Delivery.state == "pending",
                    Delivery.next_attempt_at > now,
                )
                .values(state="cancelled", last_error=reason)
                .returning(Delivery.id)
                .execution_options(synchronize_session=False)
            )
        ).scalars()
    )
    session.add_all(
        [DeliveryEvent(delivery_id=i, at=now, state="cancelled", detail=reason) for i in ids]
    )
    return len(ids)
