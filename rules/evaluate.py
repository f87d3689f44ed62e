"""Evaluation: facts in, ``Decision`` out. Pure: no clock (``now`` is passed), no I/O.

Rules are walked in file order. A rule matches when all its conditions hold; a matching rule
contributes its actions and, unless it has ``continue: true``, ends the walk. A rule with
customer conditions is skipped (neither matches nor ends the walk) when no customer is given.

How actions combine over the matching rules:

- ``policy``, ``quiet_hours``, ``throttle``: the first matching rule that sets one wins;
- ``followup``, ``compensation``: one each per matching rule, in rule order;
- ``require_for_resolution``: the union.

Given the incident's plan snapshot, ``policy`` and ``step`` come from the plan (the ladder is
fixed when escalation starts) and everything else from the rules as they are now.

The same walk records, when asked, why each rule did or did not match; ``explain`` prints it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from rules.matchers import Condition, MatchContext, show
from rules.schema import (
    Compensation,
    CompensationAction,
    EscalationStep,
    FollowupRequirement,
    QuietHours,
    Rule,
    Throttle,
)

if TYPE_CHECKING:
    from rules.facts import CustomerFacts, IncidentFacts
    from rules.ruleset import RuleSet
    from rules.snapshot import PlanSnapshot

Outcome = Literal["matched", "not matched", "needs customer", "not reached"]


@dataclass(frozen=True)
class Decision:
    """What the rules decide for an incident (and a customer) at one moment.

    ``policy`` and ``step`` are the escalation ladder and its rung for the incident's age
    (from the plan snapshot when one was passed). ``stopped_by`` is the matching rule without
    ``continue`` that ended the walk, if any.
    """

    policy: str | None = None
    step: EscalationStep | None = None
    followups: list[FollowupRequirement] = field(default_factory=list)
    compensation: list[Compensation] = field(default_factory=list)
    required_for_resolution: frozenset[str] = frozenset()
    required_by: tuple[str, ...] = ()
    """The matching rules that require parts of the resolution, in order."""
    quiet_hours: QuietHours | None = None
    throttle: Throttle | None = None
    matched_rules: list[str] = field(default_factory=list)
    stopped_by: str | None = None
    age: timedelta = timedelta(0)


@dataclass(frozen=True)
class Check:
    """One condition as evaluated: ``incident.severity >= major``, actual ``minor``, failed."""

    condition: str
    actual: str
    ok: bool
    where: str = ""


@dataclass(frozen=True)
class RuleTrace:
    """One rule in one evaluation: its outcome, every condition checked, what its actions
    did (``notes``) and whether it ended the walk."""

    rule: str
    where: str
    outcome: Outcome
    checks: tuple[Check, ...] = ()
    notes: tuple[str, ...] = ()
    stopped: bool = False


def evaluate(
    ruleset: RuleSet,
    incident: IncidentFacts,
    customer: CustomerFacts | None,
    now: datetime,
    plan: PlanSnapshot | None = None,
    trace: list[RuleTrace] | None = None,
) -> Decision:
    """Walk the rules; append a ``RuleTrace`` per rule to ``trace`` when one is given."""
    ctx = MatchContext(incident, customer, now)
    acc = _Accumulator()
    stopped_by: str | None = None
    for rule in ruleset.rules:
        if stopped_by is not None:
            if trace is not None:
                trace.append(RuleTrace(rule.name, rule.where, "not reached"))
            continue
        if rule.needs_customer and customer is None:
            if trace is not None:
                checks = _checks(rule.conditions, ctx)
                trace.append(RuleTrace(rule.name, rule.where, "needs customer", checks))
            continue
        if trace is None:
            matched = all(c.holds(ctx) for c in rule.conditions)
            checks = ()
        else:
            checks = _checks(rule.conditions, ctx)
            matched = all(c.ok for c in checks)
        if not matched:
            if trace is not None:
                trace.append(RuleTrace(rule.name, rule.where, "not matched", checks))
            continue
        notes = acc.apply(rule, ctx, tracing=trace is not None)
        if not rule.continues:
            stopped_by = rule.name
        if trace is not None:
            trace.append(
                RuleTrace(rule.name, rule.where, "matched", checks, notes, not rule.continues)
            )
    policy = plan.policy if plan is not None else acc.policy
    step: EscalationStep | None = None
    if plan is not None:
        step = plan.step_at(ctx.age)
    elif acc.policy is not None and acc.policy in ruleset.policies:
        step = ruleset.policies[acc.policy].step_at(ctx.age)
    return Decision(
        policy=policy,
        step=step,
        followups=acc.followups,
        compensation=acc.compensation,
        required_for_resolution=frozenset(acc.required),
        required_by=tuple(acc.requiring),
        quiet_hours=acc.quiet_hours,
        throttle=acc.throttle,
        matched_rules=acc.matched,
        stopped_by=stopped_by,
        age=ctx.age,
    )


def _checks(conditions: tuple[Condition, ...], ctx: MatchContext) -> tuple[Check, ...]:
    # Every condition, not only up to the first failure: explain shows all that failed.
    return tuple(
        Check(c.describe(), show(c.actual(ctx)), c.holds(ctx), c.where) for c in conditions
    )


@dataclass
class _Accumulator:
    policy: str | None = None
    policy_rule: str = ""
    followups: list[FollowupRequirement] = field(default_factory=list)
    compensation: list[Compensation] = field(default_factory=list)
    required: set[str] = field(default_factory=set)
    requiring: list[str] = field(default_factory=list)
    quiet_hours: QuietHours | None = None
    throttle: Throttle | None = None
    matched: list[str] = field(default_factory=list)

    def apply(self, rule: Rule, ctx: MatchContext, *, tracing: bool) -> tuple[str, ...]:
        """Add a matching rule's actions; say what happened to each when ``tracing``."""
        self.matched.append(rule.name)
        if rule.policy is not None and self.policy is None:
            self.policy, self.policy_rule = rule.policy, rule.name
        if rule.followup is not None:
            self.followups.append(rule.followup)
        granted = rule.compensation is not None and self._compensate(rule.compensation, ctx)
        self.required |= rule.require_for_resolution
        if rule.require_for_resolution:
            self.requiring.append(rule.name)
        first_quiet = rule.quiet_hours is not None and self.quiet_hours is None
        if first_quiet:
            self.quiet_hours = rule.quiet_hours
        first_throttle = rule.throttle is not None and self.throttle is None
        if first_throttle:
            self.throttle = rule.throttle
        if not tracing:
            return ()
        return tuple(self._notes(rule, ctx, granted, first_quiet, first_throttle))

    def _compensate(self, action: CompensationAction, ctx: MatchContext) -> bool:
        if all(c.holds(ctx) for c in action.when):
            self.compensation.append(action.compensation)
            return True
        return False

    def _notes(
        self, rule: Rule, ctx: MatchContext, granted: bool, quiet: bool, throttle: bool
    ) -> Iterator[str]:
        """What each action of a matching rule did, for ``explain``."""
        if rule.policy is not None:
            if self.policy_rule == rule.name:
                yield f"policy {rule.policy} chosen"
            else:
                yield f"policy {rule.policy} ignored: {self.policy_rule} chose one first"
        if rule.followup is not None:
            f = rule.followup
            yield f"follow-up: {f.kind} by {f.owner} within {show(f.deadline)}"
        if rule.compensation is not None:
            comp = rule.compensation.compensation
            what = f"{comp.kind} {comp.amount} {comp.currency}"
            verdict = f"compensation: {what}" if granted else f"compensation {what} not granted"
            checked = "; ".join(
                f"{'✓' if c.holds(ctx) else '✗'} {c.describe()} (actual: {show(c.actual(ctx))})"
                for c in rule.compensation.when
            )
            yield f"{verdict}: {checked}" if checked else verdict
        if rule.require_for_resolution:
            yield "resolution requires " + ", ".join(sorted(rule.require_for_resolution))
        if rule.quiet_hours is not None:
            yield (
                "quiet hours set"
                if quiet
                else f"quiet hours ignored: {self.quiet_hours.rule if self.quiet_hours else ''} "
                "set them first"
            )
        if rule.throttle is not None:
            yield (
                "throttle set"
                if throttle
                else f"throttle ignored: {self.throttle.rule if self.throttle else ''} set one "
                "first"
            )
