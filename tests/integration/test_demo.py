"""``broadcaster demo``, the README's first command: the main job on the embedded default.

It must run the repository's own ``config.yaml`` (its schedule, channels, rules and staff)
and show what that configuration does: every affected customer told on the rules' channels
at declaration, at each update and at the cadence until the resolution and never after it;
the follow-up the rules force on an account manager, reminded and escalated when missed;
and nothing sent anywhere.
"""

from __future__ import annotations

import itertools
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from broadcaster.cli.main import app
from broadcaster.config import load_settings
from broadcaster.demo import play
from broadcaster.devsmtp import SmtpSink
from broadcaster.store import Database, Delivery, Followup, FollowupEvent, Round

REPO = Path(__file__).resolve().parents[2]
EMBEDDED = REPO / "config.yaml"
START = datetime(2026, 1, 6, 8, 0, tzinfo=UTC)
AFFECTED = {"C001", "C002", "C004", "C005", "C007"}  # payments or nl-north, with an address


async def test_the_demo_plays_the_embedded_default_from_declaration_to_apology(
    tmp_path: Path,
) -> None:
    settings = load_settings(EMBEDDED)
    report = await play(settings, start=START, workdir=tmp_path)

    assert set(report.received) == AFFECTED  # the others subscribe to other topics
    channels = {who: {m.channel for m in got} for who, got in report.received.items()}
    # The critical policy of rules/examples/default.yaml: push, email and SMS, each where the
    # customer has an address for it.
    assert channels == {
        "C001": {"email", "sms"},
        "C002": {"email"},
        "C004": {"email"},
        "C005": {"email", "push"},
        "C007": {"sms"},
    }
    resolved_at = START + timedelta(minutes=70)
    for who, got in report.received.items():
        assert got[0].when == START, who
        assert max(m.when for m in got) == resolved_at, who  # the apology, and nothing after
    first_email = next(m for m in report.received["C001"] if m.channel == "email")
    assert first_email.text.startswith("Beste Anna de Vries")  # her language, Dutch
    assert "Ann Visser" in first_email.text  # the call the rules promise her
    apology = [m for m in report.received["C002"] if m.when == resolved_at]
    assert apology and "we missed it" in apology[0].text and "EUR 5 credit" in apology[0].text

    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}")
    try:
        async with database.session() as session:
            rounds = list(
                (await session.execute(select(Round).order_by(Round.number))).scalars().all()
            )
            tasks = {t.customer_id: t for t in (await session.execute(select(Followup))).scalars()}
            events = list(
                (await session.execute(select(FollowupEvent).order_by(FollowupEvent.id)))
                .scalars()
                .all()
            )
            rerouted = (
                await session.execute(
                    select(Delivery.customer_id, Delivery.channel, Delivery.failover_to).where(
                        Delivery.state == "rerouted"
                    )
                )
            ).all()
    finally:
        await database.dispose()
    # delivery.throttle.sms (4 an hour, then email): Anna's fifth SMS within the hour went
    # to email, where she had the round's email already; the resolution's did not (a
    # throttle never holds back the apology); Greta has no email, and a throttle never
    # silences a customer.
    assert sorted(rerouted) == [("C001", "sms", "email")]
    assert len([m for m in report.received["C001"] if m.channel == "sms"]) == 6
    assert len([m for m in report.received["C007"] if m.channel == "sms"]) == 7
    kinds = [r.kind for r in rounds if r.state != "cancelled"]
    assert kinds == ["first", "no_news", "update", "no_news", "update", "no_news", "resolution"]
    kept = [r for r in rounds if r.state != "cancelled"]
    for before, after in itertools.pairwise(kept):
        assert before.next_due_at is not None and after.started_at is not None
        assert after.started_at <= before.next_due_at  # every promise kept
        assert after.channels == "push,email,sms"

    # The rules' vip-critical-call: one call made, one missed.
    assert set(tasks) == {"C001", "C002"}
    made, missed = tasks["C001"], tasks["C002"]
    assert (made.owner, made.state, made.outcome) == ("ann", "done", "reached")
    assert (missed.owner, missed.state) == ("bram", "open")
    reminded = [e.at for e in events if e.followup_id == missed.id and e.kind == "reminded"]
    assert reminded == [START + timedelta(minutes=m) for m in (30, 60, 90)]
    escalated = [e for e in events if e.followup_id == missed.id and e.kind == "escalated"]
    assert [(e.at, e.staff) for e in escalated] == [(missed.deadline_at, "maria")]

    told = {who: [m.subject for m in got] for who, got in report.staff_notices.items()}
    assert set(told) == {"ann", "bram", "maria"}
    assert len(told["bram"]) == 4  # assigned, then three reminders
    assigned = report.staff_notices["bram"][0].text
    assert f"followups done {missed.id} --as bram --outcome" in assigned  # ready to run
    assert any(s.startswith("[Escalation]") for s in told["maria"])  # on call at declaration
    assert any("escalated to you" in s and "Ben Carter" in s for s in told["maria"])
    [overdue] = [m.text for m in report.staff_notices["maria"] if "escalated" in m.subject]
    assert "Bram de Jong (bram), its owner, recorded no outcome by the deadline" in overdue
    assert f"followups done {missed.id} --as maria" in overdue  # bram's manager may
    assert any("done ann: reached" in line for line in report.followups)


async def test_the_demo_calls_no_real_channel(tmp_path: Path) -> None:
    """A configuration whose email channel points at a real relay: the demo still records
    every message and opens no connection to it."""
    with SmtpSink() as relay:
        config = tmp_path / "config.yaml"
        config.write_text(
            EMBEDDED.read_text(encoding="utf-8")
            .replace(
                "  email:\n    type: console\n    contact: email\n",
                "  email:\n    type: email\n    host: 127.0.0.1\n"
                f"    port: {relay.port}\n    security: none\n"
                '    from: "Example <service@example.org>"\n',
            )
            .replace("path: rules/examples/", f"path: {REPO}/rules/examples/"),
            encoding="utf-8",
        )
        settings = load_settings(config)
        assert settings.channels["email"].type == "email"
        report = await play(settings, start=START, workdir=tmp_path / "work")
        assert relay.messages == []
    assert report.received["C004"] and {m.channel for m in report.received["C004"]} == {"email"}


def test_the_readme_command_prints_it_all_and_leaves_no_store_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the README runs it: ``broadcaster demo`` in a folder with config.yaml and its
    rules. Its store (``./data/broadcaster.db``) is not touched: the demo's is temporary."""
    shutil.copy(EMBEDDED, tmp_path / "config.yaml")
    (tmp_path / "rules" / "examples").mkdir(parents=True)
    shutil.copy(REPO / "rules/examples/default.yaml", tmp_path / "rules/examples/default.yaml")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "round  7 resolution" in out and "(push, email, sms)" in out
    assert "C007 Greta Lind" in out and "+46701234567" in out
    assert "follow-up 2: call Ben Carter (C002), rule vip-critical-call, owner bram" in out
    assert "escalated maria" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "rules"]


def _without_rules(tmp_path: Path) -> Path:
    config = tmp_path / "config.yaml"
    text = EMBEDDED.read_text(encoding="utf-8")
    assert "  path: rules/examples/default.yaml\n" in text
    config.write_text(text.replace("  path: rules/examples/default.yaml\n", ""), "utf-8")
    return config


async def test_without_rules_the_demo_plays_the_severity_cadence_alone(tmp_path: Path) -> None:
    settings = load_settings(_without_rules(tmp_path))
    assert settings.rules.path is None
    report = await play(settings, start=START, workdir=tmp_path / "work")
    # No escalation policy: every round on delivery.channels (email), and for Greta, who
    # has no email, on the next of delivery.failover; no follow-up forced.
    assert set(report.received) == AFFECTED
    channels = {who: {m.channel for m in got} for who, got in report.received.items()}
    assert channels == {who: {"sms" if who == "C007" else "email"} for who in AFFECTED}
    assert report.followups == [] and report.staff_notices == {}


def test_without_rules_the_demo_says_no_follow_up_was_forced(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--config", str(_without_rules(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "none: no rule of this configuration forces one" in result.output


def test_a_bad_rules_file_stops_the_demo_with_its_place(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\npolicies: {}\nrules:\n  - {name: r, policy: nowhere}\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        EMBEDDED.read_text(encoding="utf-8").replace(
            "path: rules/examples/default.yaml", f"path: {rules}"
        ),
        encoding="utf-8",
    )
    result = CliRunner().invoke(app, ["demo", "--config", str(config)])
    assert result.exit_code == 2
    assert "the rules file cannot be used" in result.output
    assert f"{rules}:4" in result.output and "nowhere" in result.output
    assert "Traceback" not in result.output
