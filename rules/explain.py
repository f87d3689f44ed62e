"""Why the rules decided what they did: every rule in order, every condition with the value
it saw, what each matching rule's actions did, and the resulting decision.

``broadcaster rules explain`` prints ``Explanation.render_text()``. The explanation is made
by the same walk as ``RuleSet.evaluate``, so its decision is always the evaluated one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rules.evaluate import Decision, RuleTrace, evaluate
from rules.facts import CustomerFacts, IncidentFacts
from rules.matchers import show
from rules.ruleset import RuleSet
from rules.schema import EscalationStep, FollowupRequirement
from rules.snapshot import PlanSnapshot

_OUTCOME = {
    "matched": "MATCHED",
    "not matched": "not matched",
    "needs customer": "skipped: it matches customer facts and no customer was given",
    "not reached": "not reached",
}


@dataclass(frozen=True)
class Explanation:
    """One evaluation, rule by rule (``rules``, in file order) and its ``decision``."""

    source: str
    digest: str
    incident: IncidentFacts
    customer: CustomerFacts | None
    now: datetime
    rules: tuple[RuleTrace, ...]
    decision: Decision
    plan: PlanSnapshot | None = None

    def render_text(self) -> str:
        """A plain-text report for the terminal (no colour codes; ✓ and ✗ mark checks)."""
        lines = [f"Rules: {self.source} ({self.digest[:19]})", *self._facts(), ""]
        stopper = self.decision.stopped_by
        for number, trace in enumerate(self.rules, start=1):
            head = f"{number}. {trace.rule} (line {_line(trace.where)}): {_OUTCOME[trace.outcome]}"
            if trace.outcome == "matched":
                head += ", stops here" if trace.stopped else ", continues"
            elif trace.outcome == "not reached":
                head += f": {stopper} stopped the evaluation"
            lines.append(head)
            if trace.outcome != "not reached":
                if not trace.checks:
                    lines.append("     (no conditions: matches everything)")
                for check in trace.checks:
                    mark = "✓" if check.ok else "✗"
                    lines.append(f"     {mark} {check.condition}   (actual: {check.actual})")
            lines.extend(f"     → {note}" for note in trace.notes)
        if not self.rules:
            lines.append("(the rules file has no rules)")
        lines += ["", "Decision:", *self._decision()]
        return "\n".join(lines) + "\n"

    def _facts(self) -> list[str]:
        i = self.incident
        out = [
            f"At: {self.now.isoformat()}",
            f"Incident: {i.severity}, {i.status}, age {show(self.decision.age)} "
            f"(started {i.started_at.isoformat()}"
            + (f", resolved {i.resolved_at.isoformat()})" if i.resolved_at else ")"),
            f"  components {show(i.components)}, regions {show(i.regions)}, source {i.source}, "
            f"affected customers {i.affected_customers}, labels "
            + (", ".join(f"{k}={v}" for k, v in sorted(i.labels.items())) or "none"),
        ]
        c = self.customer
        if c is None:
            out.append("Customer: none (the incident's own decision)")
        else:
            out += [
                f"Customer: {c.id}, tier {c.tier}, tags {show(c.tags)}, language {c.language}, "
                f"region {show(c.region)}, SLA {show(c.sla)}, time zone {c.timezone}",
                f"  incidents in history {len(c.incident_history)}, "
                f"open follow-ups {c.open_followups}",
            ]
        return out

    def _decision(self) -> list[str]:
        d = self.decision
        if d.policy is None:
            policy = "none (no matching rule chose one)"
        elif self.plan is not None:
            policy = f"{d.policy} (from the incident's plan snapshot, {self.plan.digest[:19]})"
        else:
            policy = d.policy
        out = [f"  policy: {policy}"]
        if d.step is not None:
            out.append(f"  step: {_step(d.step)}")
        out.append(f"  matched rules: {', '.join(d.matched_rules) or 'none'}")
        out.append(f"  follow-ups: {'none' if not d.followups else ''}")
        out.extend(f"    - {_followup(f)}" for f in d.followups)
        out.append(f"  compensation: {'none' if not d.compensation else ''}")
        out.extend(
            f"    - {c.kind} {c.amount} {c.currency} (rule {c.rule})" for c in d.compensation
        )
        required = ", ".join(sorted(d.required_for_resolution)) or "nothing"
        out.append(f"  resolution requires: {required}")
        q = d.quiet_hours
        out.append(
            "  quiet hours: none"
            if q is None
            else f"  quiet hours: {q.start:%H:%M}–{q.end:%H:%M} in the customer's time zone, "
            f"non-critical updates held (rule {q.rule})"
        )
        t = d.throttle
        out.append(
            "  throttle: none"
            if t is None
            else f"  throttle: at most {t.max} per {show(t.per)} on "
            f"{', '.join(t.channels) or 'every channel'}"
            + (f", then {t.fallback}" if t.fallback else "")
            + f" (rule {t.rule})"
        )
        return [line.rstrip() for line in out]


def explain(
    ruleset: RuleSet,
    incident: IncidentFacts,
    customer: CustomerFacts | None = None,
    *,
    now: datetime,
    plan: PlanSnapshot | None = None,
) -> Explanation:
    """Evaluate like ``ruleset.evaluate`` and record why, rule by rule."""
    trace: list[RuleTrace] = []
    decision = evaluate(ruleset, incident, customer, now, plan, trace)
    return Explanation(
        ruleset.source, ruleset.digest, incident, customer, now, tuple(trace), decision, plan
    )


def _step(step: EscalationStep) -> str:
    notify = ", ".join(str(r) for r in step.notify) or "nobody"
    return (
        f"from {show(step.after)}: every {show(step.every)} on {', '.join(step.channels)}, "
        f"urgency {step.urgency}, staff notified on entry: {notify}"
    )


def _followup(f: FollowupRequirement) -> str:
    text = f"{f.kind} by {f.owner} within {show(f.deadline)}"
    if f.reminder_every is not None:
        text += f", reminders every {show(f.reminder_every)}"
    if f.escalation:
        text += f", then escalate to {' → '.join(str(r) for r in f.escalation)}"
        if f.escalation_interval is not None:
            text += f" every {show(f.escalation_interval)}"
    return text + f" (rule {f.rule})"


def _line(where: str) -> str:
    parts = where.rsplit(":", 2)
    return parts[1] if len(parts) == 3 else "?"
