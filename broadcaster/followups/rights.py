"""Who may claim a follow-up and record its outcome: those the rules made responsible for
it, those it was escalated to, its owner's managers and admins.

A claim makes the claimer the task's owner, who may then record its outcome; so a claim by
just anybody would hand a task the rules gave to a named person or group to someone else,
and let them record an outcome only a manager or an admin may record in the owner's place.
The rule's owner reference is kept with the task (``Followup.owner_ref``, migration 0011);
older tasks have none, and only their owner, escalation targets, managers and admins claim.

Whoever an overdue task was escalated to is asked to see that it is done: they may record
its outcome, and take it over (claim it) even when its owner had claimed it. Who that is
comes from the chain (everyone each link reached names) and from the task's history
(``told``: the ``escalated`` events, which also name an ``account_manager`` link's person).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from datetime import datetime

from broadcaster.followups.directory import Directory, NoOwner
from broadcaster.store import Followup
from rules import StaffRef


def owner_name(owner: str) -> str:
    """An owner as a refusal names them: ``nobody`` for a task nobody could be found for."""
    return owner or "nobody"


def _owns(task: Followup, staff: str) -> bool:
    """Whether ``staff`` owns ``task``: nobody owns an unowned one (its owner is empty)."""
    return bool(staff) and staff == task.owner


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


def escalated_to(task: Followup, directory: Directory, told: Iterable[str] = ()) -> set[str]:
    """Everyone the task has escalated to so far: the links of its chain it has reached
    (everyone each names), or, when the rule gave no chain, as many of the owner's managers
    (as the follow-up sweep walks them: the escalation level never passes its limit); and
    ``told``, whom its history says it was escalated to."""
    chain = task.escalation or []
    level = task.escalation_level or 0
    people: set[str] = set(told)
    if chain:
        for text in chain[:level]:
            try:
                people |= _named(directory, StaffRef.parse(text))
            except ValueError:
                continue
        return people
    current: str | None = task.owner
    for _ in range(level):
        current = directory.manager_of(current) if current else None
        if current is not None:
            people.add(current)
    return people


def may_claim(
    task: Followup,
    staff: str,
    directory: Directory,
    *,
    admin: bool = False,
    told: Iterable[str] = (),
    now: datetime | None = None,
) -> bool:
    """Whether ``staff`` may claim ``task``. An open task: its owner, the people the rule's
    owner reference names, anyone it has escalated to, a manager of the owner (any level
    up) or a directory admin. A claimed one, once overdue (``now`` past its deadline), may
    be taken over by anyone it has escalated to, a manager of the owner or an admin. ``admin``
    is for callers the console or API already know to hold the admin role."""
    if task.state == "claimed":
        overdue = now is not None and now >= task.deadline_at
        return (
            overdue
            and not _owns(task, staff)
            and (
                admin
                or directory.may_waive(staff, task.owner)
                or staff in escalated_to(task, directory, told)
            )
        )
    if task.state != "open":
        return False
    return (
        admin
        or _owns(task, staff)
        or directory.may_waive(staff, task.owner)
        or staff in rule_people(task, directory)
        or staff in escalated_to(task, directory, told)
    )


def may_record(
    task: Followup,
    staff: str,
    directory: Directory | None,
    *,
    admin: bool = False,
    told: Iterable[str] = (),
) -> bool:
    """Whether ``staff`` may record ``task``'s outcome: its owner (who claimed it, if anyone
    did), anyone it has escalated to (asked to see that it is done), a manager of the owner
    or a directory admin (with ``directory``), or a caller known to hold the admin role."""
    told = set(told)
    return (
        admin
        or _owns(task, staff)
        or staff in told
        or (
            directory is not None
            and (
                directory.may_waive(staff, task.owner)
                or staff in escalated_to(task, directory, told)
            )
        )
    )


def _some(names: list[str], at_most: int = 5) -> str:
    shown = ", ".join(names[:at_most])
    return shown if len(names) <= at_most else f"{shown} and {len(names) - at_most} more"


def claim_refusal(
    task: Followup, staff: str, directory: Directory, *, told: Iterable[str] = ()
) -> str:
    """Why ``staff`` may not claim ``task``: who may, and who they are."""
    owner = owner_name(task.owner)
    escalated = sorted(escalated_to(task, directory, told) - {task.owner})
    if task.state == "claimed":
        them = f", those it has escalated to ({_some(escalated)})" if escalated else ""
        return (
            f"only a manager of {owner}{them} or an admin may take over follow-up {task.id} "
            f"from {owner}, who claimed it; you are {staff!r}"
        )
    who = [f"its owner ({owner})"]
    named = sorted(rule_people(task, directory) - {task.owner})
    if named:
        who.append(f"the people its rule named ({task.owner_ref}: {_some(named)})")
    others = [name for name in escalated if name not in named]
    if others:
        who.append(f"those it has escalated to ({_some(others)})")
    return (
        f"only {', '.join(who)}, a manager of {owner} or an admin may claim "
        f"follow-up {task.id}; you are {staff!r}"
    )


def record_refusal(
    task: Followup, staff: str, directory: Directory | None, *, told: Iterable[str] = ()
) -> str:
    """Why ``staff`` may not record ``task``'s outcome: who may, and who they are."""
    owner = owner_name(task.owner)
    escalated = set(told)
    if directory is not None:
        escalated = escalated_to(task, directory, told)
    others = sorted(escalated - {task.owner})
    also = f", those it has escalated to ({_some(others)})" if others else ""
    return (
        f"only a manager of {owner}{also} or an admin may record the outcome of follow-up "
        f"{task.id} in the place of its owner, {owner}; you are {staff!r}"
    )
