"""The escalation plan of one incident, fixed when its escalation starts.

As in Grafana OnCall's escalation snapshots: the daemon stores ``PlanSnapshot.to_dict()``
with the incident when escalation starts and reads its ladder from there until the incident
ends, so an admin editing or deleting the policy mid-incident cannot change or break a
running incident's cadence, channels or staff notifications. Everything else (follow-ups,
compensation, resolution requirements, quiet hours, throttles) is evaluated with the rules
current at evaluation time; see ``docs/rules.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from rules.durations import format_duration, parse_duration
from rules.schema import URGENCIES, EscalationStep, StaffRef, step_at

if TYPE_CHECKING:
    from rules.ruleset import RuleSet

SNAPSHOT_FORMAT: Final = 1


class SnapshotError(ValueError):
    """A stored snapshot that cannot be read back (corrupt, or from an unknown format)."""


@dataclass(frozen=True)
class PlanSnapshot:
    """A policy's ladder as it was, plus which rules file it came from (for audit)."""

    policy: str
    steps: tuple[EscalationStep, ...]
    source: str = ""
    digest: str = ""

    def __post_init__(self) -> None:
        if not self.steps:
            raise SnapshotError("a plan needs at least one step")
        if self.steps[0].after != timedelta(0):
            raise SnapshotError("the first step must start at 0s")
        if any(b.after <= a.after for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise SnapshotError("steps must start at increasing ages")

    @classmethod
    def from_ruleset(cls, ruleset: RuleSet, policy_name: str) -> PlanSnapshot:
        """Freeze ``policy_name`` of ``ruleset``; ``KeyError`` when it has no such policy."""
        policy = ruleset.policies.get(policy_name)
        if policy is None:
            known = ", ".join(sorted(ruleset.policies)) or "none"
            raise KeyError(f"no policy {policy_name!r} in {ruleset.source} (defined: {known})")
        return cls(policy.name, policy.steps, ruleset.source, ruleset.digest)

    def step_at(self, age: timedelta) -> EscalationStep:
        """The step in force at an incident age."""
        return step_at(self.steps, age)

    def next_round_after(self, age: timedelta) -> timedelta:
        """How long after a round at incident age ``age`` the next one is due: the cadence
        of the step in force, unless a later step starts before that. A step is in force
        from its ``after``: under it the next round comes ``every`` after the last one, but
        not before the step starts (an update at 0:50, 30-minute steps until 1 h and
        20-minute ones from there: the next round at 1:10, not 1:20)."""
        gap = self.step_at(age).every
        for step in self.steps:
            if age < step.after < age + gap:
                gap = min(gap, max(step.after - age, step.every))
        return gap

    def next_change(self, age: timedelta) -> timedelta | None:
        """The age at which the next step starts, or ``None`` when ``age`` is in the last."""
        for step in self.steps:
            if step.after > age:
                return step.after
        return None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible form; durations as ``1h30m`` strings, exact to the microsecond."""
        return {
            "format": SNAPSHOT_FORMAT,
            "policy": self.policy,
            "source": self.source,
            "digest": self.digest,
            "steps": [
                {
                    "after": format_duration(step.after),
                    "every": format_duration(step.every),
                    "channels": list(step.channels),
                    "urgency": step.urgency,
                    "notify": [str(ref) for ref in step.notify],
                }
                for step in self.steps
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlanSnapshot:
        """Read back ``to_dict()``; ``SnapshotError`` names the first bad field."""
        if not isinstance(data, Mapping):
            raise SnapshotError("a snapshot must be a mapping")
        _keys(data, {"format", "policy", "source", "digest", "steps"}, "snapshot")
        if data.get("format") != SNAPSHOT_FORMAT:
            raise SnapshotError(f"unknown snapshot format {data.get('format')!r}")
        steps = data.get("steps")
        if not isinstance(steps, list):
            raise SnapshotError("steps: a list is expected")
        return cls(
            policy=_text(data, "policy", "snapshot"),
            steps=tuple(_step(item, f"steps[{i}]") for i, item in enumerate(steps)),
            source=_text(data, "source", "snapshot", empty=True),
            digest=_text(data, "digest", "snapshot", empty=True),
        )


def _keys(data: Mapping[str, Any], expected: set[str], where: str) -> None:
    if set(data) != expected:
        missing = sorted(expected - set(data))
        extra = sorted(str(k) for k in set(data) - expected)
        raise SnapshotError(f"{where}: missing keys {missing}, unknown keys {extra}")


def _text(data: Mapping[str, Any], key: str, where: str, *, empty: bool = False) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not (value or empty):
        raise SnapshotError(f"{where}.{key}: a non-empty string is expected, not {value!r}")
    return value


def _duration(data: Mapping[str, Any], key: str, where: str) -> timedelta:
    value = _text(data, key, where)
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise SnapshotError(f"{where}.{key}: {exc}") from None


def _strings(data: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SnapshotError(f"{where}.{key}: a list of strings is expected, not {value!r}")
    return value


def _step(item: object, where: str) -> EscalationStep:
    if not isinstance(item, Mapping):
        raise SnapshotError(f"{where}: a mapping is expected")
    _keys(item, {"after", "every", "channels", "urgency", "notify"}, where)
    urgency = _text(item, "urgency", where)
    if urgency not in URGENCIES:
        raise SnapshotError(f"{where}.urgency: unknown urgency {urgency!r}")
    every = _duration(item, "every", where)
    if every <= timedelta(0):
        raise SnapshotError(f"{where}.every: must be longer than 0s")
    try:
        notify = tuple(StaffRef.parse(ref) for ref in _strings(item, "notify", where))
    except ValueError as exc:
        raise SnapshotError(f"{where}.notify: {exc}") from None
    channels = _strings(item, "channels", where)
    if not channels:
        raise SnapshotError(f"{where}.channels: at least one channel is expected")
    return EscalationStep(
        after=_duration(item, "after", where),
        every=every,
        channels=tuple(channels),
        urgency=urgency,
        notify=notify,
    )
