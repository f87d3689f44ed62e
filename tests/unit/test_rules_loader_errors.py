"""The rules loader's errors: every kind of problem, located at file:line:col, all listed."""

from __future__ import annotations

import re
import time

import pytest

from rules import RulesError, load_rules
from tests.unit.test_rules_support import (
    CHANNELS,
    FILE,
    GROUPS,
    STAFF,
    at,
    line_of,
    load,
    problems,
)

LADDER = """
policies:
  default:
    steps:
      - after: 0m
        every: 30m
        channels: [push, email]
"""


def test_yaml_syntax_error_is_located() -> None:
    text = "rules:\n  - name: [unclosed\n"
    with pytest.raises(RulesError) as info:
        load_rules(text, FILE, channels=CHANNELS, staff=STAFF, groups=GROUPS)
    (problem,) = info.value.problems
    assert re.match(rf"{FILE}:\d+:\d+: YAML syntax error: ", problem)


def test_unknown_keys_are_located_with_a_suggestion() -> None:
    text = """
rules:
  - name: r
    contineu: true
    match:
      incident:
        severty: critical
      customers: {}
"""
    assert problems(text) == [
        f"{at(text, 'contineu')}: rules[0].contineu: unknown key (did you mean 'continue'?)",
        f"{at(text, 'severty')}: rules[0].match.incident.severty: unknown key "
        "(did you mean 'severity'?)",
        f"{at(text, 'customers')}: rules[0].match.customers: unknown key "
        "(did you mean 'customer'?)",
    ]


def test_wrong_types() -> None:
    text = """
rules:
  - name: r
    continue: maybe
    match:
      incident:
        affected_customers: many
        age: 2h
        components: {contains: [a, b]}
  - name: [x]
  - just a string
"""
    assert problems(text) == [
        f"{at(text, 'maybe')}: rules[0].continue: true or false is expected, not 'maybe'",
        f"{at(text, 'many')}: rules[0].match.incident.affected_customers: a whole number is "
        "expected, not 'many'",
        f"{at(text, '2h')}: rules[0].match.incident.age: incident.age needs operators, "
        "e.g. {gt: 2h}",
        f"{at(text, '[a, b]')}: rules[0].match.incident.components.contains: a single value is "
        "expected, not a list",
        f"{at(text, '[x]')}: rules[1].name: a single value is expected, not a list",
        f"{at(text, 'just')}: rules[2]: a mapping is expected, not 'just a string'",
    ]


def test_bad_durations() -> None:
    text = (
        LADDER
        + """
      - after: soon
        every: 0m
rules:
  - name: r
    match:
      incident: {age: {gt: 2 hours}}
    followup: {kind: call, owner: ann, deadline: 99999d}
"""
    )
    assert problems(text) == [
        f"{at(text, 'soon')}: policies.default.steps[1].after: invalid duration 'soon' "
        "(write e.g. 90s, 15m, 2h, 1h30m, 30d)",
        f"{at(text, '0m', on='every: 0m')}: policies.default.steps[1].every: must be longer "
        "than 0s",
        f"{at(text, '2 hours')}: rules[0].match.incident.age.gt: invalid duration '2 hours' "
        "(write e.g. 90s, 15m, 2h, 1h30m, 30d)",
        f"{at(text, '99999d')}: rules[0].followup.deadline: duration '99999d' is too long "
        "(at most 3660d)",
    ]


def test_unknown_channels_staff_and_groups() -> None:
    text = """
policies:
  p:
    steps:
      - after: 0m
        every: 5m
        channels: [emial, pager]
        notify: [carre, account_manager]
rules:
  - name: r
    followup:
      kind: call
      owner: staff:zed
      deadline: 1h
      escalation: [group:nobody, on_call:ann]
    throttle: {max: 1, per: 1h, fallback: fax}
"""
    assert problems(text) == [
        f"{at(text, 'emial')}: policies.p.steps[0].channels[0]: unknown channel 'emial' "
        "(did you mean 'email'?)",
        f"{at(text, 'pager')}: policies.p.steps[0].channels[1]: unknown channel 'pager' "
        "(known: email, push, sms)",
        f"{at(text, 'carre')}: policies.p.steps[0].notify[0]: unknown staff member or group "
        "'carre' (did you mean 'care'?)",
        f"{at(text, 'account_manager')}: policies.p.steps[0].notify[1]: account_manager cannot "
        "be used here (no customer to ask about)",
        f"{at(text, 'staff:zed')}: rules[0].followup.owner: unknown staff member 'zed'",
        f"{at(text, 'group:nobody')}: rules[0].followup.escalation[0]: unknown group 'nobody'",
        f"{at(text, 'on_call:ann')}: rules[0].followup.escalation[1]: unknown group 'ann'",
        f"{at(text, 'fax')}: rules[0].throttle.fallback: unknown channel 'fax' "
        "(known: email, push, sms)",
    ]


def test_a_name_that_is_both_staff_and_group_must_be_qualified() -> None:
    text = "rules:\n  - name: r\n    followup: {kind: call, owner: care, deadline: 1h}\n"
    with pytest.raises(RulesError) as info:
        load_rules(text, FILE, channels=CHANNELS, staff={"care"}, groups={"care"})
    assert info.value.problems == [
        f"{FILE}:3:35: rules[0].followup.owner: 'care' is both a staff id and a group: "
        "write staff:care or group:care"
    ]


def test_unreachable_rules() -> None:
    text = """
rules:
  - name: vip
    match:
      customer: {tier: vip}
    followup: {kind: call, owner: account_manager, deadline: 2h}
  - name: vip-critical
    match:
      incident: {severity: critical}
      customer: {tier: vip}
    followup: {kind: visit, owner: account_manager, deadline: 1d}
  - name: catch-all
  - name: after-everything
    match:
      incident: {severity: minor}
"""
    assert problems(text) == [
        f"{at(text, 'name: vip-critical')}: rules[1]: unreachable: rule 'vip' (line 2) "
        "matches whenever this one does and does not continue; add `continue: true` to it or "
        "move this rule above it",
        f"{at(text, 'name: after')}: rules[3]: unreachable: rule 'catch-all' (line 11) "
        "matches everything and does not continue; add `continue: true` to it or move this "
        "rule above it",
    ]


def test_a_catch_all_that_continues_hides_nothing() -> None:
    ruleset = load("rules:\n  - name: all\n    continue: true\n  - name: next\n")
    assert [r.name for r in ruleset.rules] == ["all", "next"]


def test_incident_actions_cannot_depend_on_a_customer() -> None:
    text = (
        LADDER
        + """
rules:
  - name: vip-stops
    match:
      customer: {tier: vip}
  - name: vip-policy
    match:
      customer: {tier: vip}
      incident: {severity: critical}
    continue: true
    policy: default
    require_for_resolution: cause
  - name: policy
    policy: default
"""
    )
    assert problems(text) == [
        f"{at(text, 'name: vip-stops')}: rules[0]: matches customer facts and does not "
        f"continue, so for the customers it matches it would hide rule 'policy' "
        f"(line {line_of(text, '- name: policy')}), "
        "which sets the incident's policy; add `continue: true` or move it below",
        f"{at(text, 'name: vip-policy')}: rules[1]: policy and require_for_resolution "
        "belong to the incident, so a rule that sets them cannot match on customer facts",
    ]


SPACED = '"has space"'


def test_references_and_names() -> None:
    text = """
rules:
  - name: a
    continue: true
    policy: defualt
  - name: a
  - name: "has space"
"""
    found = problems(text)
    assert found == [
        f"{at(text, 'defualt')}: rules[0].policy: unknown policy 'defualt' (defined: none)",
        f"{at(text, 'name: a', 2)}: rules[1]: duplicate rule name 'a' (first at line 2)",
        f"{at(text, SPACED)}: rules[2].name: rule names use letters, digits, '_', '.', "
        "'-': 'has space'",
    ]


QUOTED = '"(unclosed'
QUOTED_TIME = '"25:00'


def test_bad_values() -> None:
    text = """
rules:
  - name: r
    match:
      incident:
        severity: critcal
        status: {in: [open]}
        source: {matches: "(unclosed"}
        regions: {in: [eu]}
        labels: {}
      customer:
        incidents: {gte: 3}
    compensation: {kind: cash, amount: -5, currency: euro}
    require_for_resolution: [cause, apology]
    quiet_hours: {from: "25:00", to: "07:00"}
    throttle: {max: 0, per: 1h}
"""
    found = problems(text)
    assert found == [
        f"{at(text, 'critcal')}: rules[0].match.incident.severity: unknown severity 'critcal' "
        "(did you mean 'critical'?)",
        f"{at(text, 'open')}: rules[0].match.incident.status.in[0]: unknown status 'open' "
        "(one of investigating, identified, monitoring, resolved)",
        f"{at(text, QUOTED)}: rules[0].match.incident.source.matches: invalid regular "
        "expression '(unclosed': missing ), unterminated subpattern at position 0",
        f"{at(text, 'in: [eu]')}: rules[0].match.incident.regions.in: unknown operator "
        "for a set (did you mean 'contains_any'?)",
        f"{at(text, '{}')}: rules[0].match.incident.labels: name at least one label",
        f"{at(text, '{gte: 3}')}: rules[0].match.customer.incidents: missing key 'within'",
        f"{at(text, 'cash')}: rules[0].compensation.kind: unknown kind 'cash' "
        "(one of credit, voucher, refund)",
        f"{at(text, '-5')}: rules[0].compensation.amount: a positive amount is expected, not '-5'",
        f"{at(text, 'euro')}: rules[0].compensation.currency: an ISO 4217 code (EUR) is "
        "expected: 'euro'",
        f"{at(text, 'apology')}: rules[0].require_for_resolution[1]: unknown field 'apology' "
        "(one of cause, remedy, prevention)",
        f"{at(text, QUOTED_TIME)}: rules[0].quiet_hours.from: a time of day is expected "
        "(22:00), not '25:00'",
        f"{at(text, '0', on='max: 0')}: rules[0].throttle.max: must be at least 1",
    ]


def test_policy_structure() -> None:
    text = """
policies:
  late-start:
    steps:
      - {after: 10m, every: 5m, channels: [sms]}
  shuffled:
    steps:
      - {after: 0m, every: 5m, channels: [sms]}
      - {after: 2h}
      - {after: 1h}
  empty:
    steps: []
  incomplete:
    steps:
      - {after: 0m, channels: [sms]}
  no-steps: {description: nothing}
"""
    assert problems(text) == [
        f"{at(text, '{after: 10m')}: policies.late-start.steps[0]: the first step must start at "
        "after: 0m",
        f"{at(text, '{after: 1h}')}: policies.shuffled.steps[2]: steps must start at increasing "
        "ages",
        f"{at(text, '[]')}: policies.empty.steps: a policy needs at least one step",
        f"{at(text, '{after: 0m, channels')}: policies.incomplete.steps[0]: missing key 'every'",
        f"{at(text, '{description')}: policies.no-steps: missing key 'steps'",
    ]


def test_problems_are_all_listed_in_file_order() -> None:
    text = """
version: 2
rules:
  - name: one
    match: {incident: {severity: huge}}
    followup: {kind: call, owner: nobody, deadline: later}
  - name: two
    match: {}
    quiet_hours: {from: "22:00", to: "22:00"}
extra: 1
"""
    found = problems(text)
    assert [p.split(": ")[0] for p in found] == sorted(
        (p.split(": ")[0] for p in found), key=lambda w: tuple(int(n) for n in w.split(":")[1:])
    )
    assert [p.split(": ", 2)[1] for p in found] == [
        "version",
        "rules[0].match.incident.severity",
        "rules[0].followup.owner",
        "rules[0].followup.deadline",
        "rules[1].match",
        "rules[1].quiet_hours",
        "extra",
    ]


def test_matcher_problems_give_the_operator_path() -> None:
    text = """
rules:
  - name: r
    match:
      incident:
        severity: {gte: [major]}
        components: {in: []}
        age: {}
      customer:
        tier: {present: true}
        incidents: {within: 0d, gte: 1}
        open_followups: {gt: 1.5}
"""
    assert problems(text) == [
        f"{at(text, '[major]')}: rules[0].match.incident.severity.gte: a single value is "
        "expected, not a list",
        f"{at(text, 'in: []')}: rules[0].match.incident.components.in: unknown "
        "operator for a set (did you mean 'contains_any'?)",
        f"{at(text, '{}')}: rules[0].match.incident.age: give at least one operator",
        f"{at(text, 'present')}: rules[0].match.customer.tier.present: unknown "
        "operator (customer.tier is always present)",
        f"{at(text, '0d')}: rules[0].match.customer.incidents.within: must be longer than 0s",
        f"{at(text, '1.5')}: rules[0].match.customer.open_followups.gt: a whole number is "
        "expected, not '1.5'",
    ]


def test_compensation_that_depends_on_customer_facts_is_refused() -> None:
    """It is decided once, at the resolution, for the incident: a customer condition on it
    was silently never met (and `explain` said it was)."""
    text = """\
rules:
  - name: vip-voucher
    match: {customer: {tier: vip}}
    compensation: {kind: voucher, amount: 5, currency: EUR}
  - name: loyal-credit
    compensation:
      kind: credit
      amount: 2
      currency: EUR
      when: {customer: {incidents: {within: 30d, gte: 3}}}
"""
    with pytest.raises(RulesError) as refused:
        load_rules(text, "rules.yaml", channels=set(), staff=set(), groups=set())
    problems = refused.value.problems
    assert len(problems) == 2
    assert all("compensation is decided once for the incident" in p for p in problems)
    assert problems[0].startswith("rules.yaml:4:19: rules[0].compensation: ")


def test_a_failed_first_step_draws_no_false_errors_from_the_steps_after_it() -> None:
    """A later step leaves out what it takes from the first: judged as if it were the first,
    it drew "missing key 'channels'" and "must start at after: 0m" for a mistake it did not
    make. Its own mistakes are still found."""
    text = """\
version: 1
policies:
  standard:
    steps:
      - {after: 0m, every: soon, channels: [sms]}
      - {after: 1h}
      - {after: 2h, every: never}
"""
    assert problems(text) == [
        f"{at(text, 'soon')}: policies.standard.steps[0].every: invalid duration 'soon' (write "
        "e.g. 90s, 15m, 2h, 1h30m, 30d)",
        f"{at(text, 'never')}: policies.standard.steps[2].every: invalid duration 'never' (write "
        "e.g. 90s, 15m, 2h, 1h30m, 30d)",
    ]


def test_a_count_with_a_window_and_no_comparison_is_refused() -> None:
    """``incidents: {within: 30d}`` (``gte: 3`` forgotten) compared nothing, and the rule
    forced a call for every customer it matched, not only those hit repeatedly."""
    text = """
rules:
  - name: r
    match:
      customer:
        tier: vip
        incidents: {within: 30d}
"""
    assert problems(text) == [
        f"{at(text, '{within: 30d}')}: rules[0].match.customer.incidents: give at least one "
        "operator besides within, e.g. {within: 30d, gte: 3}",
    ]


def test_an_unknown_name_in_an_escalation_is_its_only_problem() -> None:
    """The chain is there: its pacing is not reported as pacing nothing."""
    text = (
        LADDER
        + """
rules:
  - name: fu
    policy: default
    followup:
      kind: call
      owner: account_manager
      deadline: 2h
      escalation: [group:duty-managers, staff:nobody]
      escalation_interval: 1h
"""
    )
    assert problems(text) == [
        f"{at(text, 'staff:nobody')}: rules[0].followup.escalation[1]: "
        "unknown staff member 'nobody'"
    ]


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("a{4294967296}", "the repetition number is too large"),  # OverflowError in ``re``
        ("(" * 3000 + ")" * 3000, "it is nested too deeply"),  # RecursionError in ``re``
        ("pay(", "missing ), unterminated subpattern at position 3"),  # re.error
    ],
)
def test_a_regular_expression_that_cannot_be_compiled_is_located(pattern: str, why: str) -> None:
    """Whatever ``re.compile`` raises: an OverflowError or RecursionError escaped the loader,
    so ``rules check`` printed a traceback and a reload failed without recording the error."""
    shown = pattern if len(pattern) <= 60 else f"{pattern[:40]}… ({len(pattern)} characters)"
    quoted = f"'{pattern}'"
    text = (
        LADDER
        + f"""
rules:
  - name: text
    match: {{incident: {{source: {{matches: '{pattern}'}}}}}}
    continue: true
  - name: set
    match: {{incident: {{components: {{matches: '{pattern}'}}}}}}
    continue: true
  - name: label
    policy: default
    compensation:
      kind: credit
      amount: 5
      currency: EUR
      when: {{incident: {{labels: {{env: {{not_matches: '{pattern}'}}}}}}}}
"""
    )
    assert problems(text) == [
        f"{at(text, quoted, 1)}: rules[0].match.incident.source.matches: "
        f"invalid regular expression {shown!r}: {why}",
        f"{at(text, quoted, 2)}: rules[1].match.incident.components.matches: "
        f"invalid regular expression {shown!r}: {why}",
        f"{at(text, quoted, 3)}: rules[2].compensation.when.incident.labels.env.not_matches: "
        f"invalid regular expression {shown!r}: {why}",
    ]


def test_values_their_tags_cannot_make_are_located() -> None:
    """``!!int abc``, ``!!bool maybe`` and a number of thousands of digits raised ValueError
    or KeyError out of the loader."""
    huge = "9" * 5000
    text = (
        "version: !!int abc\n"
        + LADDER
        + f"""
rules:
  - name: r
    continue: !!bool maybe
    match:
      incident:
        affected_customers: {{gt: {huge}}}
      customer:
        incidents: {{within: 30d, gte: !!int abc}}
"""
    )
    assert problems(text) == [
        f"{at(text, '!!int abc')}: version: a whole number is expected, not 'abc'",
        f"{at(text, '!!bool')}: rules[0].continue: true or false is expected, not 'maybe'",
        f"{at(text, huge)}: rules[0].match.incident.affected_customers.gt: "
        "the number is too large (5000 digits)",
        f"{at(text, '!!int abc', 2)}: rules[0].match.customer.incidents.gte: "
        "a whole number is expected, not 'abc'",
    ]


def test_bare_on_call_is_refused_where_staff_are_named() -> None:
    """``on_call`` without a group passed the check but named nobody at run time: the
    forced follow-up was never created, ``notify: [on_call]`` told no one."""
    text = """
policies:
  p:
    steps:
      - {after: 0m, every: 5m, channels: [email], notify: [on_call]}
rules:
  - name: r
    policy: p
    followup: {kind: call, owner: on_call, deadline: 1h, escalation: [care, on_call]}
"""
    refused = "on_call names the person on call in a group: write on_call:GROUP " + (
        "(known: account-managers, care, duty-managers)"
    )
    assert problems(text) == [
        f"{at(text, 'on_call]')}: policies.p.steps[0].notify[0]: {refused}",
        f"{at(text, 'on_call,')}: rules[0].followup.owner: {refused}",
        f"{at(text, 'on_call]', on='escalation')}: rules[0].followup.escalation[1]: {refused}",
    ]
    assert problems(text.replace("[on_call]", "['on_call:']"))[0].endswith(
        "policies.p.steps[0].notify[0]: write staff:ID, group:NAME, on_call:GROUP or "
        "account_manager, not 'on_call:'"
    )


def test_a_problem_in_merged_content_is_where_it_is_written_and_names_the_merge() -> None:
    """It is reported at the anchor's text, with the path where it is read and the line of
    the ``<<`` that brought it in (before: at the anchor, as "unknown key" of another rule's
    mapping, whatever the content)."""
    text = (
        LADDER
        + """
rules:
  - name: a
    match:
      incident:
        labels: &prod {env: prod, team: {matchs: "w.*"}}
    continue: true
  - name: b
    match:
      incident:
        labels:
          <<: *prod
          service: payments
    continue: true
  - name: c
    policy: default
"""
    )
    assert problems(text) == [
        f"{at(text, 'matchs')}: rules[0].match.incident.labels.team.matchs: unknown operator "
        "(did you mean 'matches'?)",
        f"{at(text, 'matchs')}: rules[1].match.incident.labels.team.matchs: unknown operator "
        f"(did you mean 'matches'?) (merged by `<<` at line {line_of(text, '<<: *prod')})",
    ]


def test_bad_merges_are_located() -> None:
    text = (
        LADDER
        + """
rules:
  - name: scalar
    match: {incident: {labels: {<<: 5, env: prod}}}
    continue: true
  - name: list-of-scalars
    match: {incident: {labels: {<<: [{team: web}, x], env: prod}}}
    continue: true
  - name: itself
    match: {incident: {labels: &me {<<: *me, env: prod}}}
"""
    )
    assert problems(text) == [
        f"{at(text, '5,')}: rules[0].match.incident.labels: bad merge: << takes a mapping "
        "(e.g. *anchor) or a list of them, not '5'",
        f"{at(text, 'x]')}: rules[1].match.incident.labels: bad merge: << takes a mapping "
        "(e.g. *anchor) or a list of them, not 'x'",
        f"{at(text, '&me {<<')}: rules[2].match.incident.labels: bad merge: the merge takes "
        "in the mapping it is part of",
    ]


def test_merges_of_merges_are_not_multiplied() -> None:
    """Each of 20 steps merges the one before ten times: 10**20 entries, had each merge
    been expanded."""
    lines = [
        "policies:",
        "  p:",
        "    steps:",
        "      - &s0 {after: 0m, every: 30m, channels: [email]}",
    ]
    for n in range(1, 21):
        merges = ", ".join([f"*s{n - 1}"] * 10)
        lines.append(f"      - &s{n} {{<<: [{merges}], after: {n}h}}")
    started = time.monotonic()
    ruleset = load("\n".join([*lines, "rules:", "  - name: r", "    policy: p", ""]))
    assert time.monotonic() - started < 2
    assert len(ruleset.policies["p"].steps) == 21
