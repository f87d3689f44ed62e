"""``broadcaster rules check`` warns of a follow-up whose owner may name nobody for some
customers, and says whom the daemon then makes its owner with the configured staff; the
warning does not fail the check."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from broadcaster.cli.main import app
from rules import EXAMPLE_RULES

runner = CliRunner()

RULES = """\
policies:
  default:
    steps:
      - {{after: 0m, every: 30m, channels: [email]}}
rules:
  - name: catch-all
    continue: true
    policy: default
  - name: vip-call
    match: {{customer: {{tier: vip}}}}
    followup: {{kind: call, owner: {owner}, deadline: 1h{more}}}
"""


def _config(tmp_path: Path, people: str, staff: str = "") -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
database: {{url: "sqlite+aiosqlite:///{tmp_path / "s.db"}"}}
delivery: {{channels: [email]}}
channels:
  email: {{type: console, contact: email, path: "{tmp_path / "out.jsonl"}"}}
staff:
  notify_channel: email{staff}
  people:
{people}
  groups:
    care: {{members: [carla], on_call: carla}}
""",
        encoding="utf-8",
    )
    return config


NOBODY_ADMIN = "    carla: {name: Carla, email: carla@example.org}"
WITH_ADMIN = NOBODY_ADMIN + "\n    maria: {name: Maria, email: maria@example.org, admin: true}"


def _check(tmp_path: Path, config: Path, owner: str, more: str = "") -> tuple[int, str]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.format(owner=owner, more=more), encoding="utf-8")
    result = runner.invoke(app, ["rules", "check", str(rules), "--config", str(config)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def _warning(tmp_path: Path, chain: str, whom: str) -> str:
    return (
        f"warning: {tmp_path / 'rules.yaml'}:9:5: rule 'vip-call': followup.owner "
        "account_manager names nobody for a customer without an account manager in "
        f"staff.people and {chain}: such a follow-up is {whom}"
    )


@pytest.mark.parametrize(
    ("people", "staff", "whom"),
    [
        (
            NOBODY_ADMIN,
            "",
            "kept unowned, logged at error, until an admin claims or waives it (there is "
            "neither staff.unassigned_owner nor an admin: true in staff.people)",
        ),
        (WITH_ADMIN, "", "owned by the first admin in staff.people, maria"),
        (WITH_ADMIN, "\n  unassigned_owner: carla", "owned by staff.unassigned_owner, carla"),
    ],
    ids=["unowned", "admin", "unassigned-owner"],
)
def test_an_account_manager_owner_without_escalation_warns_whom_it_falls_back_to(
    tmp_path: Path, people: str, staff: str, whom: str
) -> None:
    code, out = _check(tmp_path, _config(tmp_path, people, staff), "account_manager")
    assert code == 0
    assert _warning(tmp_path, "it has no escalation", whom) in out
    assert f"{tmp_path / 'rules.yaml'}: ok (1 policies, 2 rules, 1 warning(s))" in out


def test_an_escalation_that_names_nobody_either_warns(tmp_path: Path) -> None:
    config = _config(tmp_path, WITH_ADMIN)
    code, out = _check(tmp_path, config, "account_manager", ", escalation: [account_manager]")
    assert code == 0
    whom = "owned by the first admin in staff.people, maria"
    assert _warning(tmp_path, "no link of its escalation does", whom) in out


@pytest.mark.parametrize(
    ("owner", "more"),
    [
        ("account_manager", ", escalation: [account_manager, group:care]"),
        ("group:care", ""),
        ("on_call:care", ""),
        ("staff:carla", ""),
    ],
    ids=["escalation-owns-it", "group", "on-call", "staff"],
)
def test_an_owner_named_for_every_customer_does_not_warn(
    tmp_path: Path, owner: str, more: str
) -> None:
    code, out = _check(tmp_path, _config(tmp_path, NOBODY_ADMIN), owner, more)
    assert (code, out.strip()) == (0, f"{tmp_path / 'rules.yaml'}: ok (1 policies, 2 rules)")


def test_the_shipped_example_rules_check_without_warnings() -> None:
    """Each of its account_manager follow-ups escalates to a group, which owns it for a
    customer without an account manager."""
    result = runner.invoke(app, ["rules", "check", str(EXAMPLE_RULES)])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
