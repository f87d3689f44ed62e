"""Checks on the order of rules, which only the whole list can show.

- Names are unique: the daemon keys follow-ups and compensation by rule name.
- No rule is unreachable: a rule can never match when an earlier rule without ``continue``
  has a subset of its conditions (a catch-all has the empty subset), because that earlier
  rule matches whenever this one would, and stops the walk.
- The incident's own decision (policy, resolution requirements) cannot depend on a customer:
  a rule that matches customer facts and does not continue must come after every rule that
  sets those, or it would hide them for the customers it matches.
"""

from __future__ import annotations

from rules.schema import Rule
from rules.yamlnodes import Item, Problems


def check_order(written: list[tuple[Rule, Item, bool]], problems: Problems) -> None:
    """``written`` holds each rule, where it is written, and whether it loaded without
    problems. Names are checked over all; order only over the sound ones, since a rule whose
    conditions did not all load would look more general than it is."""
    first_named: dict[str, Rule] = {}
    for rule, item, _ in written:
        if rule.name in first_named:
            other = first_named[rule.name]
            problems.at(item, f"duplicate rule name {rule.name!r} (first at line {_line(other)})")
        else:
            first_named[rule.name] = rule
    sound = [(rule, item) for rule, item, ok in written if ok]
    for j, (rule, item) in enumerate(sound):
        for earlier, _ in sound[:j]:
            if not earlier.continues and set(earlier.conditions) <= set(rule.conditions):
                why = (
                    "matches everything"
                    if not earlier.conditions
                    else "matches whenever this one does"
                )
                problems.at(
                    item,
                    f"unreachable: rule {earlier.name!r} (line {_line(earlier)}) {why} and "
                    "does not continue; add `continue: true` to it or move this rule above it",
                )
                break
    for i, (rule, item) in enumerate(sound):
        if not rule.needs_customer or rule.continues:
            continue
        hidden = next((later for later, _ in sound[i + 1 :] if later.incident_actions), None)
        if hidden is not None:
            what = " and ".join(hidden.incident_actions)
            problems.at(
                item,
                f"matches customer facts and does not continue, so for the customers it matches "
                f"it would hide rule {hidden.name!r} (line {_line(hidden)}), which sets the "
                f"incident's {what}; add `continue: true` or move it below",
            )


def _line(rule: Rule) -> str:
    parts = rule.where.rsplit(":", 2)
    return parts[1] if len(parts) == 3 else "?"
