"""A loaded rules file: its policies and its ordered rules, ready to evaluate."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from rules.evaluate import Decision, evaluate
from rules.facts import CustomerFacts, IncidentFacts
from rules.schema import Policy, Rule
from rules.snapshot import PlanSnapshot


@dataclass(frozen=True, eq=False)
class RuleSet:
    """Policies by name and rules in evaluation order. ``source`` is the file name it was
    loaded from and ``digest`` the SHA-256 of its text: snapshots record both."""

    policies: Mapping[str, Policy]
    rules: tuple[Rule, ...]
    source: str = "<rules>"
    digest: str = ""

    def evaluate(
        self,
        incident: IncidentFacts,
        customer: CustomerFacts | None = None,
        *,
        now: datetime,
        plan: PlanSnapshot | None = None,
    ) -> Decision:
        """Decide for ``incident`` (and ``customer``) at ``now``.

        Without ``customer``, rules with customer conditions are skipped: that is the
        incident's own decision (its policy and resolution requirements). With ``plan`` (the
        incident's stored snapshot), ``policy`` and ``step`` come from the plan, not from the
        current policies; every other field comes from the current rules.
        """
        return evaluate(self, incident, customer, now, plan)

    def rule(self, name: str) -> Rule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)

    @property
    def history_window(self) -> timedelta:
        """The longest ``customer.incidents`` look-back any rule uses: the daemon need not
        pass older incidents in ``CustomerFacts.incident_history``."""
        windows = [
            c.window
            for rule in self.rules
            for c in (*rule.conditions, *(rule.compensation.when if rule.compensation else ()))
            if c.window is not None
        ]
        return max(windows, default=timedelta(0))
