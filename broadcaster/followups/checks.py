"""Checks of a rules file against the staff directory that do not make it wrong, only
worth a warning (``rules check``, ``POST /api/v1/rules/check``)."""

from __future__ import annotations

from broadcaster.config.settings import StaffSettings
from broadcaster.followups.directory import Directory, NoOwner
from broadcaster.followups.service import NOBODY, owner_for
from rules import RuleSet


def owner_warnings(ruleset: RuleSet, staff: StaffSettings) -> list[str]:
    """Rules whose follow-up may have no owner of their own: the ``owner`` names nobody for
    some customers (``account_manager``, for a customer without one in the staff directory)
    and no ``escalation`` link names anyone for them either. Each warning is located at its
    rule and says whom the daemon then makes the owner with these staff settings (asked of
    :func:`~broadcaster.followups.service.owner_for` itself, for such a customer), or that
    the task is kept unowned."""
    directory = Directory(staff)
    warnings: list[str] = []
    for rule in ruleset.rules:
        req = rule.followup
        if req is None:
            continue
        try:
            directory.resolve(req.owner, None)
            continue
        except NoOwner as exc:
            whom_not = (
                "a customer without an account manager in staff.people"
                if req.owner.kind == "account_manager"
                else f"some customers ({exc})"
            )
        owner, level, _ = owner_for(directory, req, None)
        if level > 0:
            continue  # a link of its escalation owns it: the rule's own choice
        if owner == NOBODY:
            whom = (
                "kept unowned, logged at error, until an admin claims or waives it (there is "
                "neither staff.unassigned_owner nor an admin: true in staff.people)"
            )
        elif owner == staff.unassigned_owner:
            whom = f"owned by staff.unassigned_owner, {owner}"
        else:
            whom = f"owned by the first admin in staff.people, {owner}"
        chain = "no link of its escalation does" if req.escalation else "it has no escalation"
        warnings.append(
            f"{rule.where}: rule {rule.name!r}: followup.owner {req.owner} names nobody for "
            f"{whom_not} and {chain}: such a follow-up is {whom}"
        )
    return warnings
