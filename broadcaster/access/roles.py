"""The three roles, each including the one below it: viewer < operator < admin."""

from __future__ import annotations

from typing import Literal

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
_RANK = {role: rank for rank, role in enumerate(ROLES)}

WHAT_ROLES_MAY = {
    "viewer": "read incidents, deliveries counts, follow-ups, rules and the public pages",
    "operator": "declare, update, resolve and close incidents; work the follow-up queue; "
    "read customers and deliveries",
    "admin": "everything: customers, rules reload, tokens, accounts, the audit log",
}


def check_role(value: str) -> Role:
    for role in ROLES:
        if value == role:
            return role
    raise ValueError(f"role: {value!r} is not one of {', '.join(ROLES)}")


def allows(have: str, need: Role) -> bool:
    """Whether a holder of ``have`` may do what needs ``need``."""
    return have in _RANK and _RANK[have] >= _RANK[need]
