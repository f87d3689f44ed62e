"""Who may record a follow-up's outcome: its owner (who claimed it), a manager of the owner,
or an admin, as for a waiver; not any member of staff, from the service, the CLI or the
API."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from broadcaster.clock import FakeClock
from broadcaster.config import load_settings
from broadcaster.engine import Engine
from broadcaster.followups import service as followups
from broadcaster.incidents import service
from broadcaster.store import Database, Followup
from tests.api.support import START as API_START
from tests.api.support import api_client
from tests.integration.test_cli_rules_followups import invoke
from tests.integration.test_rules_followups import START, channels, run_until, seed, settings


async def _vip_call(database: Database) -> tuple[Engine, FakeClock, Followup]:
    clock = FakeClock(START)
    await seed(database)
    engine = await Engine.create(settings(), database, clock, channels())
    await service.declare(
        database, clock, service.Declaration("Down", "critical", "Down.", components=["rail"])
    )
    await run_until(engine, clock, START)
    [task] = await followups.list_followups(database, state="open")
    assert (task.customer_id, task.owner) == ("V1", "ann")
    return engine, clock, task


async def test_another_member_of_staff_cannot_record_the_owners_outcome(
    database: Database,
) -> None:
    engine, clock, task = await _vip_call(database)
    for directory in (None, engine.directory):  # carla is nobody's manager, nor an admin
        with pytest.raises(followups.FollowupError) as refused:
            await followups.done(
                database, clock, task.id, "carla", "unreachable", "n/a", directory=directory
            )
        assert str(refused.value) == (
            f"only a manager of ann or an admin may record the outcome of follow-up {task.id} "
            "in the place of its owner, ann; you are 'carla'"
        )
    [still] = await followups.list_followups(database, state="open")
    assert still.id == task.id


@pytest.mark.parametrize(
    ("staff", "admin", "with_directory"),
    [("ann", False, False), ("maria", False, True), ("root", True, False)],
)
async def test_the_owner_a_manager_or_an_admin_records_the_outcome(
    database: Database, staff: str, admin: bool, with_directory: bool
) -> None:
    engine, clock, task = await _vip_call(database)
    directory = engine.directory if with_directory else None
    done = await followups.done(
        database, clock, task.id, staff, "reached", "Called.", directory=directory, admin=admin
    )
    assert (done.state, done.closed_by) == ("done", staff)


async def test_whoever_claimed_it_records_the_outcome(database: Database) -> None:
    engine, clock, task = await _vip_call(database)
    # An admin gives it to carla, who is neither ann's manager nor an admin.
    await followups.claim(database, clock, task.id, "carla", engine.directory, admin=True)
    done = await followups.done(database, clock, task.id, "carla", "reached", "Called.")
    assert (done.state, done.closed_by) == ("done", "carla")


async def insert_task(
    database: Database, incident_id: int, customer_id: str, owner: str, at: datetime
) -> int:
    """An open call for ``owner`` with no rule owner reference (as migration 0011 leaves a
    task created before it)."""
    async with database.session() as session, session.begin():
        result = await session.execute(
            insert(Followup)
            .values(
                incident_id=incident_id,
                customer_id=customer_id,
                rule="vip-critical-call",
                kind="call",
                owner=owner,
                state="open",
                deadline_at=at + timedelta(hours=2),
                escalation_level=0,
                created_at=at,
            )
            .returning(Followup.id)
        )
        return int(result.scalar_one())


def cli_task_for_ann(tmp_path: Path, people: str) -> tuple[Path, str]:
    """A CLI configuration with the staff ``people`` (YAML lines), one incident for customer
    V1, and an open call of ann's: the configuration and the task's id."""
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
database: {{url: "sqlite+aiosqlite:///{tmp_path / "s.db"}"}}
delivery: {{channels: [email]}}
channels:
  email: {{type: console, contact: email, path: "{tmp_path / "out.jsonl"}"}}
staff:
  people:
{people}""",
        encoding="utf-8",
    )
    customers = tmp_path / "c.csv"
    customers.write_text("id,name,email,components\nV1,Vera,vera@example.org,rail\n", "utf-8")
    assert invoke("customers", "import", str(customers), "--config", str(config))[0] == 0
    code, out = invoke(
        "incident", "declare", "--title", "Down", "--severity", "critical", "--component",
        "rail", "--message", "Down.", "--config", str(config),
    )  # fmt: skip
    assert code == 0, out

    async def task() -> int:
        db = Database(load_settings(config).database.url)
        try:
            return await insert_task(db, 1, "V1", "ann", START)
        finally:
            await db.dispose()

    return config, str(asyncio.run(task()))


def test_the_cli_refuses_an_outcome_recorded_for_someone_elses_task(tmp_path: Path) -> None:
    config, task = cli_task_for_ann(
        tmp_path,
        "    ann: {name: Ann, email: ann@example.org}\n"
        "    carla: {name: Carla, email: carla@example.org}\n",
    )
    done = ("followups", "done", task, "--outcome", "unreachable", "--note", "n/a")
    code, out = invoke(*done, "--as", "carla", "--config", str(config))
    assert code == 1 and "only a manager of ann or an admin" in out and "'carla'" in out
    code, out = invoke(*done, "--as", "ann", "--config", str(config))
    assert code == 0, out


async def api_task_for_ann(api: Any, database: Database) -> int:
    """Through the API, customer c1 and an incident; an open call of ann's for it."""
    customer = {"id": "c1", "name": "C", "email": "c@example.org", "components": ["north"]}
    assert (await api.call("POST", "/api/v1/customers", json=customer)).status_code == 201
    made = await api.call(
        "POST",
        "/api/v1/incidents",
        json={"title": "Out", "severity": "critical", "message": "Out.", "components": ["n"]},
    )
    return await insert_task(database, made.json()["id"], "c1", "ann", API_START)


async def test_the_api_refuses_an_outcome_recorded_for_someone_elses_task(
    database: Database,
) -> None:
    async with api_client(database) as api:
        task = await api_task_for_ann(api, database)
        body = {"outcome": "unreachable", "note": "n/a"}
        path = f"/api/v1/followups/{task}/done"
        refused = await api.call("POST", path, "operator", json=body)
        assert refused.status_code == 403, refused.text
        assert "only a manager of ann or an admin" in refused.json()["error"]["message"]
        recorded = await api.call("POST", path, "admin", json={**body, "staff": "ann"})
        assert recorded.status_code == 200 and recorded.json()["state"] == "done"
    async with database.session() as session:
        row = (await session.execute(select(Followup))).scalar_one()
    assert (row.state, row.closed_by) == ("done", "ann")
