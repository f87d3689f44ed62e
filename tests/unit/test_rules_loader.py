"""The rules loader: the example file, what each key becomes, and every error located."""

from __future__ import annotations

import re
import textwrap
from datetime import time, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from rules import (
    EscalationStep,
    FollowupRequirement,
    RulesError,
    StaffRef,
    load_rules,
)
from tests.unit.test_rules_support import (
    CHANNELS,
    FILE,
    GROUPS,
    STAFF,
    example,
    load,
)

LADDER = """
policies:
  default:
    steps:
      - after: 0m
        every: 30m
        channels: [push, email]
"""


def test_example_loads_with_the_documented_names() -> None:
    ruleset = example()
    assert sorted(ruleset.policies) == ["critical", "default"]
    assert [r.name for r in ruleset.rules] == [
        "vip-critical-call",
        "business-long-incident",
        "repeatedly-hit-call",
        "quiet-nights",
        "critical-resolution",
        "long-outage-credit",
        "critical-policy",
        "default-policy",
    ]
    assert ruleset.history_window == timedelta(days=30)
    assert ruleset.digest.startswith("sha256:")


def test_example_default_ladder_is_the_issue_example() -> None:
    steps = example().policies["default"].steps
    assert steps == (
        EscalationStep(timedelta(0), timedelta(minutes=30), ("push", "email"), "normal"),
        EscalationStep(timedelta(hours=1), timedelta(minutes=20), ("push", "email", "sms"), "high"),
        # every/channels/urgency are inherited from the step before; notify is not.
        EscalationStep(
            timedelta(hours=4),
            timedelta(minutes=15),
            ("push", "email", "sms"),
            "high",
            (StaffRef("group", "duty-managers"),),
        ),
    )


def test_example_needs_its_names() -> None:
    with pytest.raises(RulesError) as info:
        load_rules(
            example_text(),
            "default.yaml",
            channels={"email", "push"},
            staff=set(),
            groups={"care"},
        )
    text = "\n".join(info.value.problems)
    assert "unknown channel 'sms'" in text
    assert "unknown group 'duty-managers'" in text
    assert "unknown group 'account-managers'" in text


def example_text() -> str:
    from rules import EXAMPLE_RULES

    return EXAMPLE_RULES.read_text(encoding="utf-8")


def test_every_action_is_read() -> None:
    ruleset = load(
        LADDER
        + """
rules:
  - name: everything
    description: All actions at once.
    match:
      incident: {severity: critical}
    continue: true
    policy: default
    followup:
      kind: visit
      owner: ann
      deadline: 1d
      reminder_every: 2h
      escalation: [care, staff:bob, on_call:duty-managers]
      escalation_interval: 3h
    compensation:
      kind: voucher
      amount: 12.50
      currency: EUR
      when:
        incident: {age: {gte: 2h}}
    require_for_resolution: [cause, remedy]
    quiet_hours: {from: "21:30", to: 7:00}
    throttle: {max: 2, per: 1h, channels: [sms], fallback: email}
"""
    )
    rule = ruleset.rule("everything")
    assert rule.continues and rule.policy == "default"
    assert rule.description == "All actions at once."
    assert rule.followup == FollowupRequirement(
        kind="visit",
        owner=StaffRef("staff", "ann"),
        deadline=timedelta(days=1),
        rule="everything",
        reminder_every=timedelta(hours=2),
        escalation=(
            StaffRef("group", "care"),
            StaffRef("staff", "bob"),
            StaffRef("on_call", "duty-managers"),
        ),
        escalation_interval=timedelta(hours=3),
    )
    assert rule.compensation is not None
    assert rule.compensation.compensation.amount == Decimal("12.50")
    assert [c.describe() for c in rule.compensation.when] == ["incident.age >= 2h"]
    assert rule.require_for_resolution == {"cause", "remedy"}
    assert rule.quiet_hours is not None
    assert (rule.quiet_hours.start, rule.quiet_hours.end) == (time(21, 30), time(7, 0))
    assert rule.throttle is not None
    assert (rule.throttle.max, rule.throttle.per) == (2, timedelta(hours=1))
    assert (rule.throttle.channels, rule.throttle.fallback) == (("sms",), "email")


def test_escalation_interval_defaults_to_reminders_then_deadline() -> None:
    ruleset = load(
        """
rules:
  - name: with-reminders
    continue: true
    followup:
      {kind: call, owner: on_call:care, deadline: 2h, reminder_every: 20m, escalation: [care]}
  - name: without
    followup: {kind: call, owner: account_manager, deadline: 2h, escalation: [care]}
"""
    )
    with_reminders = ruleset.rule("with-reminders").followup
    without = ruleset.rule("without").followup
    assert with_reminders is not None and without is not None
    assert with_reminders.escalation_interval == timedelta(minutes=20)
    assert without.escalation_interval == timedelta(hours=2)
    assert without.owner == StaffRef("account_manager")


@pytest.mark.parametrize(
    ("spec", "described"),
    [
        ("severity: critical", ["incident.severity == critical"]),
        ("severity: [major, critical]", ["incident.severity in [major, critical]"]),
        (
            "severity: {gte: major, ne: critical}",
            ["incident.severity >= major", "incident.severity != critical"],
        ),
        (
            "status: {not_in: [monitoring, resolved]}",
            ["incident.status not in [monitoring, resolved]"],
        ),
        (
            "source: {matches: 'alertmanager|statuspage'}",
            ['incident.source =~ "alertmanager|statuspage"'],
        ),
        ("components: payments", ["incident.components contains payments"]),
        ("regions: [eu, us]", ["incident.regions contains any of [eu, us]"]),
        (
            "components: {contains_all: [a, b], contains_none: [c]}",
            [
                "incident.components contains all of [a, b]",
                "incident.components contains none of [c]",
            ],
        ),
        ("regions: {empty: false}", ["incident.regions not empty"]),
        (
            "labels: {team: payments, env: {matches: 'prod.*'}, test: {present: false}}",
            [
                "incident.labels.team == payments",
                'incident.labels.env =~ "prod.*"',
                "incident.labels.test absent",
            ],
        ),
        ("affected_customers: {gt: 1000}", ["incident.affected_customers > 1000"]),
        ("affected_customers: 7", ["incident.affected_customers == 7"]),
        ("age: {gte: 1h30m, lt: 4h}", ["incident.age >= 1h30m", "incident.age < 4h"]),
    ],
)
def test_incident_matchers(spec: str, described: list[str]) -> None:
    ruleset = load(f"rules:\n  - name: r\n    match:\n      incident:\n        {spec}\n")
    assert [c.describe() for c in ruleset.rules[0].conditions] == described


@pytest.mark.parametrize(
    ("spec", "described"),
    [
        ("tier: vip", ["customer.tier == vip"]),
        ("tier: {in: [vip, business]}", ["customer.tier in [vip, business]"]),
        ("tags: {contains: noisy}", ["customer.tags contains noisy"]),
        ("language: {not_matches: 'en.*'}", ['customer.language !~ "en.*"']),
        ("region: {present: true}", ["customer.region present"]),
        ("sla: [gold, platinum]", ["customer.sla in [gold, platinum]"]),
        ("id: {ne: c1}", ["customer.id != c1"]),
        ("incidents: {within: 30d, gte: 3}", ["customer.incidents[30d] >= 3"]),
        ("open_followups: {gt: 0}", ["customer.open_followups > 0"]),
    ],
)
def test_customer_matchers(spec: str, described: list[str]) -> None:
    ruleset = load(f"rules:\n  - name: r\n    match:\n      customer:\n        {spec}\n")
    assert [c.describe() for c in ruleset.rules[0].conditions] == described
    assert ruleset.rules[0].needs_customer


def test_text_values_are_taken_as_written() -> None:
    # YAML would read these as a bool, an int and a sexagesimal int; a label value is text.
    ruleset = load(
        """
rules:
  - name: r
    match:
      incident:
        labels: {test: true, priority: 01, window: 22:00}
"""
    )
    assert [c.operand for c in ruleset.rules[0].conditions] == ["true", "01", "22:00"]


def test_anchors_and_merge_keys() -> None:
    ruleset = load(
        """
policies:
  default:
    steps:
      - &first {after: 0m, every: 30m, channels: [email]}
      - <<: *first
        after: 1h
        urgency: high
rules:
  - name: r
    policy: default
"""
    )
    second = ruleset.policies["default"].steps[1]
    assert (second.after, second.every, second.urgency) == (
        timedelta(hours=1),
        timedelta(minutes=30),
        "high",
    )


def test_an_empty_file_is_refused_and_an_empty_list_of_rules_is_not() -> None:
    """Blank lines and comments only: an editor that emptied the file, a save cut short. The
    loader refuses it, so every caller (start-up, reload, ``rules check``, the API's check)
    agrees; ``rules: []`` says "no rules" on purpose."""
    for text in ("", "\n\n", "# all rules removed for now\n", "  # indented\n\n# two\n"):
        with pytest.raises(RulesError) as info:
            load_rules(text, FILE, channels=CHANNELS, staff=STAFF, groups=GROUPS)
        assert info.value.problems == [
            f"{FILE}: the file is empty (no policies, no rules); to run without rules, "
            "leave rules.path out of the configuration"
        ]
    ruleset = load("rules: []\n")
    assert ruleset.rules == () and dict(ruleset.policies) == {}


def test_staff_references() -> None:
    ruleset = load(
        """
rules:
  - name: r
    followup:
      kind: personal_email
      owner: care
      deadline: 1h
      escalation: [bob, group:duty-managers, staff:ann, on_call:care]
"""
    )
    followup = ruleset.rules[0].followup
    assert followup is not None
    assert followup.owner == StaffRef("group", "care")
    assert [str(r) for r in followup.escalation] == [
        "staff:bob",
        "group:duty-managers",
        "staff:ann",
        "on_call:care",
    ]
    assert [StaffRef.parse(str(r)) for r in followup.escalation] == list(followup.escalation)


# --- the reference page's examples stay true ----------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "rules.md"


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)


def as_document(block: str) -> str:
    """A snippet of the reference as a whole file: rule keys go into a rule."""
    if re.match(r"(version|policies|rules):", block):
        return block
    policies = "policies:\n  critical:\n    steps: [{after: 0m, every: 5m, channels: [sms]}]\n"
    if block.startswith("  - "):
        return policies + "rules:\n" + block
    if not block.startswith("    "):
        block = textwrap.indent(block, "    ")
    return policies + "rules:\n  - name: doc\n" + block


def test_every_yaml_example_in_the_reference_loads() -> None:
    blocks = doc_blocks("yaml")
    assert len(blocks) >= 10
    for block in blocks:
        if "contineu" in block:
            continue  # the errors example, below
        if block.startswith("# config.yaml"):
            continue  # the daemon's configuration, not a rules file
        load_rules(
            as_document(block),
            FILE,
            channels=CHANNELS,
            staff={*STAFF, "head-of-care"},
            groups=GROUPS,
        )


def test_the_reference_shows_real_errors_and_real_explain_output() -> None:
    (bad,) = [b for b in doc_blocks("yaml") if "contineu" in b]
    errors, explained = doc_blocks("text")[-1], doc_blocks("text")[0]
    with pytest.raises(RulesError) as info:
        load_rules(bad, FILE, channels=CHANNELS, staff=STAFF, groups=GROUPS)
    assert info.value.problems == errors.splitlines()
    golden = Path(__file__).resolve().parents[1] / "golden" / "rules" / "explain_vip_critical.txt"
    assert explained == golden.read_text(encoding="utf-8")


def test_merge_keys_in_labels_policies_and_operators() -> None:
    """``labels: {<<: *prod, service: payments}`` was refused ("env: unknown key (known: <<,
    service)"): the names of a mapping of free names were taken before the merge."""
    ruleset = load(
        """
policies:
  <<: {shared: &ladder {steps: [{after: 0m, every: 30m, channels: [email]}]}}
  default: *ladder
rules:
  - name: prod-web
    match:
      incident:
        labels: &prod {env: prod, team: web}
        severity: &serious {gte: major}
    quiet_hours: {from: "22:00", to: "07:00"}
    continue: true
  - name: prod-web-payments
    match:
      incident:
        labels:
          <<: *prod
          service: payments
          team: [web, api]
        severity: {<<: *serious, ne: critical}
    followup: {kind: call, owner: group:care, deadline: 1h}
    continue: true
  - name: catch-all
    policy: shared
"""
    )
    assert sorted(ruleset.policies) == ["default", "shared"]
    assert [c.describe() for c in ruleset.rule("prod-web-payments").conditions] == [
        "incident.labels.env == prod",
        "incident.labels.team in [web, api]",
        "incident.labels.service == payments",
        "incident.severity >= major",
        "incident.severity != critical",
    ]


def test_merge_precedence_is_yaml_s() -> None:
    """The mapping's own keys win; of ``<<: [*a, *b]`` the first; of merges of merges, the
    nearer. An anchor merged with overrides, and then used again as it is, reads the same
    each time (the node tree is not rewritten by the first read)."""
    ruleset = load(
        """
policies:
  one:
    steps:
      - &first {after: 0m, every: 30m, channels: [email]}
      - &second {<<: *first, after: 1h, every: 10m}
      - <<: [{after: 2h, every: 5m}, *second, {channels: [sms], urgency: high}]
        urgency: low
  two:
    steps: [*first, *second]
rules:
  - name: r
    policy: one
"""
    )
    one, two = ruleset.policies["one"].steps, ruleset.policies["two"].steps
    assert [(s.after, s.every, s.channels, s.urgency) for s in one] == [
        (timedelta(0), timedelta(minutes=30), ("email",), "normal"),
        (timedelta(hours=1), timedelta(minutes=10), ("email",), "normal"),
        (timedelta(hours=2), timedelta(minutes=5), ("email",), "low"),
    ]
    assert two == one[:2]
