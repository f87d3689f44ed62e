"""Evaluation: the example file's promises, every operator, order and continue, how actions
combine, and the facts' own checks."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from rules import (
    CustomerFacts,
    EscalationStep,
    IncidentFacts,
    StaffRef,
)
from rules.matchers import Condition, MatchContext
from tests.unit.test_rules_support import NOW, customer, example, incident, load

MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)


# --- the example rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "every", "channels", "notify"),
    [
        (timedelta(0), 30 * MINUTE, ("push", "email"), ()),
        (59 * MINUTE, 30 * MINUTE, ("push", "email"), ()),
        (HOUR, 20 * MINUTE, ("push", "email", "sms"), ()),
        (4 * HOUR - MINUTE, 20 * MINUTE, ("push", "email", "sms"), ()),
        (4 * HOUR, 15 * MINUTE, ("push", "email", "sms"), ("group:duty-managers",)),
        (3 * DAY, 15 * MINUTE, ("push", "email", "sms"), ("group:duty-managers",)),
    ],
)
def test_default_ladder_by_age(
    age: timedelta, every: timedelta, channels: tuple[str, ...], notify: tuple[str, ...]
) -> None:
    decision = example().evaluate(incident("major", age), now=NOW)
    assert decision.policy == "default"
    assert decision.step is not None
    assert (decision.step.every, decision.step.channels) == (every, channels)
    assert tuple(str(r) for r in decision.step.notify) == notify


def test_critical_incidents_get_the_critical_policy() -> None:
    decision = example().evaluate(incident("critical"), now=NOW)
    assert decision.policy == "critical"
    assert decision.matched_rules == [
        "quiet-nights",
        "critical-resolution",
        "long-outage-credit",  # it matches; its compensation's own condition does not hold
        "critical-policy",
    ]
    assert decision.compensation == []
    assert decision.stopped_by == "critical-policy"


def test_vip_customers_get_a_call_within_two_hours_on_a_critical_incident() -> None:
    ruleset = example()
    vip = customer(tier="vip")
    decision = ruleset.evaluate(incident("critical"), vip, now=NOW)
    (call,) = decision.followups
    assert (call.kind, call.owner, call.deadline, call.rule) == (
        "call",
        StaffRef("account_manager"),
        2 * HOUR,
        "vip-critical-call",
    )
    assert call.escalation == (StaffRef("group", "duty-managers"),)
    assert ruleset.evaluate(incident("major"), vip, now=NOW).followups == []
    assert (
        ruleset.evaluate(incident("critical"), customer(tier="business"), now=NOW).followups == []
    )


def test_business_customers_are_followed_up_after_four_hours() -> None:
    ruleset = example()
    business = customer(tier="business")
    assert ruleset.evaluate(incident("minor", 4 * HOUR), business, now=NOW).followups == []
    decision = ruleset.evaluate(incident("minor", 4 * HOUR + MINUTE), business, now=NOW)
    (followup,) = decision.followups
    assert (followup.owner, followup.deadline, followup.rule) == (
        StaffRef("account_manager"),
        DAY,
        "business-long-incident",
    )


def test_a_customer_hit_three_times_in_thirty_days_gets_a_personal_call() -> None:
    ruleset = example()
    twice = (NOW - 2 * DAY, NOW - 31 * DAY, NOW)
    thrice = (NOW - 2 * DAY, NOW - 29 * DAY, NOW)
    assert ruleset.evaluate(incident(), customer(incident_history=twice), now=NOW).followups == []
    decision = ruleset.evaluate(incident(), customer(incident_history=thrice), now=NOW)
    assert [(f.kind, str(f.owner)) for f in decision.followups] == [("call", "group:care")]


def test_critical_resolution_requires_cause_remedy_and_prevention() -> None:
    ruleset = example()
    critical = ruleset.evaluate(incident("critical"), now=NOW)
    assert critical.required_for_resolution == {"cause", "remedy", "prevention"}
    assert ruleset.evaluate(incident("major"), now=NOW).required_for_resolution == set()


def test_outages_longer_than_two_hours_attach_a_credit() -> None:
    ruleset = example()
    assert ruleset.evaluate(incident(age=2 * HOUR), customer(), now=NOW).compensation == []
    resolved = IncidentFacts(
        "minor", "resolved", NOW - 5 * HOUR, resolved_at=NOW - 2 * HOUR - MINUTE
    )
    (credit,) = ruleset.evaluate(resolved, customer(), now=NOW).compensation
    assert (credit.kind, credit.amount, credit.currency, credit.rule) == (
        "credit",
        Decimal("10.00"),
        "EUR",
        "long-outage-credit",
    )
    # The outage lasted until its resolution, not until now.
    short = IncidentFacts("minor", "resolved", NOW - 5 * HOUR, resolved_at=NOW - 4 * HOUR)
    assert ruleset.evaluate(short, customer(), now=NOW).compensation == []


def test_customer_rules_are_skipped_without_a_customer() -> None:
    decision = example().evaluate(incident("critical", 5 * HOUR), now=NOW)
    assert decision.followups == []
    assert "vip-critical-call" not in decision.matched_rules


# --- operators -----------------------------------------------------------------------------

BASE = IncidentFacts(
    severity="major",
    status="identified",
    started_at=NOW - 90 * MINUTE,
    components=frozenset({"payments", "api"}),
    regions=frozenset(),
    source="alertmanager",
    labels={"team": "web", "env": "prod-eu"},
    affected_customers=1200,
)
PERSON = CustomerFacts(
    "c-7",
    tier="vip",
    tags=frozenset({"press", "enterprise"}),
    language="nl",
    timezone="Europe/Amsterdam",
    incident_history=(NOW - DAY, NOW - 8 * DAY, NOW - 40 * DAY),
    open_followups=1,
)
CASES = [
    ("incident.severity", "eq", "major", True),
    ("incident.severity", "ne", "major", False),
    ("incident.severity", "gte", "major", True),
    ("incident.severity", "gt", "major", False),
    ("incident.severity", "lt", "critical", True),
    ("incident.severity", "lte", "minor", False),
    ("incident.severity", "in", ("minor", "critical"), False),
    ("incident.severity", "not_in", ("minor", "critical"), True),
    ("incident.status", "in", ("identified",), True),
    ("incident.source", "matches", re.compile("alert.*"), True),
    ("incident.source", "matches", re.compile("alert"), False),  # anchored: a full match
    ("incident.source", "not_matches", re.compile("alert"), True),
    ("incident.components", "contains", "api", True),
    ("incident.components", "contains_any", ("db", "api"), True),
    ("incident.components", "contains_all", ("db", "api"), False),
    ("incident.components", "contains_none", ("db",), True),
    ("incident.components", "matches", re.compile("pay.*"), True),
    ("incident.components", "empty", False, True),
    ("incident.regions", "empty", True, True),
    ("incident.regions", "contains_any", ("eu",), False),
    ("incident.affected_customers", "gt", 1000, True),
    ("incident.affected_customers", "lte", 1000, False),
    ("incident.affected_customers", "in", (1, 1200), True),
    ("incident.age", "gte", 90 * MINUTE, True),
    ("incident.age", "gt", 90 * MINUTE, False),
    ("incident.age", "lt", 2 * HOUR, True),
    ("customer.tier", "eq", "vip", True),
    ("customer.tags", "contains", "press", True),
    ("customer.tags", "contains_all", ("press", "enterprise"), True),
    ("customer.language", "in", ("en", "de"), False),
    ("customer.id", "matches", re.compile(r"c-\d+"), True),
    ("customer.region", "present", False, True),
    ("customer.region", "eq", "eu", False),  # an absent value equals nothing ...
    ("customer.region", "ne", "eu", True),  # ... and differs from everything
    ("customer.region", "not_in", ("eu",), True),
    ("customer.region", "matches", re.compile(".*"), False),
    ("customer.sla", "not_matches", re.compile(".*"), True),
    ("customer.open_followups", "gte", 1, True),
]


@pytest.mark.parametrize(("field", "op", "operand", "holds"), CASES)
def test_operators(field: str, op: str, operand: object, holds: bool) -> None:
    condition = Condition(field, op, operand)  # type: ignore[arg-type]
    assert condition.holds(MatchContext(BASE, PERSON, NOW)) is holds


@pytest.mark.parametrize(
    ("key", "op", "operand", "holds"),
    [
        ("team", "eq", "web", True),
        ("env", "matches", re.compile("prod-.*"), True),
        ("missing", "eq", "x", False),
        ("missing", "ne", "x", True),
        ("missing", "present", False, True),
        ("team", "present", True, True),
    ],
)
def test_label_operators(key: str, op: str, operand: object, holds: bool) -> None:
    condition = Condition("incident.labels", op, operand, key=key)  # type: ignore[arg-type]
    assert condition.holds(MatchContext(BASE, PERSON, NOW)) is holds


@pytest.mark.parametrize(
    ("window", "op", "count", "holds"),
    [(7 * DAY, "eq", 1, True), (30 * DAY, "gte", 2, True), (30 * DAY, "gte", 3, False)],
)
def test_incident_history_counts_within_a_window(
    window: timedelta, op: str, count: int, holds: bool
) -> None:
    condition = Condition("customer.incidents", op, count, window=window)
    assert condition.holds(MatchContext(BASE, PERSON, NOW)) is holds


def test_customer_conditions_never_hold_without_a_customer() -> None:
    condition = Condition("customer.region", "ne", "eu")
    assert not condition.holds(MatchContext(BASE, None, NOW))


# --- order, continue and how actions combine ------------------------------------------------

TWO_POLICIES = """
policies:
  slow:
    steps: [{after: 0m, every: 1h, channels: [email]}]
  fast:
    steps: [{after: 0m, every: 5m, channels: [sms]}]
"""


def test_first_policy_wins_and_later_ones_are_ignored() -> None:
    ruleset = load(
        TWO_POLICIES
        + """
rules:
  - name: critical-fast
    match: {incident: {severity: critical}}
    policy: fast
    continue: true
  - name: everyone-slow
    policy: slow
"""
    )
    assert ruleset.evaluate(incident("critical"), now=NOW).policy == "fast"
    assert ruleset.evaluate(incident("critical"), now=NOW).matched_rules == [
        "critical-fast",
        "everyone-slow",
    ]
    assert ruleset.evaluate(incident("minor"), now=NOW).policy == "slow"


def test_a_rule_without_continue_stops_the_walk() -> None:
    ruleset = load(
        TWO_POLICIES
        + """
rules:
  - name: test-incidents-are-quiet
    match: {incident: {labels: {test: "true"}}}
  - name: everyone
    policy: slow
    require_for_resolution: [cause]
"""
    )
    quiet = ruleset.evaluate(incident(labels={"test": "true"}), now=NOW)
    assert (quiet.policy, quiet.step, quiet.matched_rules) == (
        None,
        None,
        ["test-incidents-are-quiet"],
    )
    assert quiet.required_for_resolution == set()
    assert ruleset.evaluate(incident(), now=NOW).policy == "slow"


def test_actions_combine_over_matching_rules() -> None:
    ruleset = load(
        """
rules:
  - name: vip
    match: {customer: {tier: vip}}
    followup: {kind: call, owner: account_manager, deadline: 2h}
    quiet_hours: {from: "23:00", to: "06:00"}
    throttle: {max: 5, per: 1h}
    continue: true
  - name: press
    match: {customer: {tags: press}}
    followup: {kind: visit, owner: care, deadline: 1d}
    quiet_hours: {from: "21:00", to: "08:00"}
    throttle: {max: 1, per: 1h}
    continue: true
  - name: severe
    match: {incident: {severity: {gte: major}}}
    require_for_resolution: [cause]
    compensation: {kind: voucher, amount: 5, currency: EUR}
    continue: true
  - name: all
    require_for_resolution: [remedy, prevention]
    compensation:
      kind: refund
      amount: 1
      currency: EUR
      when: {incident: {age: {gt: 2h}}}
"""
    )
    decision = ruleset.evaluate(incident("major"), PERSON, now=NOW)
    assert [f.rule for f in decision.followups] == ["vip", "press"]
    assert [c.rule for c in decision.compensation] == ["severe"]  # refund's `when` failed
    assert decision.required_for_resolution == {"cause", "remedy", "prevention"}
    assert decision.quiet_hours is not None and decision.quiet_hours.rule == "vip"
    assert decision.throttle is not None and decision.throttle.max == 5
    assert decision.matched_rules == ["vip", "press", "severe", "all"]
    assert decision.stopped_by == "all"


def test_decision_step_is_shared_but_immutable() -> None:
    step = example().evaluate(incident(), now=NOW).step
    assert isinstance(step, EscalationStep)
    with pytest.raises(AttributeError):
        step.every = MINUTE  # type: ignore[misc]


# --- facts ---------------------------------------------------------------------------------


def test_facts_reject_what_evaluation_could_not_use() -> None:
    naive = datetime(2026, 1, 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        IncidentFacts("minor", "investigating", naive)
    with pytest.raises(ValueError, match="severity"):
        IncidentFacts("sev1", "investigating", NOW)
    with pytest.raises(ValueError, match="status"):
        IncidentFacts("minor", "open", NOW)
    with pytest.raises(ValueError, match="before"):
        IncidentFacts("minor", "resolved", NOW, resolved_at=NOW - MINUTE)
    with pytest.raises(TypeError, match="one string"):
        IncidentFacts("minor", "investigating", NOW, components="payments")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="time zone"):
        CustomerFacts("c", timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="timezone-aware"):
        CustomerFacts("c", incident_history=(naive,))
    with pytest.raises(ValueError, match="negative"):
        CustomerFacts("c", open_followups=-1)


def test_facts_are_frozen_copies() -> None:
    labels = {"team": "web"}
    facts = IncidentFacts("minor", "investigating", NOW, labels=labels)
    labels["team"] = "db"
    assert facts.labels["team"] == "web"
    assert hash(facts) == hash(IncidentFacts("minor", "investigating", NOW, labels={"team": "web"}))
    assert facts.age(NOW + HOUR) == HOUR
    assert facts.age(NOW - HOUR) == timedelta(0)  # a clock behind the start: no negative age


def test_ages_compare_across_time_zones() -> None:
    from zoneinfo import ZoneInfo

    started = datetime(2026, 3, 2, 13, 0, tzinfo=ZoneInfo("Europe/Amsterdam"))
    assert IncidentFacts("minor", "investigating", started).age(NOW.astimezone(UTC)) == timedelta(0)
