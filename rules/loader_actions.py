"""The loader's checks of names (channels, staff, groups) and its readers of rule actions."""

from __future__ import annotations

import re
from collections.abc import Set
from dataclasses import dataclass
from datetime import time, timedelta
from decimal import Decimal, InvalidOperation

from rules.loader_match import read_match
from rules.schema import (
    COMPENSATION_KINDS,
    FOLLOWUP_KINDS,
    RESOLUTION_FIELDS,
    Compensation,
    CompensationAction,
    FollowupRequirement,
    QuietHours,
    StaffKind,
    StaffRef,
    Throttle,
)
from rules.yamlnodes import Item, Problems, Reader, known_list, suggest

_CLOCK = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")
_CURRENCY = re.compile(r"[A-Z]{3}")
ANYONE: frozenset[StaffKind] = frozenset({"staff", "group", "account_manager", "on_call"})
STAFF_ONLY: frozenset[StaffKind] = frozenset({"staff", "group", "on_call"})


@dataclass
class ActionReader:
    """Reads the parts of a rules file that name things the daemon knows."""

    reader: Reader
    filename: str
    channels: Set[str]
    staff: Set[str]
    groups: Set[str]

    @property
    def problems(self) -> Problems:
        return self.reader.problems

    def channel_list(self, item: Item) -> tuple[str, ...] | None:
        items = self.reader.sequence(item, single=True)
        if items is None:
            return None
        if not items:
            self.problems.at(item, "name at least one channel")
            return None
        names = [self.channel(i) for i in items]
        if any(n is None for n in names):
            return None
        found = tuple(n for n in names if n is not None)
        if len(set(found)) != len(found):
            self.problems.at(item, "a channel is named twice")
            return None
        return found

    def channel(self, item: Item) -> str | None:
        name = self.reader.text(item)
        if name is not None and name not in self.channels:
            hint = suggest(name, self.channels) or f" ({known_list(self.channels)})"
            self.problems.at(item, f"unknown channel {name!r}{hint}")
            return None
        return name

    def refs(self, item: Item | None, kinds: frozenset[StaffKind]) -> tuple[StaffRef, ...] | None:
        if item is None:
            return ()
        items = self.reader.sequence(item, single=True)
        if items is None:
            return None
        refs = [self.ref(i, kinds) for i in items]
        return None if any(r is None for r in refs) else tuple(r for r in refs if r is not None)

    def ref(self, item: Item, kinds: frozenset[StaffKind]) -> StaffRef | None:
        """``staff:ann``, ``group:care``, ``on_call:group``, ``account_manager``, or a bare
        staff id or group name. Each names someone the daemon's staff directory can find:
        ``on_call`` alone is refused, since on-call people are per group (``staff.groups.
        <name>.on_call``) and there is no one on call for the whole staff."""
        text = self.reader.text(item)
        if text is None:
            return None
        ref = self._resolve(item, text)
        if ref is not None and ref.kind not in kinds:
            self.problems.at(item, f"{ref.kind} cannot be used here (no customer to ask about)")
            return None
        return ref

    def _resolve(self, item: Item, text: str) -> StaffRef | None:
        kind, sep, name = text.partition(":")
        if not sep:
            if text == "account_manager":
                return StaffRef.parse(text)
            if text == "on_call":
                self.problems.at(
                    item,
                    "on_call names the person on call in a group: write on_call:GROUP "
                    f"({known_list(self.groups)})",
                )
                return None
            in_staff, in_groups = text in self.staff, text in self.groups
            if in_staff and in_groups:
                self.problems.at(
                    item,
                    f"{text!r} is both a staff id and a group: write staff:{text} or group:{text}",
                )
                return None
            if in_staff or in_groups:
                return StaffRef("staff" if in_staff else "group", text)
            hint = suggest(text, [*self.staff, *self.groups])
            self.problems.at(item, f"unknown staff member or group {text!r}{hint}")
            return None
        known = {"staff": self.staff, "group": self.groups, "on_call": self.groups}.get(kind)
        if known is None or not name:
            self.problems.at(
                item,
                f"write staff:ID, group:NAME, on_call:GROUP or account_manager, not {text!r}",
            )
            return None
        if name not in known:
            what = "staff member" if kind == "staff" else "group"
            self.problems.at(item, f"unknown {what} {name!r}{suggest(name, known)}")
            return None
        return StaffRef.parse(text)

    def followup(self, item: Item, rule: str) -> FollowupRequirement | None:
        keys = self.reader.mapping(
            item,
            ("kind", "owner", "deadline", "reminder_every", "escalation", "escalation_interval"),
            ("kind", "owner", "deadline"),
        )
        if keys is None:
            return None
        reported = len(self.problems)
        kind = self.reader.choice(keys["kind"], FOLLOWUP_KINDS, "kind") if "kind" in keys else None
        owner = self.ref(keys["owner"], ANYONE) if "owner" in keys else None
        deadline = self.reader.duration(keys["deadline"]) if "deadline" in keys else None
        reminder = self._maybe_duration(keys.get("reminder_every"))
        interval = self._maybe_duration(keys.get("escalation_interval"))
        chain = self.refs(keys.get("escalation"), ANYONE)
        if "escalation_interval" in keys and chain is not None and not chain:
            # (None: the chain names someone unknown, reported as such; it is not absent)
            self.problems.at(keys["escalation_interval"], "there is no escalation to pace")
        if kind is None or owner is None or deadline is None or chain is None:
            return None
        if len(self.problems) > reported:
            return None
        return FollowupRequirement(
            kind=kind,
            owner=owner,
            deadline=deadline,
            rule=rule,
            reminder_every=reminder,
            escalation=chain,
            escalation_interval=(interval or reminder or deadline) if chain else None,
        )

    def _maybe_duration(self, item: Item | None) -> timedelta | None:
        return None if item is None else self.reader.duration(item)

    def compensation(self, item: Item, rule: str) -> CompensationAction | None:
        keys = self.reader.mapping(
            item, ("kind", "amount", "currency", "when"), ("kind", "amount", "currency")
        )
        if keys is None:
            return None
        kind = (
            self.reader.choice(keys["kind"], COMPENSATION_KINDS, "kind") if "kind" in keys else None
        )
        amount = self._amount(keys["amount"]) if "amount" in keys else None
        currency = self.reader.text(keys["currency"]) if "currency" in keys else None
        if currency is not None and not _CURRENCY.fullmatch(currency):
            self.problems.at(keys["currency"], f"an ISO 4217 code (EUR) is expected: {currency!r}")
            currency = None
        reported = len(self.problems)
        when = read_match(self.reader, keys["when"], self.filename) if "when" in keys else ()
        if kind is None or amount is None or currency is None or len(self.problems) > reported:
            return None
        return CompensationAction(Compensation(kind, amount, currency, rule), when)

    def _amount(self, item: Item) -> Decimal | None:
        text = self.reader.text(item)
        if text is None:
            return None
        try:
            amount = Decimal(text.replace("_", ""))
        except InvalidOperation:
            amount = Decimal("NaN")
        if not amount.is_finite() or amount <= 0:
            self.problems.at(item, f"a positive amount is expected, not {text!r}")
            return None
        return amount

    def required(self, item: Item | None) -> frozenset[str]:
        if item is None:
            return frozenset()
        items = self.reader.sequence(item, single=True) or []
        if not items and item.node is not None:
            self.problems.at(item, f"name at least one of {', '.join(RESOLUTION_FIELDS)}")
        found = (self.reader.choice(i, RESOLUTION_FIELDS, "field") for i in items)
        return frozenset(f for f in found if f is not None)

    def quiet(self, item: Item, rule: str) -> QuietHours | None:
        keys = self.reader.mapping(item, ("from", "to"), ("from", "to"))
        if keys is None or "from" not in keys or "to" not in keys:
            return None
        start, end = self._clock(keys["from"]), self._clock(keys["to"])
        if start is None or end is None:
            return None
        if start == end:
            self.problems.at(item, "from and to are the same time: the window is empty")
            return None
        return QuietHours(start, end, rule)

    def _clock(self, item: Item) -> time | None:
        text = self.reader.text(item)
        match = _CLOCK.fullmatch(text or "")
        if text is not None and match is None:
            self.problems.at(item, f"a time of day is expected (22:00), not {text!r}")
        if match is None:
            return None
        return time(int(match.group(1)), int(match.group(2)))

    def throttle(self, item: Item, rule: str) -> Throttle | None:
        keys = self.reader.mapping(item, ("max", "per", "channels", "fallback"), ("max", "per"))
        if keys is None:
            return None
        most = self.reader.integer(keys["max"], minimum=1) if "max" in keys else None
        per = self.reader.duration(keys["per"]) if "per" in keys else None
        channels = self.channel_list(keys["channels"]) if "channels" in keys else ()
        fallback = self.channel(keys["fallback"]) if "fallback" in keys else None
        if fallback is not None and channels and fallback in channels:
            self.problems.at(keys["fallback"], "the fallback channel is itself throttled")
            return None
        if most is None or per is None or channels is None:
            return None
        if "fallback" in keys and fallback is None:
            return None
        return Throttle(most, per, channels, fallback, rule)
