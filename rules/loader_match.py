"""Reading a ``match:`` (or a compensation's ``when:``) block into conditions.

::

    match:
      incident:
        severity: {gte: major}          # an operator mapping: every operator must hold
        components: payments            # shorthand: contains
        labels: {team: [web, api]}      # shorthand per label: in
        age: {gt: 4h}
      customer:
        tier: [vip, business]           # shorthand: in
        incidents: {within: 30d, gte: 3}
"""

from __future__ import annotations

import re
from datetime import timedelta

import yaml

from rules.facts import MATCHABLE_STATUSES, SEEN_AS, SEVERITIES
from rules.matchers import FIELDS, OPERATORS, OPTIONAL, SHORTHAND, Condition, Kind, Operand
from rules.yamlnodes import Item, Reader, location

_LISTS = frozenset({"in", "not_in", "contains_any", "contains_all", "contains_none"})
_FLAGS = frozenset({"present", "empty"})
_PATTERNS = frozenset({"matches", "not_matches"})
_SET_HINTS = {
    "eq": "contains",
    "in": "contains_any",
    "ne": "contains_none",
    "not_in": "contains_none",
}
_EXAMPLES: dict[Kind, str] = {"duration": "{gt: 2h}", "count": "{within: 30d, gte: 3}"}


def read_match(reader: Reader, item: Item, filename: str) -> tuple[Condition, ...]:
    """The conditions of a ``match:`` block; problems go to ``reader``."""
    scopes = reader.mapping(item, ("incident", "customer"))
    if scopes is None:
        return ()
    conditions: list[Condition] = []
    reported = len(reader.problems)
    for scope, scope_item in scopes.items():
        names = sorted(f.partition(".")[2] for f in FIELDS if f.startswith(scope + "."))
        fields = reader.mapping(scope_item, names)
        for name, field_item in (fields or {}).items():
            reading = _FieldReader(reader, filename, f"{scope}.{name}")
            conditions.extend(reading.read(field_item))
    if not conditions and len(reader.problems) == reported:
        reader.problems.at(item, "an empty match: leave `match` out to match everything")
    return tuple(conditions)


class _FieldReader:
    def __init__(self, reader: Reader, filename: str, field: str) -> None:
        self.reader = reader
        self.filename = filename
        self.field = field
        self.kind: Kind = FIELDS[field]

    def read(self, item: Item) -> list[Condition]:
        if self.field == "incident.labels":
            labels = self.reader.names(item) or {}
            if not labels and isinstance(item.node, yaml.MappingNode) and not item.node.value:
                self.reader.problems.at(item, "name at least one label")
            out: list[Condition] = []
            for key, label_item in labels.items():
                out.extend(self._spec(label_item, key=key))
            return out
        return self._spec(item)

    def _spec(self, item: Item, key: str | None = None) -> list[Condition]:
        if isinstance(item.node, yaml.MappingNode):
            return self._operators(item, key)
        single, many = SHORTHAND[self.kind]
        op = many if isinstance(item.node, yaml.SequenceNode) else single
        if op is None:
            example = _EXAMPLES[self.kind]
            self.reader.problems.at(item, f"{self.field} needs operators, e.g. {example}")
            return []
        return self._condition(op, item, key, None)

    def _operators(self, item: Item, key: str | None) -> list[Condition]:
        allowed = list(OPERATORS[self.kind])
        optional = self.field in OPTIONAL
        if not optional and "present" in allowed:
            allowed.remove("present")
        if self.kind == "count":
            allowed.append("within")
        ops = self.reader.mapping(
            item,
            allowed,
            ("within",) if self.kind == "count" else (),
            what="operator",
            hint=self._hint,
        )
        if ops is None:
            return []
        window: timedelta | None = None
        within = ops.pop("within", None)
        if within is not None:
            window = self.reader.duration(within)
        if isinstance(item.node, yaml.MappingNode) and not item.node.value:
            self.reader.problems.at(item, "give at least one operator")
        elif self.kind == "count" and within is not None and not ops:
            # ``{within: 30d}`` alone compares nothing: the condition would match everyone.
            self.reader.problems.at(
                item, f"give at least one operator besides within, e.g. {_EXAMPLES['count']}"
            )
        out: list[Condition] = []
        for op, op_item in ops.items():
            out.extend(self._condition(op, op_item, key, window))
        if self.kind == "count" and window is None:
            return []  # the missing or bad ``within`` is reported already
        return out

    def _hint(self, op: str) -> str:
        if self.kind == "set" and op in _SET_HINTS:
            return f" for a set (did you mean {_SET_HINTS[op]!r}?)"
        if op == "present" and self.kind == "text":
            return f" ({self.field} is always present)"
        return ""

    def _condition(
        self, op: str, item: Item, key: str | None, window: timedelta | None
    ) -> list[Condition]:
        operand = self._operand(op, item)
        if operand is None:
            return []
        where = location(self.filename, item.mark)
        return [Condition(self.field, op, operand, key, window, where)]

    def _operand(self, op: str, item: Item) -> Operand | None:
        if op in _FLAGS:
            return self.reader.boolean(item)
        if op in _PATTERNS:
            return self._pattern(item)
        if op in _LISTS:
            items = self.reader.sequence(item, single=True)
            if items is None:
                return None
            if not items:
                self.reader.problems.at(item, "an empty list: give at least one value")
                return None
            values = [self._value(i, op) for i in items]
            if any(v is None for v in values):
                return None
            if self.kind in ("number", "count"):
                return tuple(v for v in values if isinstance(v, int))
            return tuple(str(v) for v in values)
        return self._value(item, op)

    def _value(self, item: Item, op: str) -> str | int | timedelta | None:
        if self.kind in ("number", "count"):
            return self.reader.integer(item)
        if self.kind == "duration":
            return self.reader.duration(item, positive=False)
        if self.kind == "severity":
            return self.reader.choice(item, SEVERITIES, "severity")
        if self.kind == "status":
            return self._status(item)
        return self.reader.text(item)

    def _status(self, item: Item) -> str | None:
        """A status a rule can see: ``closed`` is refused, since an incident's facts say
        ``resolved`` for it (:data:`rules.facts.SEEN_AS`) and a condition naming it could
        never match (or, with ``ne`` and ``not_in``, always would)."""
        value = self.reader.text(item)
        seen = SEEN_AS.get(value or "")
        if seen is not None:
            self.reader.problems.at(
                item,
                f"status {value!r} never matches: the rules see a {value} incident as {seen}; "
                f"write {seen} (it covers {value} incidents too)",
            )
            return None
        if value is None:
            return None
        return self.reader.choice(item, MATCHABLE_STATUSES, "status")

    def _pattern(self, item: Item) -> re.Pattern[str] | None:
        text = self.reader.text(item)
        if text is None:
            return None
        try:
            return re.compile(text)
        except (re.error, OverflowError, ValueError) as exc:  # OverflowError: a{9999999999}
            why = str(exc)
        except RecursionError:  # thousands of nested groups
            why = "it is nested too deeply"
        shown = text if len(text) <= 60 else f"{text[:40]}… ({len(text)} characters)"
        self.reader.problems.at(item, f"invalid regular expression {shown!r}: {why}")
        return None
