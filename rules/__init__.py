"""Rules: the escalation rule language. Pure: no I/O, no clock, no import of ``broadcaster``.

A rules file (YAML) defines escalation *policies* (ladders of steps by incident age) and an
ordered list of *rules* (conditions on incident and customer facts ⇒ actions: a policy,
follow-ups, compensation, resolution requirements, quiet hours, throttles). The daemon loads
it with the names it knows, evaluates it on facts, snapshots an incident's ladder when
escalation starts, and prints explanations::

    ruleset = load_rules(text, "rules.yaml", channels={...}, staff={...}, groups={...})
    decision = ruleset.evaluate(incident, customer, now=now)
    plan = PlanSnapshot.from_ruleset(ruleset, decision.policy)      # stored with the incident
    step = PlanSnapshot.from_dict(stored).step_at(incident.age(now))
    print(explain(ruleset, incident, customer, now=now).render_text())

Errors::

    RulesError        a rules file that cannot be used; .problems: file:line:col: path: message
    SnapshotError     (a ValueError) a stored plan that cannot be read back

Modules: ``facts`` (inputs), ``schema`` (what a file defines), ``matchers`` (conditions),
``loader`` with ``loader_match``/``loader_actions``/``loader_order`` and ``yamlnodes``,
``evaluate`` (the walk), ``ruleset``, ``snapshot``, ``quiet`` (quiet hours), ``explain``.
The reference for admins is ``docs/rules.md``.
"""

from __future__ import annotations

from pathlib import Path

from rules.durations import format_duration, parse_duration
from rules.evaluate import Check, Decision, RuleTrace
from rules.explain import Explanation, explain
from rules.facts import SEVERITIES, STATUSES, CustomerFacts, IncidentFacts
from rules.loader import load_rules
from rules.matchers import Condition
from rules.quiet import hold_until
from rules.ruleset import RuleSet
from rules.schema import (
    COMPENSATION_KINDS,
    FOLLOWUP_KINDS,
    RESOLUTION_FIELDS,
    URGENCIES,
    Compensation,
    EscalationStep,
    FollowupRequirement,
    Policy,
    QuietHours,
    Rule,
    StaffRef,
    Throttle,
)
from rules.snapshot import PlanSnapshot, SnapshotError
from rules.yamlnodes import RulesError

EXAMPLE_RULES = Path(__file__).resolve().parent / "examples" / "default.yaml"
"""The example rules file shipped with the package (channels email, sms, push; groups
duty-managers, account-managers, care)."""

__all__ = [
    "COMPENSATION_KINDS",
    "EXAMPLE_RULES",
    "FOLLOWUP_KINDS",
    "RESOLUTION_FIELDS",
    "SEVERITIES",
    "STATUSES",
    "URGENCIES",
    "Check",
    "Compensation",
    "Condition",
    "CustomerFacts",
    "Decision",
    "EscalationStep",
    "Explanation",
    "FollowupRequirement",
    "IncidentFacts",
    "PlanSnapshot",
    "Policy",
    "QuietHours",
    "Rule",
    "RuleSet",
    "RuleTrace",
    "RulesError",
    "SnapshotError",
    "StaffRef",
    "Throttle",
    "explain",
    "format_duration",
    "hold_until",
    "load_rules",
    "parse_duration",
]
