"""Shared helpers of the rules tests (collected by pytest, but it holds no tests): the example
file, the known names, located positions, facts with defaults."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta

import pytest

from rules import EXAMPLE_RULES, CustomerFacts, IncidentFacts, RulesError, RuleSet, load_rules

CHANNELS = frozenset({"email", "sms", "push"})
STAFF = frozenset({"ann", "bob"})
GROUPS = frozenset({"duty-managers", "account-managers", "care"})
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
FILE = "rules.yaml"


def example() -> RuleSet:
    return load_rules(
        EXAMPLE_RULES.read_text(encoding="utf-8"),
        str(EXAMPLE_RULES),
        channels=CHANNELS,
        staff=STAFF,
        groups=GROUPS,
    )


def load_named(text: str, filename: str) -> RuleSet:
    return load_rules(text, filename, channels=CHANNELS, staff=STAFF, groups=GROUPS)


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def load(text: str) -> RuleSet:
    return load_rules(dedent(text), FILE, channels=CHANNELS, staff=STAFF, groups=GROUPS)


def problems(text: str) -> list[str]:
    with pytest.raises(RulesError) as info:
        load(text)
    assert info.value.problems, "a RulesError must list its problems"
    for problem in info.value.problems:
        assert problem in str(info.value)
    return info.value.problems


def at(text: str, needle: str, occurrence: int = 1, *, on: str | None = None) -> str:
    """``rules.yaml:line:col`` of ``needle`` on the ``occurrence``-th line holding it (or
    holding ``on``, when given)."""
    seen = 0
    for number, line in enumerate(dedent(text).splitlines(), start=1):
        if (on or needle) in line:
            seen += 1
            if seen == occurrence:
                column = line.find(needle)
                assert column >= 0, f"{needle!r} not on line {number}"
                return f"{FILE}:{number}:{column + 1}"
    raise AssertionError(f"{on or needle!r} not in the text")


def line_of(text: str, needle: str) -> str:
    return at(text, needle).split(":")[1]


def incident(
    severity: str = "major",
    age: timedelta = timedelta(minutes=10),
    **facts: object,
) -> IncidentFacts:
    return IncidentFacts(
        severity=severity,
        status=str(facts.pop("status", "investigating")),
        started_at=NOW - age,
        **facts,  # type: ignore[arg-type]
    )


def customer(customer_id: str = "c1", **facts: object) -> CustomerFacts:
    return CustomerFacts(customer_id, **facts)  # type: ignore[arg-type]
