"""Checks that catch, before an incident, a configuration or rule that names nobody: an empty
staff group (a located configuration error) and a rule on ``incident.status: closed``, which
no incident's facts hold (a located rules error)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broadcaster.config import ConfigError, load_settings
from rules import IncidentFacts
from tests.unit.test_config import at as config_at
from tests.unit.test_config import write_config
from tests.unit.test_rules_support import NOW, at, customer, incident, load, problems

PEOPLE = """
staff:
  people:
    ann: {name: Ann Visser}
  groups:
"""


def config_problems(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ or {})
    return info.value.problems


# -- empty staff groups ----------------------------------------------------------------------


def test_a_group_with_an_empty_member_list_is_refused_where_written(tmp_path: Path) -> None:
    path = write_config(tmp_path, PEOPLE + "    care:\n      members: []\n")
    assert config_problems(path) == [
        f"{config_at(path, 'members')}: staff.groups.care.members: group 'care' names nobody: "
        "a rule's group:care or on_call:care would reach no one; list its staff ids in "
        "members (or set on_call), or remove the group"
    ]


def test_a_group_without_members_is_refused_at_the_group(tmp_path: Path) -> None:
    path = write_config(tmp_path, PEOPLE + "    care: {}\n    day: {members: [ann]}\n")
    (problem,) = config_problems(path)
    assert problem.startswith(f"{config_at(path, 'care')}: staff.groups.care.members: ")
    assert "group 'care' names nobody" in problem


def test_an_empty_group_set_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    path = write_config(tmp_path, PEOPLE + "    care: {members: [ann]}\n")
    variable = "BROADCASTER_STAFF__GROUPS__CARE__MEMBERS"
    (problem,) = config_problems(path, {variable: "[]"})
    assert problem.startswith(f"environment {variable}: staff.groups.care.members: group ")


def test_a_group_of_its_on_call_person_alone_names_someone(tmp_path: Path) -> None:
    """``group:night`` and ``on_call:night`` name ann (docs/rules.md, Staff references)."""
    path = write_config(tmp_path, PEOPLE + "    night: {on_call: ann}\n")
    assert load_settings(path, {}).staff.groups["night"].on_call == "ann"


# -- incident.status: closed -----------------------------------------------------------------

RULE = """
rules:
  - name: after-close
    match:
      incident:
        status: {spec}
    require_for_resolution: [cause]
"""
NEVER = (
    "status 'closed' never matches: the rules see a closed incident as resolved; "
    "write resolved (it covers closed incidents too)"
)


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ("closed", "status"),
        ("{eq: closed}", "status.eq"),
        ("{ne: closed}", "status.ne"),
        ("[resolved, closed]", "status[1]"),
        ("{not_in: [monitoring, closed]}", "status.not_in[1]"),
    ],
)
def test_a_closed_status_condition_is_a_located_error(spec: str, path: str) -> None:
    text = RULE.format(spec=spec)
    assert problems(text) == [
        f"{at(text, 'closed', on='status')}: rules[0].match.incident.{path}: {NEVER}"
    ]


def test_an_unknown_status_lists_only_those_a_rule_can_see() -> None:
    text = RULE.format(spec="open")
    assert problems(text) == [
        f"{at(text, 'open')}: rules[0].match.incident.status: unknown status 'open' "
        "(one of investigating, identified, monitoring, resolved)"
    ]


def test_a_closed_incident_s_facts_say_resolved_so_resolved_rules_match_it() -> None:
    assert IncidentFacts(severity="minor", status="closed", started_at=NOW).status == "resolved"
    ruleset = load(RULE.format(spec="resolved"))
    closed = incident(status="closed")
    assert ruleset.evaluate(closed, customer(), now=NOW).matched_rules == ["after-close"]
