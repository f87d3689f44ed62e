"""Typical values: what ``templates check`` and ``templates preview`` render with.

Realistic lengths matter: the SMS check asks whether a template fits its segment limit
with values like these.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from broadcaster.compose.context import IncidentFacts, Offer, Personal, StepFacts

SAMPLE_NOW = datetime(2026, 1, 6, 8, 0, tzinfo=UTC)


def sample_facts(kind: str, now: datetime = SAMPLE_NOW) -> IncidentFacts:
    resolved = kind == "resolution"
    return IncidentFacts(
        incident_id=1042,
        title="Card payments failing",
        severity="critical",
        status="resolved" if resolved else "identified",
        components=("payments",),
        regions=("nl-north",),
        summary="Card payments in the web shop and app fail for most customers.",
        cause_kind="known",
        cause="An expired certificate at our card processor.",
        actions="We are renewing the certificate with the processor.",
        workaround="Pay by bank transfer or iDEAL meanwhile.",
        expected_resolution_at=None if resolved else now + timedelta(hours=2),
        posted_at=now,
        next_update_at=None if resolved else now + timedelta(minutes=15),
        responsibility="Renewing certificates is our job, and we missed it." if resolved else None,
        regret="We are sorry: you could not pay when you needed to." if resolved else None,
        remedy="The certificate is renewed and payments work again." if resolved else None,
        prevention="Certificates now renew automatically, 30 days early." if resolved else None,
        # The rules' compensation (told in each language); an operator's own text
        # (``compensation``) would be told instead, as written.
        compensation=None,
        compensation_offers=(Offer("credit", "5.00", "EUR", "long-outage-credit"),)
        if resolved
        else (),
        # A step's staff notice: the example rules' critical policy tells the duty managers
        # as it enters its second step, at 2 hours; read some minutes later.
        opened_at=now - timedelta(hours=2, minutes=7) if kind == "incident_step" else None,
        escalation_step=StepFacts(2, 2, "critical", timedelta(hours=2))
        if kind == "incident_step"
        else None,
    )


def sample_personal(name: str = "Anna de Vries") -> Personal:
    return Personal(
        name=name,
        unsubscribe_url="https://status.example.org/u/sample-token",
        preferences_url="https://status.example.org/preferences/sample-token",
    )


SAMPLE_FOLLOWUP: dict[str, Any] = {
    "owner": "Pieter Bakker",
    "kind": "call",
    "deadline": "10:00 CET",
}
SAMPLE_TASK: dict[str, Any] = {
    # An escalation, the longest of the notices (an assignment and a reminder leave out
    # the owner's sentence): the SMS check measures the longest.
    "customer": "Anna de Vries",
    "deadline": "09:00 UTC",
    "kind": "call",
    "incident": "Card payments failing",
    "id": 318,
    "notice": "escalation",
    "overdue": True,
    "owner": "Pieter Bakker",
    "owner_id": "pieter",
    "addresses": ["+31612345678", "anna@example.nl"],
    "language": "nl",
    "language_name": "Dutch",
    "timezone": "Europe/Amsterdam",
    "local_deadline": "10:00 CET",
    "incidents": 3,
    "window_count": 30,
    "window_unit": "day",
    "tier": "vip",
    "postal_address": ["Keizersgracht 123", "1015 CJ Amsterdam"],
    "staff_timezone": "UTC",
    "console": "https://status.example.org/console/followups",
    "claim_command": None,
    "done_command": "broadcaster followups done 318 --as maria",
    "contact": "+31612345678, anna@example.nl; they read Dutch (nl); their time zone is "
    "Europe/Amsterdam, where the deadline is 10:00 CET",
    "history": "3 incidents affected them in the last 30 days; tier vip",
    "what_to_say": "Apologise, explain the cause, offer the EUR 5 credit.",
}
SAMPLE_VISIT_TASK: dict[str, Any] = {
    **SAMPLE_TASK,
    "kind": "visit",
    "what_to_say": "Visit in person about 'Card payments failing'.",
}
"""A visit, whose notice also says where to go (the postal address): the longest SMS of a
task, which the check measures too."""
SAMPLE_TASKS: tuple[dict[str, Any], ...] = (SAMPLE_TASK, SAMPLE_VISIT_TASK)
"""The tasks ``templates check`` renders a ``followup_task`` with."""
