"""``broadcaster templates check | preview`` through the command line."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import update
from typer.testing import CliRunner

from broadcaster.cli.main import app
from broadcaster.clock import RealClock
from broadcaster.compose.locale import format_when
from broadcaster.incidents import service
from broadcaster.store import Database, Incident
from broadcaster.store.migrate import upgrade
from rules import EXAMPLE_RULES, PlanSnapshot, load_rules

runner = CliRunner()


def _config(tmp_path: Path, extra: str = "") -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        f'database: {{url: "sqlite+aiosqlite:///{tmp_path / "s.db"}"}}\n{extra}', encoding="utf-8"
    )
    return config


def test_check_passes_on_the_shipped_templates(tmp_path: Path) -> None:
    result = runner.invoke(app, ["templates", "check", "--config", str(_config(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "checked 84 templates: 0 errors" in result.output


def test_check_fails_on_a_broken_override(tmp_path: Path) -> None:
    broken = tmp_path / "tpl" / "en" / "resolution" / "email_text.j2"
    broken.parent.mkdir(parents=True)
    broken.write_text("Sorry, {{ customer.name }}. {{ resolution.regret }}", encoding="utf-8")
    config = _config(tmp_path, f'messages: {{templates_dir: "{tmp_path / "tpl"}"}}\n')
    result = runner.invoke(app, ["templates", "check", "--config", str(config)])
    assert result.exit_code == 1
    assert "apology lacks its prevention" in result.output


def test_check_names_an_override_that_is_not_utf8(tmp_path: Path) -> None:
    latin = tmp_path / "tpl" / "en" / "update" / "email_subject.j2"
    latin.parent.mkdir(parents=True)
    latin.write_bytes("Mise à jour: {{ incident.title }}".encode("latin-1"))
    config = _config(tmp_path, f'messages: {{templates_dir: "{tmp_path / "tpl"}"}}\n')
    result = runner.invoke(app, ["templates", "check", "--config", str(config)])
    assert result.exit_code == 1, result.output
    assert "en/update/email_subject.j2: not UTF-8 (byte at offset 5)" in result.output


def test_preview_sms_shows_segments(tmp_path: Path) -> None:
    args = ["templates", "preview", "update", "--channel", "sms", "--language", "nl"]
    result = runner.invoke(app, [*args, "--config", str(_config(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "Volgende update uiterlijk" in result.output and "GSM-7 segments" in result.output


def test_preview_with_a_real_incident_and_customer(tmp_path: Path) -> None:
    config = _config(tmp_path)
    url = f"sqlite+aiosqlite:///{tmp_path / 's.db'}"
    upgrade(url)
    people = tmp_path / "c.jsonl"
    people.write_text(
        '{"id": "K1", "name": "Kees", "language": "nl", "timezone": "Europe/Amsterdam",'
        ' "email": "kees@example.nl", "components": ["rail"]}\n',
        encoding="utf-8",
    )
    assert (
        runner.invoke(app, ["customers", "import", str(people), "--config", str(config)]).exit_code
        == 0
    )

    async def declare() -> int:
        db = Database(url)
        try:
            incident = await service.declare(
                db,
                RealClock(),
                service.Declaration(
                    "Geen treinen", "major", "Er rijden geen treinen.", components=["rail"]
                ),
            )
            return incident.id
        finally:
            await db.dispose()

    incident_id = asyncio.run(declare())
    before = datetime.now(UTC)
    result = runner.invoke(
        app,
        [
            "templates",
            "preview",
            "first",
            "--incident",
            str(incident_id),
            "--customer",
            "K1",
            "--config",
            str(config),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Beste Kees," in result.output
    assert "Er rijden geen treinen." in result.output
    assert "List-Unsubscribe: <http://127.0.0.1:8080/u/" in result.output
    # The promise is this incident's (major: 30 minutes from now), not the sample's.
    after = datetime.now(UTC)
    promises = {
        format_when(at + timedelta(minutes=30), "Europe/Amsterdam", "nl", at, ahead=True)
        for at in (before, after)
    }
    assert any(f"uiterlijk {p}" in result.output for p in promises), (promises, result.output)


def test_preview_refuses_an_unknown_kind(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["templates", "preview", "gossip", "--config", str(_config(tmp_path))]
    )
    assert result.exit_code == 1 and "unknown kind" in result.output


def test_preview_refuses_a_zone_or_channel_that_names_nothing(tmp_path: Path) -> None:
    config = str(_config(tmp_path))
    zone = runner.invoke(
        app, ["templates", "preview", "first", "--timezone", "Nowhere/Bad", "--config", config]
    )
    assert zone.exit_code == 2 and "--timezone: unknown time zone 'Nowhere/Bad'" in zone.output
    channel = runner.invoke(
        app, ["templates", "preview", "first", "--channel", "nosuch", "--config", config]
    )
    assert channel.exit_code == 2
    assert "--channel: 'nosuch' is neither a form nor a configured channel" in channel.output


def test_preview_of_a_step_notice_has_the_incident_s_age_and_step(tmp_path: Path) -> None:
    """The preview's facts are the daemon's notice's: the step of the stored plan in force
    now, and the incident's age (they were missing: "Incident 1, ... is investigating.")."""
    config = _config(tmp_path)
    url = f"sqlite+aiosqlite:///{tmp_path / 's.db'}"
    upgrade(url)
    critical = load_rules(
        EXAMPLE_RULES.read_text(encoding="utf-8"),
        str(EXAMPLE_RULES),
        channels={"push", "email", "sms"},
        staff=set(),
        groups={"duty-managers", "account-managers", "care"},
    )

    async def declare() -> int:
        db = Database(url)
        try:
            incident = await service.declare(
                db,
                RealClock(),
                service.Declaration("Trains stopped", "critical", "Down.", components=["rail"]),
            )
            async with db.session() as session, session.begin():
                await session.execute(
                    update(Incident)
                    .where(Incident.id == incident.id)
                    .values(
                        created_at=datetime.now(UTC) - timedelta(hours=2, minutes=7),
                        plan=PlanSnapshot.from_ruleset(critical, "critical").to_dict(),
                    )
                )
            return incident.id
        finally:
            await db.dispose()

    incident_id = asyncio.run(declare())
    args = ["templates", "preview", "incident_step", "--incident", str(incident_id)]
    result = runner.invoke(app, [*args, "--timezone", "UTC", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "and has been open for 2 hours and 7 minutes (since " in result.output
    assert "Escalation step: 2 of 2 of the critical policy, from 2 hours on" in result.output
    sms = runner.invoke(app, [*args, "--channel", "sms", "--config", str(config)])
    assert sms.exit_code == 0, sms.output
    assert "open 2 hours and 7 minutes: step 2 of 2 of the critical policy" in sms.output
