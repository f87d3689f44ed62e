"""The facts rules look at: one incident, optionally one customer. Frozen and validated, so a
``Decision`` can be computed from any facts that could be constructed.

Times are timezone-aware datetimes, kept in UTC; the daemon fills these from its store,
``rules`` never reads one. An incident's *age* is not a fact here: it depends on ``now``,
which the caller passes to the evaluation (``(resolved_at or now) - started_at``, never
negative).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

SEVERITIES: Final = ("minor", "major", "critical")
"""Ordered from least to most severe: ``severity: {gte: major}`` compares by this order."""
STATUSES: Final = ("investigating", "identified", "monitoring", "resolved", "closed")
"""What an incident's facts accept: every status of the incident's life."""
SEEN_AS: Final = {"closed": "resolved"}
"""Statuses the rules see as another: a closed incident is a resolved one made final, so its
facts say ``resolved`` (a rule for resolved incidents goes on matching it, and its decision
does not change when it is closed)."""
MATCHABLE_STATUSES: Final = tuple(status for status in STATUSES if status not in SEEN_AS)
"""The statuses a rule's ``incident.status`` may name: an incident's facts never hold the
others."""


def _aware(name: str, value: object) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got the naive {value.isoformat()}")
    return value


def _utc(name: str, value: object) -> datetime:
    """An aware time in UTC. Facts keep UTC because Python compares and subtracts two times
    of the *same* zone by their wall clocks, which is an hour off across a DST change."""
    try:
        return _aware(name, value).astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{name} is outside the range of UTC times") from None


def _strings(name: str, values: Iterable[str]) -> frozenset[str]:
    if isinstance(values, str):
        raise TypeError(f"{name} must be a collection of strings, not one string {values!r}")
    out = frozenset(values)
    if not all(isinstance(v, str) for v in out):
        raise TypeError(f"{name} must hold strings only")
    return out


@dataclass(frozen=True)
class IncidentFacts:
    """What is known about an incident when rules are evaluated."""

    severity: str
    status: str
    started_at: datetime
    components: frozenset[str] = frozenset()
    regions: frozenset[str] = frozenset()
    source: str = "operator"
    labels: Mapping[str, str] = field(default_factory=dict)
    affected_customers: int = 0
    resolved_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}: {self.severity!r}")
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}: {self.status!r}")
        object.__setattr__(self, "status", SEEN_AS.get(self.status, self.status))
        object.__setattr__(self, "started_at", _utc("started_at", self.started_at))
        if self.resolved_at is not None:
            object.__setattr__(self, "resolved_at", _utc("resolved_at", self.resolved_at))
            if self.resolved_at < self.started_at:
                raise ValueError("resolved_at is before started_at")
        if isinstance(self.affected_customers, bool) or not isinstance(
            self.affected_customers, int
        ):
            raise TypeError("affected_customers must be an int")
        if self.affected_customers < 0:
            raise ValueError("affected_customers cannot be negative")
        labels = dict(self.labels)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise TypeError("labels must map strings to strings")
        object.__setattr__(self, "components", _strings("components", self.components))
        object.__setattr__(self, "regions", _strings("regions", self.regions))
        object.__setattr__(self, "labels", MappingProxyType(labels))

    def __hash__(self) -> int:
        return hash(
            (
                self.severity,
                self.status,
                self.started_at,
                self.components,
                self.regions,
                self.source,
                frozenset(self.labels.items()),
                self.affected_customers,
                self.resolved_at,
            )
        )

    def age(self, now: datetime) -> timedelta:
        """How long the incident has lasted at ``now`` (until its resolution, if resolved)."""
        end = self.resolved_at if self.resolved_at is not None else _aware("now", now)
        return max(end - self.started_at, timedelta(0))


@dataclass(frozen=True)
class CustomerFacts:
    """What is known about one affected customer.

    ``incident_history`` holds the start times of the incidents that affected the customer,
    the current one included; ``customer.incidents: {within: 30d, ...}`` counts those in the
    window ending at ``now``. The daemon need not pass more than ``RuleSet.history_window``.
    ``timezone`` is an IANA name; quiet hours are read in it.
    """

    id: str
    tier: str = "standard"
    tags: frozenset[str] = frozenset()
    language: str = "en"
    region: str | None = None
    timezone: str = "UTC"
    incident_history: tuple[datetime, ...] = ()
    open_followups: int = 0
    sla: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", _strings("tags", self.tags))
        history = tuple(_utc("incident_history", when) for when in self.incident_history)
        object.__setattr__(self, "incident_history", history)
        if isinstance(self.open_followups, bool) or not isinstance(self.open_followups, int):
            raise TypeError("open_followups must be an int")
        if self.open_followups < 0:
            raise ValueError("open_followups cannot be negative")
        zone(self.timezone)

    def incidents_within(self, window: timedelta, now: datetime) -> int:
        """How many incidents of the history started in ``[now - window, now]``."""
        try:
            now = _aware("now", now).astimezone(UTC)
            start = now - window
        except OverflowError:  # at the ends of the calendar: count what is not in the future
            return sum(1 for when in self.incident_history if when <= now)
        return sum(1 for when in self.incident_history if start <= when <= now)


def zone(name: str) -> ZoneInfo:
    """The time zone of an IANA name; ``ValueError`` when there is none by that name."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc
