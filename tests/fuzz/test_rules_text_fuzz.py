"""The rules loader on damaged YAML *text*: every problem is located and, past the YAML
syntax, names the field.

tests/unit/test_rules_properties_contracts.py mutates parsed documents; here the example
rules file is damaged character by character (indentation, quotes, tabs, anchors and aliases,
tags, truncation), which reaches the YAML parser's own errors and odd node shapes. Also: an
alias bomb is refused without being expanded.
"""

from __future__ import annotations

import re
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules import RulesError
from rules.loader import load_rules
from tests.conftest import REPO

EXAMPLE = (REPO / "rules" / "examples" / "default.yaml").read_text(encoding="utf-8")
CHANNELS = {"email", "sms", "push"}
GROUPS = {"duty-managers", "account-managers", "care"}
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SYNTAX = re.compile(r"^rules\.yaml:\d+:\d+: YAML syntax error: .+")
FIELD = re.compile(r"^rules\.yaml:\d+:\d+: \S.*?: .+", re.S)
"""``file:line:column: field.path[0].key: what is wrong`` (an unknown key is quoted as it is
written, whatever its characters)."""
WHOLE = re.compile(r"^rules\.yaml(:\d+:\d+)?: .+")
"""Problems of the file as a whole (empty, not a mapping) may name no field."""

PIECES = [
    " ",
    "  ",
    "\t",
    "\n",
    ":",
    "- ",
    "#",
    "'",
    '"',
    "{",
    "}",
    "[",
    "]",
    ",",
    "&x ",
    "*x",
    "<<: *x",
    "!!python/object/apply:os.system ['true']",
    "!!binary",
    "~",
    "? ",
    "|",
    ">",
    "%YAML 1.1\n",
    "---\n",
    "...\n",
    "0x1F",
    "1e400",
    "-.inf",
    ".nan",
    "yes",
    "é",
]


@st.composite
def damaged(draw: st.DrawFn) -> str:
    text = EXAMPLE
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "truncate"]))
        if action == "insert":
            text = text[:at] + draw(st.sampled_from(PIECES) | st.text(max_size=3)) + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 30)) :]
        else:
            text = text[:at]
    return text


@FUZZ
@given(text=damaged())
def test_damaged_rules_fail_only_with_located_problems(text: str) -> None:
    try:
        load_rules(text, "rules.yaml", channels=CHANNELS, staff=set(), groups=GROUPS)
    except RulesError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert SYNTAX.match(problem) or FIELD.match(problem) or WHOLE.match(problem), problem
            if not SYNTAX.match(problem) and re.match(r"^rules\.yaml:\d+:\d+: ", problem):
                assert FIELD.match(problem), f"a located problem that names no field: {problem}"


def test_the_example_itself_loads() -> None:
    load_rules(EXAMPLE, "rules.yaml", channels=CHANNELS, staff=set(), groups=GROUPS)


def test_an_alias_bomb_is_refused_without_expanding() -> None:
    lines = ["version: 1", "policies:", "  default:", "    steps:"]
    lines.append("      - {after: 0m, every: 30m, channels: &a [x, x, x, x, x, x, x, x, x, x]}")
    for n in range(1, 9):
        prev, cur = chr(ord("a") + n - 1), chr(ord("a") + n)
        items = ", ".join([f"*{prev}"] * 10)
        lines.append(f"      - {{after: {n}h, every: 30m, channels: &{cur} [{items}]}}")
    started = time.monotonic()
    try:
        load_rules(
            "\n".join(lines) + "\n", "rules.yaml", channels=CHANNELS, staff=set(), groups=GROUPS
        )
    except RulesError as exc:
        assert all(WHOLE.match(p) for p in exc.problems)
    else:
        raise AssertionError("10**9 channel names accepted")
    assert time.monotonic() - started < 5
