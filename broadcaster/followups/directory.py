"""The staff directory: who a rule's owner reference means for one customer."""

from __future__ import annotations

from broadcaster.config.settings import StaffMember, StaffSettings
from rules import StaffRef


class NoOwner(LookupError):
    """The reference names nobody (no account manager, an empty group)."""


class OnlyThem(NoOwner):
    """The reference names only the person to be passed over (``besides``: the task's own
    owner, whom an escalation must not reach as if someone else)."""


def _other(staff_id: str, besides: str | None) -> str:
    if staff_id == besides:
        raise OnlyThem(f"{staff_id} is the one passed over")
    return staff_id


class Directory:
    def __init__(self, staff: StaffSettings) -> None:
        self.staff = staff

    def person(self, staff_id: str) -> StaffMember | None:
        return self.staff.people.get(staff_id)

    def resolve(
        self, ref: StaffRef, account_manager: str | None, *, besides: str | None = None
    ) -> str:
        """One staff id: the account manager, a group's on-call person (or first member).

        ``besides``: someone other than this person (a task's owner, to whom its escalation
        must not come back): a group's on-call person unless that is them, else its first
        other member; a reference that names only them names nobody (:class:`OnlyThem`)."""
        if ref.kind == "account_manager":
            if account_manager and account_manager in self.staff.people:
                return _other(account_manager, besides)
            raise NoOwner("the customer has no account manager in the staff directory")
        if ref.kind == "staff" and ref.name in self.staff.people:
            return _other(ref.name, besides)
        if ref.kind in ("group", "on_call") and ref.name in self.staff.groups:
            group = self.staff.groups[ref.name]
            candidates = ([group.on_call] if group.on_call else []) + list(group.members)
            if not candidates:
                raise NoOwner(f"group {ref.name} has no members")
            for candidate in candidates:
                if candidate != besides:
                    return candidate
            raise OnlyThem(f"group {ref.name} has nobody but {besides}")
        raise NoOwner(f"{ref} names nobody in the staff directory")

    def admins(self) -> list[str]:
        """The directory's admins (``admin: true``), in the configuration's order."""
        return [name for name, person in self.staff.people.items() if person.admin]

    def members(self, ref: StaffRef) -> list[str]:
        """Everyone a notification reference means: a group's members, its on-call person,
        or one named person (an account manager is per customer: nobody here)."""
        if ref.kind == "staff" and ref.name in self.staff.people:
            return [ref.name]
        group = self.staff.groups.get(ref.name or "")
        if group is None:
            return []
        if ref.kind == "on_call":
            return [group.on_call] if group.on_call else list(group.members[:1])
        # The on-call person is of the group, listed among its members or not.
        extra = [group.on_call] if group.on_call and group.on_call not in group.members else []
        return [*group.members, *extra]

    def manager_of(self, staff_id: str) -> str | None:
        person = self.staff.people.get(staff_id)
        return person.manager if person is not None else None

    def may_waive(self, actor: str, owner: str) -> bool:
        """A manager of the owner (any level up) or an admin may waive a follow-up."""
        person = self.staff.people.get(actor)
        if person is None:
            return False
        if person.admin:
            return True
        seen: set[str] = set()
        current: str | None = owner
        while current is not None and current not in seen:
            seen.add(current)
            current = self.manager_of(current)
            if current == actor:
                return True
        return False
