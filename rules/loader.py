"""Loading a rules file: YAML in, a checked ``RuleSet`` out, or every problem located.

Each problem reads ``file:line:col: path: message``, e.g. ``rules.yaml:14:18:
rules[2].followup.owner: unknown staff member or group 'carr' (did you mean 'care'?)``. Names
of channels, staff and groups are checked against the sets the caller passes (the daemon's
configuration), so a typo fails the load instead of silently notifying nobody.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Set
from datetime import timedelta
from types import MappingProxyType

import yaml

from rules.loader_actions import STAFF_ONLY, ActionReader
from rules.loader_match import read_match
from rules.loader_order import check_order
from rules.ruleset import RuleSet
from rules.schema import URGENCIES, EscalationStep, Policy, Rule
from rules.yamlnodes import Item, Problems, Reader, RulesError, location, suggest

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_RULE_KEYS = (
    "name",
    "description",
    "match",
    "continue",
    "policy",
    "followup",
    "compensation",
    "require_for_resolution",
    "quiet_hours",
    "throttle",
)
_STEP_KEYS = ("after", "every", "channels", "urgency", "notify")


def load_rules(
    text: str, filename: str, *, channels: Set[str], staff: Set[str], groups: Set[str]
) -> RuleSet:
    """Parse and check a rules file; raise ``RulesError`` listing every problem.

    A file with nothing in it but blank lines and comments is refused: read as "no rules",
    an editor that empties the file before writing it, or a save cut short, would drop every
    policy, follow-up and apology requirement. (``rules: []`` says "no rules" on purpose.)"""
    problems = Problems(filename)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise RulesError([f"{filename}: the YAML is nested too deeply to read"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = location(filename, mark) if mark is not None else filename
        problem = getattr(exc, "problem", None) or str(exc)
        raise RulesError([f"{where}: YAML syntax error: {problem}"]) from None
    if root is None:
        raise RulesError(
            [
                f"{filename}: the file is empty (no policies, no rules); to run without rules, "
                "leave rules.path out of the configuration"
            ]
        )
    digest = "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
    loader = _Loader(Reader(problems), filename, frozenset(channels), frozenset(staff), groups)
    policies, rules = loader.document(Item(root, ""))
    if problems:
        raise RulesError(problems.listed())
    return RuleSet(MappingProxyType(policies), tuple(rules), filename, digest)


_STAND_IN = EscalationStep(timedelta(0), timedelta(minutes=1), ("-",))
"""What a step stands on when the first step of its policy failed: see ``policy``."""


class _Loader(ActionReader):
    def document(self, root: Item) -> tuple[dict[str, Policy], list[Rule]]:
        top = self.reader.mapping(root, ("version", "policies", "rules")) or {}
        if "version" in top and self.reader.integer(top["version"]) not in (1, None):
            self.problems.at(top["version"], "only version 1 is known")
        policies: dict[str, Policy] = {}
        # Every policy the file defines, valid or not: a rule naming a policy that has its own
        # problems should not get a second, misleading "unknown policy" error.
        written_policies = self.reader.names(top["policies"]) if "policies" in top else None
        for name, item in (written_policies or {}).items():
            policy = self.policy(name, item)
            if policy is not None:
                policies[name] = policy
        rules: list[Rule] = []
        written: list[tuple[Rule, Item, bool]] = []
        if "rules" in top:
            defined = frozenset(written_policies or ())
            for item in self.reader.sequence(top["rules"]) or []:
                reported = len(self.problems)
                rule = self.rule(item, defined)
                if rule is not None:
                    written.append((rule, item, len(self.problems) == reported))
                    rules.append(rule)
            check_order(written, self.problems)
        return policies, rules

    def name(self, item: Item, what: str) -> str | None:
        value = self.reader.text(item)
        if value is not None and not _NAME.fullmatch(value):
            self.problems.at(item, f"{what} names use letters, digits, '_', '.', '-': {value!r}")
            return None
        return value

    def policy(self, name: str, item: Item) -> Policy | None:
        if item.key is not None and not _NAME.fullmatch(name):
            self.problems.add(
                item.key.start_mark,
                item.path,
                f"policy names use letters, digits, '_', '.', '-': {name!r}",
                item.merged,
            )
        keys = self.reader.mapping(item, ("description", "steps"), ("steps",))
        if keys is None or "steps" not in keys:
            return None
        description = self.reader.text(keys["description"]) if "description" in keys else ""
        steps: list[EscalationStep] = []
        ok = True
        for step_item in self.reader.sequence(keys["steps"]) or []:
            # After a first step that failed, a later one is checked on its own: what it
            # leaves out would default to the failed step's, and judged as the first it drew
            # false errors ("missing key 'channels'", "must start at after: 0m").
            stand_in = not steps and not ok
            previous = steps[-1] if steps else (_STAND_IN if stand_in else None)
            step = self.step(step_item, previous)
            ok = ok and step is not None
            if step is None or stand_in:
                continue
            if steps and step.after <= steps[-1].after:
                self.problems.at(step_item, "steps must start at increasing ages")
                ok = False
            elif not steps and step.after:
                self.problems.at(step_item, "the first step must start at after: 0m")
                ok = False
            steps.append(step)
        if not steps and ok and isinstance(keys["steps"].node, yaml.SequenceNode):
            self.problems.at(keys["steps"], "a policy needs at least one step")
        if not ok or not steps:
            return None
        return Policy(name, tuple(steps), description or "")

    def step(self, item: Item, previous: EscalationStep | None) -> EscalationStep | None:
        """A step; ``every``, ``channels`` and ``urgency`` default to the previous step's."""
        required = ("after",) if previous is not None else ("after", "every", "channels")
        keys = self.reader.mapping(item, _STEP_KEYS, required)
        if keys is None or any(k not in keys for k in required):
            return None
        after = self.reader.duration(keys["after"], positive=False)
        every = self.reader.duration(keys["every"]) if "every" in keys else None
        channels = self.channel_list(keys["channels"]) if "channels" in keys else None
        urgency = (
            self.reader.choice(keys["urgency"], URGENCIES, "urgency") if "urgency" in keys else None
        )
        notify = self.refs(keys.get("notify"), STAFF_ONLY)
        if after is None or notify is None:
            return None
        if previous is None:
            if every is None or channels is None or ("urgency" in keys and urgency is None):
                return None
            return EscalationStep(after, every, channels, urgency or "normal", notify)
        if any(k in keys and v is None for k, v in (("every", every), ("channels", channels))):
            return None
        return EscalationStep(
            after,
            every or previous.every,
            channels or previous.channels,
            urgency or previous.urgency,
            notify,
        )

    def rule(self, item: Item, defined: Set[str]) -> Rule | None:
        """The rule, or ``None`` when it has no usable name; its other problems are recorded
        (the rule is still returned, for the checks of names and order)."""
        keys = self.reader.mapping(item, _RULE_KEYS, ("name",))
        if keys is None:
            return None
        name = self.name(keys["name"], "rule") if "name" in keys else None
        label = name or "?"
        conditions = (
            read_match(self.reader, keys["match"], self.filename) if "match" in keys else ()
        )
        policy = self.reader.text(keys["policy"]) if "policy" in keys else None
        if policy is not None and policy not in defined:
            hint = suggest(policy, defined) or f" (defined: {', '.join(sorted(defined)) or 'none'})"
            self.problems.at(keys["policy"], f"unknown policy {policy!r}{hint}")
        rule = Rule(
            name=label,
            conditions=conditions,
            continues=bool(self.reader.boolean(keys["continue"])) if "continue" in keys else False,
            policy=policy,
            followup=self.followup(keys["followup"], label) if "followup" in keys else None,
            compensation=(
                self.compensation(keys["compensation"], label) if "compensation" in keys else None
            ),
            require_for_resolution=self.required(keys.get("require_for_resolution")),
            quiet_hours=self.quiet(keys["quiet_hours"], label) if "quiet_hours" in keys else None,
            throttle=self.throttle(keys["throttle"], label) if "throttle" in keys else None,
            description=(self.reader.text(keys["description"]) or "")
            if "description" in keys
            else "",
            where=location(self.filename, item.mark),
        )
        if rule.needs_customer and rule.incident_actions:
            what = " and ".join(rule.incident_actions)
            self.problems.at(
                item,
                f"{what} belong to the incident, so a rule that sets them "
                "cannot match on customer facts",
            )
        if rule.compensation is not None and (
            rule.needs_customer or any(c.on_customer for c in rule.compensation.when)
        ):
            self.problems.at(
                keys["compensation"],
                "compensation is decided once for the incident, at its resolution (it is in "
                "the resolution message every affected customer gets), so it cannot depend on "
                "customer facts; do something for particular customers with a follow-up",
            )
        return rule if name is not None else None
