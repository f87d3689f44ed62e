"""What a template may say: the variables, built from the store's facts and nothing else.

Every kind gets every top-level variable (``None`` where it does not apply) so a template
can test for it; :class:`~jinja2.StrictUndefined` catches any other name. The documented
list is :data:`VARIABLES`; ``broadcaster templates check`` lints templates against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, NamedTuple

from broadcaster.compose.locale import format_when

VARIABLES: Final[dict[str, tuple[str, ...]]] = {
    "org": (),
    "kind": (),
    "customer": ("name",),
    "incident": ("id", "title", "severity", "status", "components", "regions"),
    "update": (
        "summary",
        "cause_kind",
        "cause",
        "actions",
        "workaround",
        "expected_resolution",
        "posted_at",
    ),
    "resolution": (
        "responsibility",
        "regret",
        "remedy",
        "cause",
        "cause_kind",
        "prevention",
        "compensation",
    ),
    "next_update": (),
    "links": ("incident", "unsubscribe", "preferences"),
    "followup": ("owner", "kind", "deadline"),
    "task": ("customer", "contact", "history", "what_to_say", "deadline", "kind", "incident"),
}
APOLOGY_ELEMENTS: Final = ("responsibility", "regret", "remedy", "cause", "prevention")
PERSONAL: Final = ("customer.name", "links.unsubscribe", "links.preferences")


@dataclass(frozen=True)
class IncidentFacts:
    """One round's content: the incident and the timeline entry it carries."""

    incident_id: int
    title: str
    severity: str
    status: str
    components: tuple[str, ...]
    regions: tuple[str, ...]
    summary: str
    cause_kind: str
    cause: str | None
    actions: str | None
    workaround: str | None
    expected_resolution_at: datetime | None
    posted_at: datetime
    next_update_at: datetime | None
    responsibility: str | None = None
    regret: str | None = None
    remedy: str | None = None
    prevention: str | None = None
    compensation: str | None = None


class Personal(NamedTuple):
    """The personal values of one customer's message (one per delivery: a named tuple,
    immutable and cheaper to build than a frozen dataclass)."""

    name: str
    unsubscribe_url: str
    preferences_url: str


def incident_url(public_url: str, incident_id: int) -> str:
    return f"{public_url.rstrip('/')}/incidents/{incident_id}"


def build_context(
    kind: str,
    facts: IncidentFacts,
    *,
    organisation: str,
    public_url: str,
    language: str,
    timezone: str,
    now: datetime,
    personal: Personal,
    followup: dict[str, Any] | None = None,
    task: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The template variables for one customer (language and zone shape the times)."""

    def when(value: datetime | None, *, ahead: bool = True) -> str | None:
        if value is None:
            return None
        return format_when(value, timezone, language, now, ahead=ahead)

    resolution = None
    if kind == "resolution":
        # A cause is told as what happened only when staff know or suspect it (and say
        # which: ``cause_kind``); an unknown cause's old text is not stated as fact.
        told = facts.cause if facts.cause_kind in ("known", "suspected") else None
        resolution = {
            "responsibility": facts.responsibility,
            "regret": facts.regret,
            "remedy": facts.remedy,
            "cause": told,
            "cause_kind": facts.cause_kind,
            "prevention": facts.prevention,
            "compensation": facts.compensation,
        }
    return {
        "org": organisation,
        "kind": kind,
        "customer": {"name": personal.name},
        "incident": {
            "id": facts.incident_id,
            "title": facts.title,
            "severity": facts.severity,
            "status": facts.status,
            "components": list(facts.components),
            "regions": list(facts.regions),
        },
        "update": {
            "summary": facts.summary,
            "cause_kind": facts.cause_kind,
            "cause": facts.cause,
            "actions": facts.actions,
            "workaround": facts.workaround,
            # Once past, no longer a promise to repeat ("resolved by 11:00" at 12:30).
            "expected_resolution": when(facts.expected_resolution_at)
            if facts.expected_resolution_at is not None and facts.expected_resolution_at > now
            else None,
            "posted_at": when(facts.posted_at, ahead=False),
        },
        "resolution": resolution,
        "next_update": None if kind == "resolution" else when(facts.next_update_at),
        "links": {
            "incident": incident_url(public_url, facts.incident_id),
            "unsubscribe": personal.unsubscribe_url,
            "preferences": personal.preferences_url,
        },
        "followup": _with_times(followup, when),
        "task": task,
    }


def _with_times(
    values: dict[str, Any] | None, when: Callable[[datetime | None], str | None]
) -> dict[str, Any] | None:
    """``values`` with each time in it written out (in the message's language and the
    customer's zone), so that a caller may hand over the datetime itself."""
    if values is None:
        return None
    return {k: when(v) if isinstance(v, datetime) else v for k, v in values.items()}
