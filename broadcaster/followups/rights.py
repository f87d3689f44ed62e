"""Who may claim a follow-up: those the rules made responsible for it, its owner's managers
and admins.

A claim makes the claimer the task's owner, who may then record its outcome; so a claim by
just anybody would hand a task the rules gave to a named person or group to someone else,
and let them record an outcome only a manager or an admin may record in the owner's place.
The rule's owner reference is kept with the task (``Followup.owner_ref``, migration 0011);
older tasks have none, and only their owner, escalation targets, managers and admins claim.
"""

from __future__ import annotations

import contextlib

from broadcaster.followups.directory import Directory, NoOwner
from broadcaster.store import Followup
from rules import StaffRef


def _named(directory: Directory, ref: StaffRef) -> set[str]:
    """Everyone a staff reference makes responsible: a group's members and its on-call
    person, an ``on_call`` reference's on-call person, a named member of staff. (An account
    manager is per customer: the task's owner, whom the reference resolved to.)"""
    people = set(directory.members(ref))
    if ref.kind == "group":
        with contextlib.suppress(NoOwner):
            people.add(directory.resolve(ref, None))
    return people


def rule_people(task: Followup, directory: Directory) -> set[str]:
    """Whom the rule's owner reference names now; nobody for a task created before the
    reference was kept."""
    if task.owner_ref is None:
        return set()
    try:
        return _named(directory, StaffRef.parse(task.owner_ref))
    except ValueError:
        return set()


def escalated_to(task: Followup, directory: Directory) -> set[str]:
    """Everyone the task has escalated to so far: the links of its chain it has reached
    (everyone each names), or, when the rule gave no chain, as many of the owner's managers
    (as the follow-up sweep walks them: the escalation level never passes its limit)."""
    chain = task.escalation or []
    people: set[str] = set()
    if chain:
        for text in chain[: task.escalation_level]:
            try:
                people |= _named(directory, StaffRef.parse(text))
            except ValueError:
                continue
        return people
    current: str | None = task.owner
    for _ in range(task.escalation_level):
        current = directory.manager_of(current) if current else None
        if current is not None:
            people.add(current)
    return people


def may_claim(task: Followup, staff: str, directory: Directory, *, admin: bool = False) -> bool:
    """Whether ``staff`` may claim ``task``: its owner, the people the rule's owner reference
    names, anyone it has escalated to, a manager of the owner (any level up) or a directory
    admin; ``admin`` is for callers the console or API already know to hold the admin role."""
    return (
        admin
        or staff == task.owner
        or directory.may_waive(staff, task.owner)
        or staff in rule_people(task, directory)
        or staff in escalated_to(task, directory)
    )


def _some(names: list[str], at_most: int = 5) -> str:
    shown = ", ".join(names[:at_most])
    return shown if len(names) <= at_most else f"{shown} and {len(names) - at_most} more"


def claim_refusal(task: Followup, staff: str, directory: Directory) -> str:
    """Why ``staff`` may not claim ``task``: who may, and who they are."""
    who = [f"its owner ({task.owner})"]
    named = sorted(rule_people(task, directory) - {task.owner})
    if named:
        who.append(f"the people its rule named ({task.owner_ref}: {_some(named)})")
    escalated = sorted(escalated_to(task, directory) - {task.owner} - set(named))
    if escalated:
        who.append(f"those it has escalated to ({_some(escalated)})")
    return (
        f"only {', '.join(who)}, a manager of {task.owner} or an admin may claim "
        f"follow-up {task.id}; you are {staff!r}"
    )
