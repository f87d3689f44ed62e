"""Explain: per rule, matched or not and why; the same decision as evaluate; the text the CLI
prints (golden files, rewritten with UPDATE_GOLDENS=1 and reviewed)."""

from __future__ import annotations

import ast
import os
from datetime import timedelta
from pathlib import Path

import pytest

from rules import EXAMPLE_RULES, PlanSnapshot, RuleSet, explain, load_rules
from tests.unit.test_rules_support import (
    CHANNELS,
    GROUPS,
    NOW,
    STAFF,
    customer,
    example,
    incident,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "rules"
PACKAGE = Path(__file__).resolve().parents[2] / "rules"
HOUR, MINUTE = timedelta(hours=1), timedelta(minutes=1)


def shipped() -> RuleSet:
    # A stable file name, so the golden text does not depend on the checkout's path.
    return load_rules(
        EXAMPLE_RULES.read_text(encoding="utf-8"),
        "rules/examples/default.yaml",
        channels=CHANNELS,
        staff=STAFF,
        groups=GROUPS,
    )


SCENARIOS = {
    "vip_critical": (
        incident("critical", 2 * HOUR + 30 * MINUTE, components=frozenset({"pay"})),
        customer(
            "acme",
            tier="vip",
            timezone="Europe/Amsterdam",
            incident_history=(NOW - timedelta(days=3), NOW - timedelta(days=12), NOW),
        ),
    ),
    "incident_only": (incident("major", 5 * HOUR, labels={"team": "web"}), None),
    "business_minor": (
        incident("minor", 30 * MINUTE),
        customer("b-1", tier="business", tags=frozenset({"retail"}), region="eu", sla="gold"),
    ),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_golden(scenario: str) -> None:
    facts, person = SCENARIOS[scenario]
    text = explain(shipped(), facts, person, now=NOW).render_text()
    golden = GOLDEN / f"explain_{scenario}.txt"
    if os.environ.get("UPDATE_GOLDENS"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    assert golden.exists(), f"no golden file {golden}; run with UPDATE_GOLDENS=1 and review"
    assert text == golden.read_text(encoding="utf-8")


def test_explanation_says_why_a_rule_did_not_match() -> None:
    ruleset = example()
    result = explain(ruleset, incident("minor", HOUR), customer(tier="business"), now=NOW)
    business = next(t for t in result.rules if t.rule == "business-long-incident")
    assert business.outcome == "not matched"
    assert [(c.condition, c.actual, c.ok) for c in business.checks] == [
        ("incident.age > 4h", "1h", False),
        ("customer.tier == business", "business", True),
    ]
    assert business.where.endswith(":57:5")
    credit = next(t for t in result.rules if t.rule == "long-outage-credit")
    assert credit.notes == (
        "compensation credit 10.00 EUR not granted: ✗ incident.age > 2h (actual: 1h)",
    )
    assert [t.outcome for t in result.rules][-2:] == ["not matched", "matched"]


def test_outcomes_without_a_customer_and_after_a_stop() -> None:
    result = explain(example(), incident("critical"), now=NOW)
    outcomes = {t.rule: t.outcome for t in result.rules}
    assert outcomes["vip-critical-call"] == "needs customer"
    assert outcomes["critical-policy"] == "matched"
    assert outcomes["default-policy"] == "not reached"
    assert next(t for t in result.rules if t.rule == "critical-policy").stopped


def test_explain_and_evaluate_agree() -> None:
    ruleset = example()
    for facts, person in SCENARIOS.values():
        assert explain(ruleset, facts, person, now=NOW).decision == ruleset.evaluate(
            facts, person, now=NOW
        )


def test_explain_shows_the_plan_in_force() -> None:
    ruleset = example()
    plan = PlanSnapshot.from_ruleset(ruleset, "default")
    result = explain(ruleset, incident("critical"), now=NOW, plan=plan)
    assert result.decision.policy == "default"
    text = result.render_text()
    assert "policy: default (from the incident's plan snapshot, sha256:" in text
    assert "→ policy critical chosen" in text


def test_an_empty_ruleset_explains_itself() -> None:
    empty = load_rules("rules: []\n", "empty.yaml", channels=CHANNELS, staff=STAFF, groups=GROUPS)
    text = explain(empty, incident(), now=NOW).render_text()
    assert "(the rules file has no rules)" in text
    assert "policy: none (no matching rule chose one)" in text


def test_the_rules_package_is_pure() -> None:
    """No import of the daemon, of channels, or of anything that does I/O."""
    allowed = {
        "__future__",
        "bisect",
        "collections",
        "dataclasses",
        "datetime",
        "decimal",
        "difflib",
        "functools",
        "hashlib",
        "operator",
        "pathlib",
        "re",
        "types",
        "typing",
        "yaml",
        "zoneinfo",
        "rules",
    }
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    assert node.func.attr not in {"read_text", "open", "write_text"}, path
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
