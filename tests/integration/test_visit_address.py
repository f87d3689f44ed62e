"""A visit task says where to go: the customer's postal address in the staff notice (email
and SMS), on the console's queue and in ``followups show``; a customer without one is said
to have no postal address on file. Its times are in the recipient's zone."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, update
from typer.testing import CliRunner

from broadcaster.cli.main import app as cli
from broadcaster.clock import FakeClock, RealClock
from broadcaster.config import Settings, load_settings
from broadcaster.dispatch.channels import build_channels
from broadcaster.engine import Engine
from broadcaster.followups import service as followups
from broadcaster.incidents import service
from broadcaster.store import ContactPoint, Customer, Database, Followup, Subscription
from channels.memory import MemoryChannel
from channels.sms_segments import segments
from rules import EXAMPLE_RULES
from tests.integration.test_console import START as CONSOLE_START
from tests.integration.test_console import Console, app, signed_in
from tests.integration.test_rules_followups import START, channels, run_until, seed, settings

__all__ = ["app"]  # the console fixture, used by name

ADDRESS = "Keizersgracht 123\n1015 CJ Amsterdam"
CALL = "    followup:\n      kind: call\n      owner: account_manager\n      deadline: 2h\n"
VISIT = CALL.replace("kind: call", "kind: visit")


def visit_rules(tmp_path: Path) -> Path:
    """The example rules, with the VIPs' call on a critical incident made a visit."""
    text = EXAMPLE_RULES.read_text(encoding="utf-8")
    assert text.count(CALL) == 1
    path = tmp_path / "visit-rules.yaml"
    path.write_text(text.replace(CALL, VISIT), encoding="utf-8")
    return path


async def _vip_without_address(database: Database) -> None:
    async with database.session() as session, session.begin():
        await session.execute(
            insert(Customer).values(
                id="V2",
                name="Customer V2",
                language="en",
                timezone="Asia/Tokyo",
                tier="vip",
                account_manager="ann",
                created_at=START,
                updated_at=START,
            )
        )
        await session.execute(
            insert(ContactPoint).values(
                customer_id="V2",
                kind="email",
                address="v2@example.org",
                opted_out=False,
                disabled=False,
                updated_at=START,
            )
        )
        await session.execute(
            insert(Subscription).values(customer_id="V2", kind="component", value="rail")
        )
        await session.execute(
            update(Customer).where(Customer.id == "V1").values(postal_address=ADDRESS)
        )


@pytest.mark.parametrize("notify", ["email", "sms"])
async def test_a_visit_notice_says_where_to_go_or_that_no_address_is_on_file(
    database: Database, tmp_path: Path, notify: str
) -> None:
    config = settings(visit_rules(tmp_path))
    config.staff.notify_channel = notify
    config.staff.timezone = "Europe/Amsterdam"  # the directory's zone: ann has none of her own
    for person in config.staff.people.values():
        person.phone = "+31612345678"
    await seed(database)
    await _vip_without_address(database)
    engine, sinks, clock = await _engine(database, config)
    try:
        await service.declare(
            database,
            clock,
            service.Declaration("Pay down", "critical", "Down.", components=["rail"]),
        )
        await run_until(engine, clock, START + timedelta(minutes=1))
    finally:
        await engine.aclose()
    tasks = {t.customer_id: t for t in await followups.list_followups(database, state="open")}
    assert {tasks["V1"].kind, tasks["V2"].kind} == {"visit"}
    told = {
        task_id: message
        for message in (m.message for m in sinks[notify].sent)
        for task_id in [_task_of(message.subject or message.text)]
        if task_id is not None
    }
    with_address, without = told[tasks["V1"].id], told[tasks["V2"].id]
    if notify == "email":
        # The deadline (12:00 UTC) in the recipient's zone, the customer's beside it.
        assert with_address.subject == f"Follow-up {tasks['V1'].id}: visit Customer V1 by 13:00 CET"
        assert "Where to go: Keizersgracht 123, 1015 CJ Amsterdam\n" in with_address.text
        assert "Keizersgracht 123<br>1015 CJ Amsterdam" in (with_address.html or "")
        assert "Where to go: no postal address is on file\n" in without.text
        assert "their time zone is Asia/Tokyo, where the deadline is 21:00 JST" in without.text
        # The duty manager's step notice: the incident's start in her zone (the directory's).
        [step] = [m.message for m in sinks[notify].sent if m.message.subject.startswith("[Esc")]
        assert "(since 11:00 CET)" in step.text, step.text
    else:
        # Staff and customer share a zone: the deadline once, not again "for them".
        assert "by 13:00 CET (they read English)" in with_address.text
        assert "Address: Keizersgracht 123, 1015 CJ Amsterdam." in with_address.text
        assert "No postal address on file." in without.text
        for message in (with_address, without):
            assert segments(message.text).segments <= 3, message.text
            assert "Record it: broadcaster followups done" in message.text  # nothing was cut


def _task_of(text: str) -> int | None:
    found = re.search(r"[Ff]ollow-up (\d+)", text)
    return int(found.group(1)) if found else None


async def _engine(
    database: Database, config: Settings
) -> tuple[Engine, dict[str, MemoryChannel], FakeClock]:
    clock = FakeClock(START)
    sinks = channels()
    engine = await Engine.create(config, database, clock, dict(sinks))
    return engine, sinks, clock


async def test_a_call_notice_does_not_give_the_address(database: Database) -> None:
    """A call needs none: the example rules' VIP call says nothing of where they live."""
    config = settings()
    await seed(database)
    async with database.session() as session, session.begin():
        await session.execute(
            update(Customer).where(Customer.id == "V1").values(postal_address=ADDRESS)
        )
    engine, sinks, clock = await _engine(database, config)
    try:
        await service.declare(
            database,
            clock,
            service.Declaration("Pay down", "critical", "Down.", components=["rail"]),
        )
        await run_until(engine, clock, START + timedelta(minutes=1))
    finally:
        await engine.aclose()
    [task] = await followups.list_followups(database, state="open")
    [notice] = [m.message for m in sinks["email"].sent if m.message.subject.startswith("Follow")]
    assert task.kind == "call" and notice.subject.endswith("by 12:00 UTC")  # no zone: UTC
    assert "Keizersgracht" not in notice.text and "postal address" not in notice.text


# --- the console's queue ---------------------------------------------------------------


async def test_the_queue_shows_a_visit_s_address_to_operators_only(app: Console) -> None:
    csrf = await signed_in(app.http, "ann")
    response = await app.http.post(
        "/console/incidents",
        data={
            "title": "Trains stopped",
            "severity": "minor",
            "status": "investigating",
            "message": "No trains.",
            "components": "rail",
            "regions": "",
            "cause_kind": "unknown",
            "csrf_token": csrf,
        },
    )
    assert response.status_code == 303, response.text
    incident = int(re.findall(r"\d+", response.headers["location"])[0])
    async with app.state.database.session() as session, session.begin():
        await session.execute(
            update(Customer)
            .where(Customer.id == "V1")
            .values(postal_address="Keizersgracht 123\n1015 CJ <Amsterdam>")
        )
        await session.execute(
            insert(Followup),
            [
                {
                    "incident_id": incident,
                    "customer_id": customer,
                    "rule": "r",
                    "kind": kind,
                    "owner": "ann",
                    "state": "open",
                    "deadline_at": CONSOLE_START + timedelta(hours=1, minutes=n),
                    "created_at": CONSOLE_START,
                }
                for n, (customer, kind) in enumerate(
                    [("V1", "visit"), ("V2", "visit"), ("S1", "call")]
                )
            ],
        )
    page = (await app.http.get("/console/followups")).text
    rows = {
        customer: row
        for row in re.findall(r"<tr data-followup=.*?</tr>", page, re.S)
        for customer in ("V1", "V2", "S1")
        if f"<td>{customer}" in row
    }
    assert "Keizersgracht 123<br>1015 CJ &lt;Amsterdam&gt;" in rows["V1"]
    assert "No postal address is on file" in rows["V2"]
    assert "postal" not in rows["S1"].replace('class="postal"', "")  # a call: none
    async with app.another_browser() as viewer:
        await signed_in(viewer, "vera")
        shown = (await viewer.get("/console/followups")).text
        assert "Keizersgracht" not in shown and "postal address" not in shown


# --- followups show ----------------------------------------------------------------------

runner = CliRunner()


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "config.yaml"
    out = tmp_path / "out.jsonl"
    config.write_text(
        f"""
database: {{url: "sqlite+aiosqlite:///{tmp_path / "s.db"}"}}
delivery: {{channels: [email]}}
channels:
  email: {{type: console, contact: email, path: "{out}"}}
  sms: {{type: console, contact: sms, path: "{out}"}}
  push: {{type: console, contact: fcm, path: "{out}"}}
staff:
  notify_channel: email
  people:
    ann: {{name: Ann, email: ann@example.org, manager: maria, timezone: America/New_York}}
    maria: {{name: Maria, email: maria@example.org}}
  groups:
    account-managers: {{members: [ann]}}
    care: {{members: [ann]}}
    duty-managers: {{members: [maria], on_call: maria}}
rules: {{path: "{visit_rules(tmp_path)}"}}
""",
        encoding="utf-8",
    )
    return config


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(cli, list(args))
    return result.exit_code, result.output


def test_followups_show_gives_a_visit_s_address_from_the_import(tmp_path: Path) -> None:
    config = _config(tmp_path)
    people = tmp_path / "c.csv"
    people.write_text(
        "id,name,email,components,tier,account_manager,timezone,postal_address\n"
        'V1,Vera,vera@example.org,rail,vip,ann,Europe/Amsterdam,"Keizersgracht 123\n'
        '1015 CJ Amsterdam"\n'
        "V2,Wim,wim@example.org,rail,vip,ann,UTC,\n",
        encoding="utf-8",
    )
    assert invoke("customers", "import", str(people), "--config", str(config))[0] == 0
    code, out = invoke(
        "incident", "declare", "--title", "Down", "--severity", "critical",
        "--component", "rail", "--message", "Down.", "--config", str(config),
    )  # fmt: skip
    assert code == 0, out

    async def one_round() -> None:
        settings = load_settings(config)
        db = Database(settings.database.url)
        engine = await Engine.create(settings, db, RealClock(), build_channels(settings))
        try:
            await engine.process_due_rounds()
        finally:
            await engine.aclose()
            await db.dispose()

    asyncio.run(one_round())
    code, out = invoke("followups", "list", "--config", str(config))
    assert code == 0, out
    tasks = {line.split()[3]: line.split()[0] for line in out.splitlines()[1:]}
    code, out = invoke("followups", "show", tasks["V1"], "--as", "ann", "--config", str(config))
    assert code == 0, out
    assert re.search(r"^address +Keizersgracht 123\n +1015 CJ Amsterdam$", out, re.M), out
    assert re.search(r"^deadline +.* E[SD]T \(.* CES?T for the customer\)$", out, re.M), out
    assert re.search(r"^follow-up +\d+: visit, open$", out, re.M), out
    code, out = invoke("followups", "show", tasks["V2"], "--config", str(config))
    assert code == 0, out
    assert re.search(r"^address +no postal address is on file$", out, re.M), out
    assert re.search(r"^deadline +.*UTC \(", out, re.M), out  # no --as, no staff.timezone
    code, out = invoke("followups", "show", "999", "--config", str(config))
    assert code == 1 and "no follow-up with id 999" in out
    code, out = invoke("followups", "show", tasks["V1"], "--as", "zed", "--config", str(config))
    assert code == 2 and "unknown staff id 'zed'" in out
