"""Who may claim a follow-up: its owner, the people its rule named (a group's members, the
on-call person), anyone it has escalated to, a manager of the owner or an admin; not any
member of staff, since a claim makes the claimer the owner, who may then record the outcome.
From the service, the CLI and the API."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from broadcaster.clock import FakeClock
from broadcaster.config import load_settings
from broadcaster.config.settings import StaffSettings
from broadcaster.followups import service as followups
from broadcaster.followups.directory import Directory
from broadcaster.incidents import service
from broadcaster.store import Customer, Database, Followup
from rules import FollowupRequirement, StaffRef
from tests.api.support import api_client
from tests.integration.test_cli_rules_followups import invoke
from tests.integration.test_followup_done_rights import api_task_for_ann, cli_task_for_ann
from tests.integration.test_rules_followups import START, seed

STAFF = StaffSettings.model_validate(
    {
        "people": {
            "ann": {"name": "Ann", "manager": "maria"},
            "maria": {"name": "Maria", "manager": "olga"},
            "olga": {"name": "Olga"},
            "bram": {"name": "Bram"},
            "erik": {"name": "Erik"},
            "carla": {"name": "Carla"},
            "dirk": {"name": "Dirk"},
            "root": {"name": "Root", "admin": True},
        },
        "groups": {
            "care": {"members": ["bram", "erik"], "on_call": "erik"},
            "duty": {"members": ["dirk"], "on_call": "dirk"},
        },
    }
)
DIRECTORY = Directory(STAFF)


async def _task(
    database: Database, owner: str, escalation: tuple[str, ...] = ()
) -> tuple[FakeClock, Followup]:
    """One open follow-up for customer V1 (account manager ann), as the rules create it."""
    clock = FakeClock(START)
    await seed(database)
    incident = await service.declare(
        database, clock, service.Declaration("Down", "critical", "Down.", components=["rail"])
    )
    requirement = FollowupRequirement(
        kind="call",
        owner=StaffRef.parse(owner),
        deadline=timedelta(hours=2),
        rule="call-them",
        escalation=tuple(StaffRef.parse(ref) for ref in escalation),
    )
    async with database.session() as session, session.begin():
        customer = await session.get(Customer, "V1")
        assert customer is not None
        [notice] = await followups.create_for_customer(
            session, incident.id, customer, [requirement], START, DIRECTORY
        )
    async with database.session() as session:
        task = await session.get(Followup, notice.followup_id)
    assert task is not None
    return clock, task


async def _state(database: Database, followup_id: int) -> tuple[str, str]:
    async with database.session() as session:
        task = await session.get(Followup, followup_id)
    assert task is not None
    return task.state, task.owner


async def test_the_rules_owner_reference_is_kept_with_the_task(database: Database) -> None:
    _, by_group = await _task(database, "group:care")
    assert (by_group.owner, by_group.owner_ref) == ("erik", "group:care")


async def test_a_stranger_cannot_claim_nor_then_record_the_outcome(database: Database) -> None:
    clock, task = await _task(database, "account_manager")
    assert (task.owner, task.owner_ref) == ("ann", "account_manager")
    with pytest.raises(followups.FollowupError) as refused:
        await followups.claim(database, clock, task.id, "carla", DIRECTORY)
    assert str(refused.value) == (
        f"only its owner (ann), a manager of ann or an admin may claim follow-up {task.id}; "
        "you are 'carla'"
    )
    # The bypass: claiming first made carla the owner, who may record the outcome.
    with pytest.raises(followups.FollowupError, match="only a manager of ann or an admin"):
        await followups.done(
            database, clock, task.id, "carla", "unreachable", "n/a", directory=DIRECTORY
        )
    assert await _state(database, task.id) == ("open", "ann")


async def test_the_message_names_the_rules_people_and_the_escalation_targets(
    database: Database,
) -> None:
    clock, task = await _task(database, "group:care", escalation=("group:duty",))
    async with database.session() as session, session.begin():
        await session.execute(
            update(Followup).where(Followup.id == task.id).values(escalation_level=1)
        )
    with pytest.raises(followups.FollowupError) as refused:
        await followups.claim(database, clock, task.id, "carla", DIRECTORY)
    assert str(refused.value) == (
        "only its owner (erik), the people its rule named (group:care: bram), those it has "
        f"escalated to (dirk), a manager of erik or an admin may claim follow-up {task.id}; "
        "you are 'carla'"
    )


async def test_the_owner_claims_their_own_task(database: Database) -> None:
    clock, task = await _task(database, "account_manager")
    claimed = await followups.claim(database, clock, task.id, "ann", DIRECTORY)
    assert (claimed.state, claimed.owner) == ("claimed", "ann")


@pytest.mark.parametrize(("owner", "staff"), [("group:care", "bram"), ("on_call:care", "erik")])
async def test_a_member_of_the_rules_group_claims(
    database: Database, owner: str, staff: str
) -> None:
    clock, task = await _task(database, owner)
    claimed = await followups.claim(database, clock, task.id, staff, DIRECTORY)
    assert (claimed.state, claimed.owner) == ("claimed", staff)
    done = await followups.done(database, clock, task.id, staff, "reached", "Called.")
    assert (done.state, done.closed_by) == ("done", staff)


async def test_on_call_names_the_on_call_person_not_the_whole_group(database: Database) -> None:
    clock, task = await _task(database, "on_call:care")
    with pytest.raises(followups.FollowupError, match="you are 'bram'"):
        await followups.claim(database, clock, task.id, "bram", DIRECTORY)


@pytest.mark.parametrize("manager", ["maria", "olga"])
async def test_a_manager_of_the_owner_at_any_level_claims(database: Database, manager: str) -> None:
    clock, task = await _task(database, "account_manager")
    claimed = await followups.claim(database, clock, task.id, manager, DIRECTORY)
    assert (claimed.state, claimed.owner) == ("claimed", manager)


@pytest.mark.parametrize(("staff", "admin"), [("root", False), ("carla", True)])
async def test_an_admin_claims(database: Database, staff: str, admin: bool) -> None:
    """A directory admin, or a caller the console or API know to hold the admin role (an
    admin claiming for someone else)."""
    clock, task = await _task(database, "account_manager")
    claimed = await followups.claim(database, clock, task.id, staff, DIRECTORY, admin=admin)
    assert (claimed.state, claimed.owner) == ("claimed", staff)


async def test_an_escalation_target_claims_once_the_task_has_escalated_to_them(
    database: Database,
) -> None:
    clock, task = await _task(database, "account_manager", escalation=("group:duty",))
    with pytest.raises(followups.FollowupError, match="you are 'dirk'"):
        await followups.claim(database, clock, task.id, "dirk", DIRECTORY)
    clock.set(START + timedelta(hours=2, minutes=1))
    [notice] = await followups.due_notices(database, clock, DIRECTORY)
    assert (notice.kind, notice.staff) == ("escalation", "dirk")
    claimed = await followups.claim(database, clock, task.id, "dirk", DIRECTORY)
    assert (claimed.state, claimed.owner) == ("claimed", "dirk")


async def test_a_task_from_before_the_owner_reference_was_kept(database: Database) -> None:
    """Migration 0011 leaves owner_ref empty on older rows: who the rule named is not known,
    so only the owner, the escalation targets, a manager of the owner or an admin claim."""
    clock, task = await _task(database, "group:care", escalation=("group:duty",))
    async with database.session() as session, session.begin():
        await session.execute(
            update(Followup)
            .where(Followup.id == task.id)
            .values(owner_ref=None, escalation_level=1)
        )
    with pytest.raises(followups.FollowupError) as refused:
        await followups.claim(database, clock, task.id, "bram", DIRECTORY)
    assert "the people its rule named" not in str(refused.value)
    assert "those it has escalated to (dirk)" in str(refused.value)
    assert await _state(database, task.id) == ("open", "erik")
    claimed = await followups.claim(database, clock, task.id, "dirk", DIRECTORY)
    assert (claimed.state, claimed.owner) == ("claimed", "dirk")


async def test_the_api_refuses_a_claim_with_403(database: Database) -> None:
    async with api_client(database) as api:
        task = await api_task_for_ann(api, database)
        path = f"/api/v1/followups/{task}/claim"
        refused = await api.call("POST", path, "operator")
        assert refused.status_code == 403, refused.text
        message = refused.json()["error"]["message"]
        assert message.startswith("only its owner (ann), a manager of ann or an admin")
        assert "you are 'operator-bot'" in message
        claimed = await api.call("POST", path, "admin", json={"staff": "ann"})
        assert claimed.status_code == 200 and claimed.json()["owner"] == "ann"
        audit = (await api.call("GET", "/api/v1/audit")).json()["items"]
        claims = [(a["actor"], a["outcome"]) for a in audit if a["action"] == "followup.claim"]
        assert claims == [("token:admin-bot", "ok"), ("token:operator-bot", "refused")]


async def test_the_api_shows_whom_the_rule_named(database: Database) -> None:
    """The follow-up's body carries the rule's owner reference (those it names may claim);
    none on a task from before it was kept."""
    async with api_client(database) as api:
        task = await api_task_for_ann(api, database)
        listed = await api.call("GET", "/api/v1/followups")
        assert [t["owner_ref"] for t in listed.json()["items"]] == [None]
        async with database.session() as session, session.begin():
            await session.execute(
                update(Followup).where(Followup.id == task).values(owner_ref="group:care")
            )
        listed = await api.call("GET", "/api/v1/followups")
        assert [t["owner_ref"] for t in listed.json()["items"]] == ["group:care"]


def test_the_cli_refuses_a_claim_by_someone_without_the_right(tmp_path: Path) -> None:
    config, task = cli_task_for_ann(
        tmp_path,
        "    ann: {name: Ann, email: ann@example.org, manager: maria}\n"
        "    maria: {name: Maria, email: maria@example.org}\n"
        "    carla: {name: Carla, email: carla@example.org}\n",
    )
    code, out = invoke("followups", "claim", task, "--as", "carla", "--config", str(config))
    assert code == 1 and "only its owner (ann), a manager of ann or an admin" in out, out
    assert "you are 'carla'" in out
    code, out = invoke("followups", "claim", task, "--as", "maria", "--config", str(config))
    assert code == 0 and f"follow-up {task} claimed by maria" in out, out

    async def owner() -> str:
        db = Database(load_settings(config).database.url)
        try:
            async with db.session() as session:
                return (await session.execute(select(Followup.owner))).scalar_one()
        finally:
            await db.dispose()

    assert asyncio.run(owner()) == "maria"
