"""The values a rules file defines: policies and their steps, rules and their actions.

All frozen: a loaded ``RuleSet`` is shared by every evaluation, and what a ``Decision`` hands
out (steps, follow-up requirements) must not be editable by the caller.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass, field
from datetime import time, timedelta
from decimal import Decimal
from typing import Final, Literal

from rules.matchers import Condition

URGENCIES: Final = ("low", "normal", "high")
FOLLOWUP_KINDS: Final = ("call", "visit", "personal_email")
COMPENSATION_KINDS: Final = ("credit", "voucher", "refund")
RESOLUTION_FIELDS: Final = ("cause", "remedy", "prevention")

StaffKind = Literal["staff", "group", "account_manager", "on_call"]


@dataclass(frozen=True)
class StaffRef:
    """Who among staff: a member (``staff:ann``), a group (``group:care``), the customer's
    ``account_manager``, or a group's ``on_call`` person (``on_call:duty-managers``).
    The daemon resolves it to people; ``str()`` is the spelling the rules file accepts.
    (``parse`` still reads a bare ``on_call``, which plans and tasks stored before the loader
    refused it may hold; it names nobody.)"""

    kind: StaffKind
    name: str | None = None

    def __str__(self) -> str:
        return self.kind if self.name is None else f"{self.kind}:{self.name}"

    @classmethod
    def parse(cls, text: str) -> StaffRef:
        """The exact form ``str()`` writes; ``ValueError`` otherwise (no name lookup)."""
        kind, sep, name = text.partition(":")
        if not sep:
            if kind == "account_manager":
                return cls("account_manager")
            if kind == "on_call":
                return cls("on_call")
        elif name and kind == "staff":
            return cls("staff", name)
        elif name and kind == "group":
            return cls("group", name)
        elif name and kind == "on_call":
            return cls("on_call", name)
        raise ValueError(f"not a staff reference: {text!r}")


@dataclass(frozen=True)
class EscalationStep:
    """One rung of a policy's ladder, in force from ``after`` (incident age) until the next.

    ``every`` is the cadence of updates; ``notify`` are the staff told when the incident
    enters this step. ``after`` identifies the step within its policy.
    """

    after: timedelta
    every: timedelta
    channels: tuple[str, ...]
    urgency: str = "normal"
    notify: tuple[StaffRef, ...] = ()


@dataclass(frozen=True)
class Policy:
    """A named ladder of escalation steps; ``steps[0].after`` is zero, the rest increase."""

    name: str
    steps: tuple[EscalationStep, ...]
    description: str = ""

    def step_at(self, age: timedelta) -> EscalationStep:
        return step_at(self.steps, age)


def step_at(steps: tuple[EscalationStep, ...], age: timedelta) -> EscalationStep:
    """The step in force at ``age``: the last one that started at or before it (the first
    for a negative age, which a clock skew can produce)."""
    index = bisect.bisect_right([s.after for s in steps], age) - 1
    return steps[max(index, 0)]


@dataclass(frozen=True)
class FollowupRequirement:
    """A human follow-up a rule forces: ``kind`` by ``owner`` within ``deadline`` of the rule
    first matching, reminded every ``reminder_every``; when overdue, ``escalation[0]`` is told,
    then the next link every ``escalation_interval``. ``rule`` names the rule: the daemon keeps
    at most one follow-up per (incident, customer, rule)."""

    kind: str
    owner: StaffRef
    deadline: timedelta
    rule: str
    reminder_every: timedelta | None = None
    escalation: tuple[StaffRef, ...] = ()
    escalation_interval: timedelta | None = None


@dataclass(frozen=True)
class Compensation:
    """Something given to the customer with the resolution; one per (incident, customer,
    rule)."""

    kind: str
    amount: Decimal
    currency: str
    rule: str


@dataclass(frozen=True)
class CompensationAction:
    """A compensation and the conditions (``when``) under which a matching rule grants it."""

    compensation: Compensation
    when: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class QuietHours:
    """Non-critical updates are held while the customer's local time is in
    ``[start, end)``; the window may cross midnight (22:00–07:00). ``rule`` set it."""

    start: time
    end: time
    rule: str = ""


@dataclass(frozen=True)
class Throttle:
    """At most ``max`` updates per customer per ``per`` on ``channels`` (all when empty);
    beyond, the ``fallback`` channel when one is named. ``rule`` set it."""

    max: int
    per: timedelta
    channels: tuple[str, ...] = ()
    fallback: str | None = None
    rule: str = ""


@dataclass(frozen=True)
class Rule:
    """``match`` (all conditions hold) ⇒ actions; evaluation stops after a matching rule unless
    ``continues``. ``where`` is the ``file:line:col`` of the rule in its file."""

    name: str
    conditions: tuple[Condition, ...] = ()
    continues: bool = False
    policy: str | None = None
    followup: FollowupRequirement | None = None
    compensation: CompensationAction | None = None
    require_for_resolution: frozenset[str] = frozenset()
    quiet_hours: QuietHours | None = None
    throttle: Throttle | None = None
    description: str = ""
    where: str = field(default="", compare=False)

    @functools.cached_property
    def needs_customer(self) -> bool:
        """It matches on customer facts, so it cannot match an incident on its own."""
        return any(c.on_customer for c in self.conditions)

    @property
    def incident_actions(self) -> tuple[str, ...]:
        """The actions it takes that belong to the incident, not to a customer."""
        return tuple(
            name
            for name, present in (
                ("policy", self.policy is not None),
                ("require_for_resolution", bool(self.require_for_resolution)),
            )
            if present
        )
