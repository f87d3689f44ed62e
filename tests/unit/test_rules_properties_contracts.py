"""Property tests of contracts around evaluation: the loader fails only with located
``RulesError``s (on random documents and on a mutated example); snapshots, durations and
quiet hours keep their promises."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rules import (
    EXAMPLE_RULES,
    PlanSnapshot,
    QuietHours,
    RulesError,
    RuleSet,
    format_duration,
    hold_until,
    parse_duration,
)
from rules.quiet import in_window
from tests.unit.test_rules_support import load_named

SLOW = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
ZONES = ["UTC", "Europe/Amsterdam", "America/New_York", "Asia/Kolkata", "Pacific/Chatham"]


def load_text(text: str) -> RuleSet:
    return load_named(text, "random.yaml")


# --- the loader fails only with located problems -------------------------------------------

KEYS = [
    "version",
    "policies",
    "rules",
    "name",
    "match",
    "incident",
    "customer",
    "continue",
    "policy",
    "followup",
    "compensation",
    "require_for_resolution",
    "quiet_hours",
    "throttle",
    "steps",
    "after",
    "every",
    "channels",
    "notify",
    "urgency",
    "kind",
    "owner",
    "deadline",
    "severity",
    "tier",
    "age",
    "labels",
    "incidents",
    "within",
    "gte",
    "in",
    "matches",
    "from",
    "to",
    "max",
    "per",
    "amount",
    "currency",
    "when",
    "escalation",
    "tags",
    "<<",
    "bogus",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=True),
    st.sampled_from(["critical", "2h", "0m", "22:00", "sms", "care", "[", "(x", "vip", "-1", ""]),
    st.text(max_size=8),
)
documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)
    ),
    max_leaves=25,
)
PROBLEM = re.compile(r"^random\.yaml(:\d+:\d+)?: .+")
EXAMPLE_DOCUMENT = yaml.safe_load(EXAMPLE_RULES.read_text(encoding="utf-8"))


@st.composite
def mutated_examples(draw: st.DrawFn) -> object:
    """The example file with a few values replaced, keys removed or bogus keys added, deep
    inside, where the random documents above rarely reach."""
    document = copy.deepcopy(EXAMPLE_DOCUMENT)
    for _ in range(draw(st.integers(1, 4))):
        node: Any = document
        while True:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            key = draw(st.sampled_from(keys))
            child = node[key]
            if isinstance(child, dict | list) and child and draw(st.booleans()):
                node = child
                continue
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                node[key] = draw(documents)
            elif action == "delete":
                del node[key]
            elif isinstance(node, dict):
                node[draw(st.sampled_from(KEYS))] = draw(documents)
            else:
                node.append(draw(documents))
            break
    return document


@SLOW
@given(documents | mutated_examples() | st.text(max_size=200))
def test_loader_fails_only_with_located_problems(document: object) -> None:
    text = document if isinstance(document, str) else yaml.safe_dump(document)
    try:
        load_text(text)
    except RulesError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert PROBLEM.match(problem), problem


# --- snapshots, durations, quiet hours -----------------------------------------------------

durations = st.timedeltas(timedelta(0), timedelta(days=3000))


@given(
    st.lists(durations, min_size=1, max_size=5, unique=True),
    st.lists(durations, min_size=5, max_size=5),
)
def test_snapshots_round_trip(afters: list[timedelta], everies: list[timedelta]) -> None:
    starts = [timedelta(0), *sorted(a for a in afters if a > timedelta(0))]
    steps = [
        {
            "after": format_duration(after),
            "every": format_duration(max(every, timedelta(microseconds=1))),
            "channels": ["email"],
            "notify": ["care"],
        }
        for after, every in zip(starts, everies, strict=False)
    ]
    ruleset = load_text(yaml.safe_dump({"policies": {"p": {"steps": steps}}}))
    plan = PlanSnapshot.from_ruleset(ruleset, "p")
    again = PlanSnapshot.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
    for age in (*starts, *(s - timedelta(microseconds=1) for s in starts)):
        assert again.step_at(age) == ruleset.policies["p"].step_at(age)


@given(durations)
def test_durations_round_trip(value: timedelta) -> None:
    assert parse_duration(format_duration(value)) == value


clock = st.builds(time, st.integers(0, 23), st.integers(0, 59))


@given(
    clock,
    clock,
    st.datetimes(
        min_value=datetime(2000, 1, 1),
        max_value=datetime(2100, 1, 1),
        timezones=st.sampled_from([ZoneInfo(z) for z in ZONES]),
    ),
    st.sampled_from(ZONES),
    st.sampled_from(["minor", "major", "critical"]),
)
def test_hold_until_contract(
    start: time, end: time, now: datetime, zone: str, severity: str
) -> None:
    assume(start != end)
    quiet = QuietHours(start, end)
    until = hold_until(quiet, zone, now, severity)
    wall = now.astimezone(ZoneInfo(zone)).time().replace(fold=0)
    if severity == "critical" or not in_window(quiet, wall):
        assert until is None
        return
    assert until is not None
    assert now.astimezone(UTC) < until.astimezone(UTC) <= now.astimezone(UTC) + timedelta(hours=26)
    assert not in_window(quiet, until.astimezone(ZoneInfo(zone)).time().replace(fold=0))
