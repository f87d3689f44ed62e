"""Property tests: evaluation is total and deterministic on any valid facts, follows rule
order and ``continue`` exactly, and keeps the incident's own decision free of customers; the
loader fails only with located ``RulesError``s; snapshots, durations and quiet hours hold
their contracts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rules import (
    Condition,
    CustomerFacts,
    IncidentFacts,
    PlanSnapshot,
    Rule,
    RuleSet,
    explain,
)
from tests.unit.test_rules_support import example, load_named

ZONES = [
    "UTC",
    "Europe/Amsterdam",
    "America/New_York",
    "Asia/Kolkata",
    "Pacific/Chatham",
    "Australia/Lord_Howe",
    "America/St_Johns",
]
WORDS = ["payments", "api", "db", "eu", "us", "web", "press", "vip", "r0", "r1", "r2", "r3"]
SLOW = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

words = st.frozensets(st.sampled_from(WORDS), max_size=4)
instants = st.datetimes(
    min_value=datetime(1970, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from([ZoneInfo(z) for z in ZONES]),
)


@st.composite
def incidents(draw: st.DrawFn) -> IncidentFacts:
    started = draw(instants)
    resolved = draw(st.none() | st.timedeltas(timedelta(0), timedelta(days=20)))
    return IncidentFacts(
        severity=draw(st.sampled_from(["minor", "major", "critical"])),
        status=draw(
            st.sampled_from(["investigating", "identified", "monitoring", "resolved", "closed"])
        ),
        started_at=started,
        components=draw(words),
        regions=draw(words),
        source=draw(st.sampled_from(["operator", "alertmanager", "statuspage"])),
        labels=draw(
            st.dictionaries(
                st.sampled_from(["team", "env", "r0", "r1", "r2"]),
                st.sampled_from(["web", "prod-eu", "y", "n"]),
            )
        ),
        affected_customers=draw(st.integers(0, 10**9)),
        # Arithmetic in UTC: adding to a local time drops its fold (the hour that repeats).
        resolved_at=None if resolved is None else started.astimezone(UTC) + resolved,
    )


@st.composite
def customers(draw: st.DrawFn, around: datetime) -> CustomerFacts:
    history = draw(st.lists(st.timedeltas(timedelta(days=-90), timedelta(days=2)), max_size=6))
    return CustomerFacts(
        id=draw(st.sampled_from(["c-1", "c-22", "acme"])),
        tier=draw(st.sampled_from(["standard", "vip", "business"])),
        tags=draw(words),
        language=draw(st.sampled_from(["en", "nl", "de"])),
        region=draw(st.none() | st.sampled_from(["eu", "us"])),
        timezone=draw(st.sampled_from(ZONES)),
        incident_history=tuple(around + d for d in history),
        open_followups=draw(st.integers(0, 9)),
        sla=draw(st.none() | st.sampled_from(["gold", "silver"])),
    )


@st.composite
def situations(draw: st.DrawFn) -> tuple[IncidentFacts, CustomerFacts | None, datetime]:
    facts = draw(incidents())
    now = facts.started_at + draw(st.timedeltas(timedelta(days=-1), timedelta(days=60)))
    person = draw(st.none() | customers(now))
    return facts, person, now


# --- evaluation on the example rules -------------------------------------------------------

EXAMPLE = example()


@SLOW
@given(situations())
def test_example_evaluation_is_total_and_deterministic(
    situation: tuple[IncidentFacts, CustomerFacts | None, datetime],
) -> None:
    facts, person, now = situation
    decision = EXAMPLE.evaluate(facts, person, now=now)
    assert decision == EXAMPLE.evaluate(facts, person, now=now)
    explained = explain(EXAMPLE, facts, person, now=now)
    assert explained.decision == decision
    assert isinstance(explained.render_text(), str)
    assert decision.policy in ("critical", "default")
    assert decision.step == EXAMPLE.policies[decision.policy].step_at(facts.age(now))
    assert [f.rule for f in decision.followups] == [
        r for r in decision.matched_rules if EXAMPLE.rule(r).followup is not None
    ]


@SLOW
@given(situations())
def test_the_incidents_own_decision_ignores_the_customer(
    situation: tuple[IncidentFacts, CustomerFacts | None, datetime],
) -> None:
    facts, person, now = situation
    assume(person is not None)
    alone = EXAMPLE.evaluate(facts, now=now)
    with_customer = EXAMPLE.evaluate(facts, person, now=now)
    assert (alone.policy, alone.step, alone.required_for_resolution) == (
        with_customer.policy,
        with_customer.step,
        with_customer.required_for_resolution,
    )


# --- order and continue, against a reference walk ------------------------------------------


@dataclass(frozen=True)
class Spec:
    """Rule i matches when label r<i> is "y" (incident), or tag r<i> is set (customer), or
    always (catch-all)."""

    kind: str  # "incident" | "customer" | "all"
    continues: bool


def build(specs: list[Spec]) -> RuleSet:
    rules = []
    for i, spec in enumerate(specs):
        conditions: tuple[Condition, ...] = ()
        if spec.kind == "incident":
            conditions = (Condition("incident.labels", "eq", "y", key=f"r{i}"),)
        elif spec.kind == "customer":
            conditions = (Condition("customer.tags", "contains", f"r{i}"),)
        rules.append(Rule(f"r{i}", conditions, spec.continues))
    return RuleSet({}, tuple(rules))


def reference(specs: list[Spec], labels: dict[str, str], tags: frozenset[str] | None) -> list[str]:
    matched = []
    for i, spec in enumerate(specs):
        if spec.kind == "customer" and tags is None:
            continue
        hit = (
            spec.kind == "all"
            or (spec.kind == "incident" and labels.get(f"r{i}") == "y")
            or (spec.kind == "customer" and tags is not None and f"r{i}" in tags)
        )
        if hit:
            matched.append(f"r{i}")
            if not spec.continues:
                break
    return matched


@given(
    st.lists(
        st.builds(Spec, st.sampled_from(["incident", "customer", "all"]), st.booleans()),
        max_size=6,
    ),
    st.dictionaries(
        st.sampled_from(["r0", "r1", "r2", "r3", "r4", "r5"]), st.sampled_from(["y", "n"])
    ),
    st.none() | st.frozensets(st.sampled_from(["r0", "r1", "r2", "r3", "r4", "r5"])),
)
def test_order_and_continue(
    specs: list[Spec], labels: dict[str, str], tags: frozenset[str] | None
) -> None:
    ruleset = build(specs)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    facts = IncidentFacts("minor", "investigating", now, labels=labels)
    person = None if tags is None else CustomerFacts("c", tags=tags)
    decision = ruleset.evaluate(facts, person, now=now)
    expected = reference(specs, labels, tags)
    assert decision.matched_rules == expected
    last = specs[int(expected[-1][1:])] if expected else None
    assert decision.stopped_by == (expected[-1] if last and not last.continues else None)
    traced = explain(ruleset, facts, person, now=now).rules
    assert [t.rule for t in traced if t.outcome == "matched"] == expected


# --- random rules files --------------------------------------------------------------------

INCIDENT_CONDITIONS: list[tuple[str, Any]] = [
    ("severity", {"gte": "major"}),
    ("severity", "critical"),
    ("status", ["investigating", "identified"]),
    ("components", "payments"),
    ("regions", {"contains_none": ["eu"]}),
    ("labels", {"team": "web"}),
    ("labels", {"env": {"matches": "prod.*"}}),
    ("affected_customers", {"gt": 100}),
    ("age", {"gte": "1h"}),
    ("age", {"lt": "30m"}),
    ("source", {"ne": "operator"}),
]
CUSTOMER_CONDITIONS: list[tuple[str, Any]] = [
    ("tier", "vip"),
    ("tags", {"contains_any": ["press", "vip"]}),
    ("language", {"in": ["en", "nl"]}),
    ("region", {"present": False}),
    ("incidents", {"within": "30d", "gte": 2}),
    ("open_followups", {"gt": 0}),
    ("sla", "gold"),
    ("id", {"matches": "c-[0-9]+"}),
]
ACTIONS: dict[str, Any] = {
    "followup": {"kind": "call", "owner": "account_manager", "deadline": "2h"},
    "compensation": {
        "kind": "credit",
        "amount": "5",
        "currency": "EUR",
        "when": {"incident": {"age": {"gt": "2h"}}},
    },
    "quiet_hours": {"from": "22:00", "to": "07:00"},
    "throttle": {"max": 2, "per": "1h"},
}
CUSTOMER_ACTIONS = sorted(set(ACTIONS) - {"compensation"})
POLICIES = {
    "slow": {"steps": [{"after": "0m", "every": "1h", "channels": ["email"]}]},
    "fast": {
        "steps": [
            {"after": "0m", "every": "5m", "channels": ["sms"]},
            {"after": "2h", "every": "2m", "notify": ["group:duty-managers"]},
        ]
    },
}


@dataclass
class Draft:
    """One rule of a drawn file, before it is written as YAML."""

    incident: list[tuple[str, Any]]
    customer: list[tuple[str, Any]]
    actions: list[str]
    policy: str | None
    require: list[str]
    continues: bool

    @property
    def conditions(self) -> frozenset[tuple[str, str, str]]:
        return frozenset(
            (scope, field, json.dumps(value, sort_keys=True))
            for scope, part in (("incident", self.incident), ("customer", self.customer))
            for field, value in part
        )

    def written(self, name: str) -> dict[str, Any]:
        rule: dict[str, Any] = {"name": name, "continue": self.continues}
        match = {
            scope: dict(part)
            for scope, part in (("incident", self.incident), ("customer", self.customer))
            if part
        }
        if match:
            rule["match"] = match
        rule.update({action: ACTIONS[action] for action in self.actions})
        if self.policy:
            rule["policy"] = self.policy
        if self.require:
            rule["require_for_resolution"] = self.require
        return rule


@st.composite
def drafts(draw: st.DrawFn) -> Draft:
    customer_part = draw(
        st.lists(st.sampled_from(CUSTOMER_CONDITIONS), max_size=2, unique_by=lambda c: c[0])
    )
    incident_only = not customer_part
    return Draft(
        incident=draw(
            st.lists(st.sampled_from(INCIDENT_CONDITIONS), max_size=2, unique_by=lambda c: c[0])
        ),
        customer=customer_part,
        # Compensation belongs to the incident (decided at the resolution): only rules
        # without customer conditions may give it.
        actions=draw(
            st.lists(
                st.sampled_from(sorted(ACTIONS) if incident_only else CUSTOMER_ACTIONS),
                max_size=2,
                unique=True,
            )
        ),
        policy=draw(st.none() | st.sampled_from(sorted(POLICIES))) if incident_only else None,
        require=draw(st.lists(st.sampled_from(["cause", "remedy"]), max_size=2))
        if incident_only
        else [],
        continues=draw(st.booleans()),
    )


@st.composite
def rules_files(draw: st.DrawFn) -> str:
    rules = draw(st.lists(drafts(), max_size=6))
    # Repair what the loader rightly refuses (unreachable rules, incident actions hidden by
    # a customer rule), so that every file drawn loads.
    for j, rule in enumerate(rules):
        for earlier in rules[:j]:
            if earlier.conditions <= rule.conditions:
                earlier.continues = True
    for i, rule in enumerate(rules):
        if rule.customer and any(later.policy or later.require for later in rules[i + 1 :]):
            rule.continues = True
    written = [rule.written(f"rule-{i}") for i, rule in enumerate(rules)]
    return yaml.safe_dump({"version": 1, "policies": POLICIES, "rules": written}, sort_keys=False)


def load_text(text: str) -> RuleSet:
    return load_named(text, "random.yaml")


@SLOW
@given(rules_files(), situations())
def test_random_rules_evaluate_on_any_facts(
    text: str, situation: tuple[IncidentFacts, CustomerFacts | None, datetime]
) -> None:
    ruleset = load_text(text)
    facts, person, now = situation
    decision = ruleset.evaluate(facts, person, now=now)
    assert decision == load_text(text).evaluate(facts, person, now=now)
    assert explain(ruleset, facts, person, now=now).decision == decision
    alone = ruleset.evaluate(facts, now=now)
    assert (alone.policy, alone.step, alone.required_for_resolution) == (
        decision.policy,
        decision.step,
        decision.required_for_resolution,
    )
    if decision.policy is not None:
        plan = PlanSnapshot.from_dict(
            json.loads(json.dumps(PlanSnapshot.from_ruleset(ruleset, decision.policy).to_dict()))
        )
        assert ruleset.evaluate(facts, person, now=now, plan=plan) == decision
