"""Whom a forced follow-up goes to: its owner when the rule names nobody for the customer,
and each escalation, which never comes back to the owner (pure: the staff directory and a
task as the store keeps it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from broadcaster.config.settings import Settings, StaffSettings, cross_check
from broadcaster.followups.directory import Directory, NoOwner, OnlyThem
from broadcaster.followups.service import NOBODY, _escalation_target, owner_for
from broadcaster.store import Followup
from rules import FollowupRequirement, StaffRef

PEOPLE: dict[str, Any] = {
    "ann": {"name": "Ann", "manager": "maria"},
    "bram": {"name": "Bram", "manager": "maria"},
    "carla": {"name": "Carla"},
    "maria": {"name": "Maria"},
}
GROUPS: dict[str, Any] = {
    "account-managers": {"members": ["ann", "bram"]},
    "duty": {"members": ["maria"], "on_call": "maria"},
    "ann-only": {"members": ["ann"], "on_call": "ann"},
}


def directory(people: dict[str, Any] = PEOPLE, **staff: Any) -> Directory:
    return Directory(StaffSettings.model_validate({"people": people, "groups": GROUPS, **staff}))


def task(owner: str, chain: list[str] | None, level: int = 0) -> Followup:
    return Followup(
        id=1,
        owner=owner,
        state="open",
        deadline_at=datetime(2026, 1, 6, 12, 0, tzinfo=UTC),
        escalation=chain,
        escalation_level=level,
    )


def test_a_group_link_names_a_member_other_than_the_owner() -> None:
    """The shipped rule business-long-incident: [group:account-managers, group:duty-managers]
    for a customer whose account manager, ann, is the group's first member."""
    chain = ["group:account-managers", "group:duty"]
    assert _escalation_target(task("ann", chain), directory(), "ann") == ("bram", 1, [])
    assert _escalation_target(task("bram", chain), directory(), "bram") == ("ann", 1, [])
    assert _escalation_target(task("ann", chain, 1), directory(), "ann") == ("maria", 2, [])


def test_links_that_name_only_the_owner_are_passed_over_and_said() -> None:
    chain = ["staff:ann", "account_manager", "group:ann-only", "on_call:duty"]
    target = _escalation_target(task("ann", chain), directory(), "ann")
    assert target == (
        "maria",
        4,
        [
            "staff:ann (only ann, the owner)",
            "account_manager (only ann, the owner)",
            "group:ann-only (only ann, the owner)",
        ],
    )


def test_a_chain_of_only_the_owner_ends_with_nobody_told() -> None:
    assert _escalation_target(task("maria", ["group:duty"]), directory(), None) == (
        None,
        1,
        ["group:duty (only maria, the owner)"],
    )


def test_a_link_that_names_nobody_is_still_said_so() -> None:
    chain = ["account_manager", "group:duty"]
    assert _escalation_target(task("carla", chain), directory(), None) == (
        "maria",
        2,
        ["account_manager (nobody)"],
    )


def test_without_a_chain_the_owners_managers() -> None:
    assert _escalation_target(task("ann", None), directory(), None) == ("maria", 1, [])
    assert _escalation_target(task("ann", None, 1), directory(), None) == (None, 2, [])


def test_the_directory_resolves_someone_besides_a_person() -> None:
    staff = directory()
    group = StaffRef.parse("group:account-managers")
    assert staff.resolve(group, None) == "ann"  # as before: the first member
    assert staff.resolve(group, None, besides="ann") == "bram"
    with pytest.raises(OnlyThem):
        staff.resolve(StaffRef.parse("staff:ann"), None, besides="ann")
    with pytest.raises(NoOwner):
        staff.resolve(StaffRef.parse("account_manager"), None, besides="ann")


def requirement(*escalation: str) -> FollowupRequirement:
    return FollowupRequirement(
        kind="call",
        owner=StaffRef.parse("account_manager"),
        deadline=timedelta(hours=2),
        rule="vip-call",
        escalation=tuple(StaffRef.parse(ref) for ref in escalation),
    )


def test_the_owner_is_the_account_manager_when_there_is_one() -> None:
    assert owner_for(directory(), requirement("group:duty"), "ann") == ("ann", 0, "")


def test_without_one_the_escalation_link_that_owns_it_is_not_escalated_to_again() -> None:
    """The shipped vip-critical-call for a VIP without an account manager: the duty manager
    owns it, and the escalation starts after that link (it ended with her told twice)."""
    owner, level, how = owner_for(directory(), requirement("account_manager", "group:duty"), None)
    assert (owner, level) == ("maria", 2)
    assert how.startswith("account_manager names nobody (the customer has no account manager")
    assert how.endswith("; owned by group:duty")


def test_then_the_unassigned_owner_then_an_admin_then_nobody() -> None:
    admin = {**PEOPLE, "root": {"name": "Root", "admin": True}}
    unassigned = owner_for(directory(unassigned_owner="carla"), requirement(), None)
    assert unassigned[:2] == ("carla", 0) and "staff.unassigned_owner, carla" in unassigned[2]
    both = owner_for(directory(admin, unassigned_owner="carla"), requirement(), None)
    assert both[0] == "carla"  # the configured one before any admin
    assert owner_for(directory(admin), requirement(), None)[:2] == ("root", 0)
    owner, level, how = owner_for(directory(), requirement(), None)
    assert (owner, level) == (NOBODY, 0) and how.endswith("unowned")


def test_the_unassigned_owner_must_be_a_member_of_staff() -> None:
    settings = Settings.model_validate(
        {"staff": {"people": PEOPLE, "unassigned_owner": "nobody-here"}}
    )
    assert (
        ("staff", "unassigned_owner"),
        "unknown staff 'nobody-here' (see staff.people)",
    ) in cross_check(settings)
    fine = Settings.model_validate({"staff": {"people": PEOPLE, "unassigned_owner": "carla"}})
    assert not [path for path, _ in cross_check(fine) if path[:2] == ("staff", "unassigned_owner")]
