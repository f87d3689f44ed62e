"""``broadcaster rules check`` on the edits a review found mishandled: each is a located
error (exit 1, no traceback) or, for merge keys, accepted."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from broadcaster.cli.main import app

runner = CliRunner()

LADDER = """\
policies:
  default:
    steps:
      - {after: 0m, every: 30m, channels: [email]}
rules:
"""


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
database: {{url: "sqlite+aiosqlite:///{tmp_path / "s.db"}"}}
delivery: {{channels: [email]}}
channels:
  email: {{type: console, contact: email, path: "{tmp_path / "out.jsonl"}"}}
staff:
  notify_channel: email
  people:
    carla: {{name: Carla, email: carla@example.org}}
  groups:
    care: {{members: [carla], on_call: carla}}
    duty-managers: {{members: [carla]}}
rules: {{path: "{tmp_path / "rules.yaml"}"}}
""",
        encoding="utf-8",
    )
    return config


def _check(tmp_path: Path, text: str) -> tuple[int, str]:
    rules = tmp_path / "candidate.yaml"
    rules.write_text(text, encoding="utf-8")
    result = runner.invoke(app, ["rules", "check", str(rules), "--config", str(_config(tmp_path))])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            LADDER
            + "  - name: r\n    match: {incident: {source: {matches: 'a{4294967296}'}}}\n"
            + "    policy: default\n",
            "candidate.yaml:7:42: rules[0].match.incident.source.matches: invalid regular "
            "expression 'a{4294967296}': the repetition number is too large",
        ),
        (
            LADDER + "  - name: r\n    followup: {kind: call, owner: on_call, deadline: 1h}\n",
            "candidate.yaml:7:35: rules[0].followup.owner: on_call names the person on call in "
            "a group: write on_call:GROUP (known: care, duty-managers)",
        ),
        (
            "# all rules removed for now\n",
            "candidate.yaml: the file is empty (no policies, no rules); to run without rules, "
            "leave rules.path out of the configuration",
        ),
    ],
    ids=["regex-overflow", "bare-on-call", "comments-only"],
)
def test_bad_edits_are_located_errors(tmp_path: Path, text: str, problem: str) -> None:
    code, out = _check(tmp_path, text)
    assert code == 1
    assert f"error: {tmp_path / problem}" in out
    assert "Traceback" not in out


def test_merge_keys_in_labels_are_accepted(tmp_path: Path) -> None:
    text = LADDER + (
        "  - name: prod\n"
        "    match: {incident: {labels: &prod {env: prod, team: web}}}\n"
        "    continue: true\n"
        "  - name: prod-payments\n"
        "    match:\n"
        "      incident:\n"
        "        labels:\n"
        "          <<: *prod\n"
        "          service: payments\n"
        "    followup: {kind: call, owner: on_call:care, deadline: 1h}\n"
        "    continue: true\n"
        "  - name: catch-all\n"
        "    policy: default\n"
    )
    code, out = _check(tmp_path, text)
    assert (code, out.strip()) == (0, f"{tmp_path / 'candidate.yaml'}: ok (1 policies, 3 rules)")
