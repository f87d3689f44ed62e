"""Conditions on facts: one field, one operator, one operand (``incident.age > 4h``).

A rule's ``match`` compiles to a tuple of these, all of which must hold. Each condition can
say what it expected and what it saw, which is what ``explain`` prints.

Fields and their kinds (the operators each kind takes are in ``OPERATORS``)::

    incident.severity            severity  ordered minor < major < critical
    incident.status              status
    incident.source              text
    incident.components          set
    incident.regions             set
    incident.labels.<name>       text      absent when the incident has no such label
    incident.affected_customers  number
    incident.age                 duration  (resolved_at or now) - started_at
    customer.id / tier / language      text
    customer.region / sla              text  may be absent
    customer.tags                      set
    customer.open_followups            number
    customer.incidents                 count  incidents that started within a window
"""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from rules.durations import format_duration
from rules.facts import SEVERITIES, CustomerFacts, IncidentFacts

Kind = Literal["text", "severity", "status", "set", "number", "duration", "count"]
Operand = str | int | bool | timedelta | tuple[str, ...] | tuple[int, ...] | re.Pattern[str]

FIELDS: Final[dict[str, Kind]] = {
    "incident.severity": "severity",
    "incident.status": "status",
    "incident.source": "text",
    "incident.components": "set",
    "incident.regions": "set",
    "incident.labels": "text",
    "incident.affected_customers": "number",
    "incident.age": "duration",
    "customer.id": "text",
    "customer.tier": "text",
    "customer.language": "text",
    "customer.region": "text",
    "customer.sla": "text",
    "customer.tags": "set",
    "customer.open_followups": "number",
    "customer.incidents": "count",
}
OPTIONAL: Final = frozenset({"incident.labels", "customer.region", "customer.sla"})
"""Fields that may be absent; only these take ``present: true|false``."""

_EQUALITY = ("eq", "ne", "in", "not_in")
_ORDER = ("lt", "lte", "gt", "gte")
OPERATORS: Final[dict[Kind, tuple[str, ...]]] = {
    "text": (*_EQUALITY, "matches", "not_matches", "present"),
    "severity": (*_EQUALITY, *_ORDER),
    "status": _EQUALITY,
    "set": ("contains", "contains_any", "contains_all", "contains_none", "matches", "empty"),
    "number": (*_EQUALITY, *_ORDER),
    "duration": _ORDER,
    "count": (*_EQUALITY, *_ORDER),
}
SHORTHAND: Final[dict[Kind, tuple[str | None, str | None]]] = {
    # (operator for a single value, operator for a list); None: the kind needs a mapping.
    "text": ("eq", "in"),
    "severity": ("eq", "in"),
    "status": ("eq", "in"),
    "set": ("contains", "contains_any"),
    "number": ("eq", "in"),
    "duration": (None, None),
    "count": (None, None),
}
SYMBOLS: Final = {
    "eq": "==",
    "ne": "!=",
    "lt": "<",
    "lte": "<=",
    "gt": ">",
    "gte": ">=",
    "in": "in",
    "not_in": "not in",
    "matches": "=~",
    "not_matches": "!~",
    "contains": "contains",
    "contains_any": "contains any of",
    "contains_all": "contains all of",
    "contains_none": "contains none of",
}
_RANK: Final = {name: rank for rank, name in enumerate(SEVERITIES)}
_ORDERING: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}


class _NoCustomer:
    """The actual value of a customer field when the evaluation has no customer."""

    def __repr__(self) -> str:
        return "(no customer)"


NO_CUSTOMER: Final = _NoCustomer()
Actual = str | int | timedelta | frozenset[str] | None | _NoCustomer


@dataclass
class MatchContext:
    """The facts of one evaluation, with what is derived from them computed once."""

    incident: IncidentFacts
    customer: CustomerFacts | None
    now: datetime
    age: timedelta = field(init=False)
    _counts: dict[timedelta, int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.age = self.incident.age(self.now)  # facts are in UTC, so this is exact

    def incidents_within(self, window: timedelta) -> int:
        if self.customer is None:
            return 0
        if window not in self._counts:
            self._counts[window] = self.customer.incidents_within(window, self.now)
        return self._counts[window]


@dataclass(frozen=True)
class Condition:
    """``field op operand``. ``key`` names a label (``incident.labels.<key>``); ``window`` is
    the look-back of ``customer.incidents``. ``where`` is the ``file:line:col`` it came from."""

    field: str
    op: str
    operand: Operand
    key: str | None = None
    window: timedelta | None = None
    where: str = dataclasses.field(default="", compare=False)
    kind: Kind = dataclasses.field(init=False, compare=False, repr=False)
    on_customer: bool = dataclasses.field(init=False, compare=False, repr=False)
    _name: str = dataclasses.field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Derived once: evaluation runs per customer, so ``holds`` is the hot path.
        scope, _, name = self.field.partition(".")
        object.__setattr__(self, "kind", FIELDS[self.field])
        object.__setattr__(self, "on_customer", scope == "customer")
        object.__setattr__(self, "_name", name)

    @property
    def subject(self) -> str:
        """The field as written: ``incident.labels.team``, ``customer.incidents[30d]``."""
        if self.key is not None:
            return f"{self.field}.{self.key}"
        if self.window is not None:
            return f"{self.field}[{format_duration(self.window)}]"
        return self.field

    def actual(self, ctx: MatchContext) -> Actual:
        """The value this condition looks at, in the facts of ``ctx``."""
        name = self._name
        if not self.on_customer:
            incident = ctx.incident
            if name == "labels":
                return incident.labels.get(self.key or "")
            if name == "age":
                return ctx.age
            value: Actual = getattr(incident, name)
            return value
        if ctx.customer is None:
            return NO_CUSTOMER
        if name == "incidents":
            return ctx.incidents_within(self.window or timedelta(0))
        customer_value: Actual = getattr(ctx.customer, name)
        return customer_value

    def holds(self, ctx: MatchContext) -> bool:
        return test(self.kind, self.op, self.operand, self.actual(ctx))

    def describe(self) -> str:
        """``incident.severity >= major``, ``customer.tags contains vip``."""
        if self.op == "present":
            return f"{self.subject} {'present' if self.operand else 'absent'}"
        if self.op == "empty":
            return f"{self.subject} {'empty' if self.operand else 'not empty'}"
        return f"{self.subject} {SYMBOLS[self.op]} {show(self.operand)}"


def test(kind: Kind, op: str, operand: Operand, actual: Actual) -> bool:
    """Whether ``actual op operand`` holds for a field of ``kind``. Never raises on values
    the loader accepts and facts that validate."""
    if isinstance(actual, _NoCustomer):
        return False
    if op == "present":
        return (actual is not None) == operand
    if actual is None:
        # An absent optional value equals nothing, so only the negative operators hold.
        return op in ("ne", "not_in", "not_matches")
    if isinstance(actual, frozenset):
        return _test_set(op, operand, actual)
    if kind == "severity" and isinstance(actual, str):
        return _compare(op, _RANK.get(actual, -1), _severity_operand(operand))
    if op == "matches" and isinstance(operand, re.Pattern):
        return isinstance(actual, str) and operand.fullmatch(actual) is not None
    if op == "not_matches" and isinstance(operand, re.Pattern):
        return isinstance(actual, str) and operand.fullmatch(actual) is None
    return _compare(op, actual, operand)


def _severity_operand(operand: Operand) -> Operand:
    if isinstance(operand, str):
        return _RANK[operand]
    if isinstance(operand, tuple):
        return tuple(_RANK[str(o)] for o in operand)
    return operand


def _compare(op: str, actual: object, operand: object) -> bool:
    if op == "eq":
        return actual == operand
    if op == "ne":
        return actual != operand
    if op in ("in", "not_in"):
        inside = isinstance(operand, tuple) and actual in operand
        return inside if op == "in" else not inside
    order = _ORDERING.get(op)
    if order is not None and isinstance(actual, int | timedelta) and type(actual) is type(operand):
        return bool(order(actual, operand))
    return False


def _test_set(op: str, operand: Operand, actual: frozenset[str]) -> bool:
    if op == "contains":
        return operand in actual
    if op == "empty":
        return (not actual) == operand
    if op == "matches" and isinstance(operand, re.Pattern):
        return any(operand.fullmatch(item) is not None for item in actual)
    values = frozenset(str(o) for o in operand) if isinstance(operand, tuple) else frozenset()
    if op == "contains_any":
        return bool(actual & values)
    if op == "contains_all":
        return values <= actual
    if op == "contains_none":
        return not actual & values
    return False


def show(value: object) -> str:
    """A value as an admin would write it in the rules file."""
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, re.Pattern):
        return f'"{value.pattern}"'
    if isinstance(value, tuple | frozenset | set | list):
        items = sorted(value, key=str) if isinstance(value, frozenset | set) else value
        return "[" + ", ".join(show(v) for v in items) + "]"
    if value is None:
        return "(absent)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
