"""``broadcaster rules check | explain`` and ``broadcaster followups …`` from the command line."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from typer.testing import CliRunner

from broadcaster.cli.main import app
from broadcaster.clock import RealClock
from broadcaster.config import load_settings
from broadcaster.dispatch.channels import build_channels
from broadcaster.engine import Engine
from broadcaster.store import Database
from rules import EXAMPLE_RULES

runner = CliRunner()


def _config(tmp_path: Path, rules: Path = EXAMPLE_RULES) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
database: {{url: "sqlite+aiosqlite:///{tmp_path / "s.db"}"}}
delivery: {{channels: [email]}}
channels:
  email: {{type: console, contact: email, path: "{tmp_path / "out.jsonl"}"}}
  sms: {{type: console, contact: sms, path: "{tmp_path / "out.jsonl"}"}}
  push: {{type: console, contact: fcm, path: "{tmp_path / "out.jsonl"}"}}
staff:
  notify_channel: email
  people:
    ann: {{name: Ann, email: ann@example.org, manager: maria}}
    maria: {{name: Maria, email: maria@example.org}}
  groups:
    account-managers: {{members: [ann]}}
    care: {{members: [ann]}}
    duty-managers: {{members: [maria], on_call: maria}}
rules: {{path: "{rules}"}}
""",
        encoding="utf-8",
    )
    return config


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_rules_check_ok_and_located_errors(tmp_path: Path) -> None:
    config = _config(tmp_path)
    code, out = invoke("rules", "check", "--config", str(config))
    assert code == 0 and "ok (2 policies" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "policies:\n  p:\n    steps:\n      - {after: 0m, every: soon, channels: [fax]}\n"
        "rules:\n  - {name: r, policy: p, followup: {kind: call, owner: group:nobody,"
        " deadline: 1h}}\n",
        encoding="utf-8",
    )
    code, out = invoke("rules", "check", str(bad), "--config", str(config))
    assert code == 1
    assert re.search(r"bad\.yaml:4:\d+: .*every", out)
    assert "fax" in out and "nobody" in out


def _declare_with_vip(tmp_path: Path, config: Path) -> str:
    people = tmp_path / "c.csv"
    people.write_text(
        "id,name,email,components,tier,account_manager\n"
        "V1,Vera,vera@example.org,rail,vip,ann\nS1,Sam,sam@example.org,rail,,\n",
        encoding="utf-8",
    )
    assert invoke("customers", "import", str(people), "--config", str(config))[0] == 0
    code, out = invoke(
        "incident",
        "declare",
        "--title",
        "Down",
        "--severity",
        "critical",
        "--component",
        "rail",
        "--message",
        "Down.",
        "--config",
        str(config),
    )
    assert code == 0, out
    found = re.search(r"incident (\d+)", out)
    assert found
    return found.group(1)


def test_explain_names_the_matching_rules(tmp_path: Path) -> None:
    config = _config(tmp_path)
    incident = _declare_with_vip(tmp_path, config)
    code, out = invoke("rules", "explain", incident, "--customer", "V1", "--config", str(config))
    assert code == 0, out
    assert "vip-critical-call" in out and "critical-policy" in out


def test_followup_queue_done_and_waive_rights_and_close(tmp_path: Path) -> None:
    config = _config(tmp_path)
    incident = _declare_with_vip(tmp_path, config)

    async def one_round() -> None:
        settings = load_settings(config)
        db = Database(settings.database.url)
        engine = await Engine.create(settings, db, RealClock(), build_channels(settings))
        try:
            await engine.process_due_rounds()
            await engine.dispatch_all()
        finally:
            await engine.aclose()
            await db.dispose()

    asyncio.run(one_round())
    code, out = invoke("followups", "list", "--config", str(config))
    assert code == 0 and "V1" in out and "ann" in out
    task = out.splitlines()[1].split()[0]
    resolve = ("incident", "resolve", incident, "--message", "Up.", "--config", str(config))
    code, out = invoke(*resolve)
    assert code == 1 and "require" in out and "remedy" in out
    code, out = invoke(
        *resolve,
        "--cause-kind",
        "known",
        "--cause",
        "Power.",
        "--remedy",
        "Fixed.",
        "--prevention",
        "UPS.",
    )
    assert code == 0, out
    code, out = invoke("incident", "close", incident, "--config", str(config))
    assert code == 1 and "cannot be closed yet" in out  # the resolution is not sent yet
    asyncio.run(one_round())
    code, out = invoke("incident", "close", incident, "--config", str(config))
    assert code == 1 and "forced follow-up" in out
    code, out = invoke(
        "followups", "waive", task, "--reason", "x", "--as", "ann", "--config", str(config)
    )
    assert code == 1 and "only a manager" in out
    code, out = invoke(
        "followups",
        "done",
        task,
        "--outcome",
        "reached",
        "--note",
        "Apologised.",
        "--as",
        "ann",
        "--config",
        str(config),
    )
    assert code == 0, out
    assert invoke("incident", "close", incident, "--config", str(config))[0] == 0
    code, out = invoke("incident", "show", incident, "--config", str(config))
    assert code == 0 and "done" in out and "outcome reached" in out and "vip-critical-call" in out
