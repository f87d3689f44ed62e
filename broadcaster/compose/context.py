"""What a template may say: the variables, built from the store's facts and nothing else.

Every kind gets every top-level variable (``None`` where it does not apply) so a template
can test for it; :class:`~jinja2.StrictUndefined` catches any other name. The documented
list is :data:`VARIABLES`; ``broadcaster templates check`` lints templates against it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Final, NamedTuple

from babel.dates import format_timedelta
from babel.lists import format_list
from babel.numbers import format_currency

from broadcaster.compose.locale import format_when, locale

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
        "offers",
    ),
    "next_update": (),
    "links": ("incident", "unsubscribe", "preferences"),
    "followup": ("owner", "kind", "deadline"),
    "task": (
        "customer",
        "deadline",
        "kind",
        "incident",
        "id",
        "notice",
        "overdue",
        "owner",
        "owner_id",
        "addresses",
        "language",
        "language_name",
        "timezone",
        "local_deadline",
        "incidents",
        "window_count",
        "window_unit",
        "tier",
        "postal_address",
        "staff_timezone",
        "console",
        "claim_command",
        "done_command",
        # English sentences made of the above, for templates written before them:
        "contact",
        "history",
        "what_to_say",
    ),
    "step": (
        "number",
        "steps",
        "policy",
        "after",
        "open_for",
        "open_minutes",
        "opened_at",
        "started_at",
        "console",
    ),
}
APOLOGY_ELEMENTS: Final = ("responsibility", "regret", "remedy", "cause", "prevention")
PERSONAL: Final = ("customer.name", "links.unsubscribe", "links.preferences")


class Offer(NamedTuple):
    """A compensation the rules granted at the resolution, as the store keeps it
    (``incident_updates.compensation_offers``): the amount is the decimal as the rules wrote
    it (``"10.00"``), never a float; the words are the templates', in each customer's
    language."""

    kind: str
    amount: str
    currency: str
    rule: str = ""

    def as_json(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "amount": self.amount,
            "currency": self.currency,
            "rule": self.rule,
        }


def offers_of(stored: object) -> tuple[Offer, ...]:
    """The offers of a stored ``compensation_offers`` value (None: none). An entry that is
    not an offer (a hand-edited row) is left out rather than failing every message."""
    if not isinstance(stored, list):
        return ()
    out = []
    for item in stored:
        if isinstance(item, dict) and all(
            isinstance(item.get(k), str) and item[k] for k in ("kind", "amount", "currency")
        ):
            rule = item.get("rule")
            out.append(
                Offer(
                    item["kind"],
                    item["amount"],
                    item["currency"],
                    rule if isinstance(rule, str) else "",
                )
            )
    return tuple(out)


def format_amount(amount: str, currency: str, language: str) -> str:
    """``10.00`` ``EUR`` as a reader of ``language`` writes it: ``€10.00`` (en), ``€ 10,00``
    (nl, with a no-break space); the amount and code as they are when they are not a
    number Babel can write (or one no one would write out: ``1E+999999``)."""
    try:
        value = Decimal(amount)
        if not value.is_finite() or abs(value.adjusted()) > 30:
            raise InvalidOperation
        return str(format_currency(value, currency, locale=locale(language)))
    except (InvalidOperation, ValueError, KeyError, TypeError):
        return f"{amount} {currency}"


_ARTICLE_VOWELS: Final = tuple("aeiou")


def describe_offers(offers: Iterable[Offer], *, rules: bool = False) -> str:
    """The offers in English, as staff read them (the console, the public page):
    ``a credit of €10.00 and a voucher of €5.00``; with ``rules``, each followed by the rule
    that granted it. The customers' messages say it in their language (the templates'
    ``offers`` macro)."""
    parts = []
    for offer in offers:
        kind = offer.kind.replace("_", " ")
        article = "an" if kind.lower().startswith(_ARTICLE_VOWELS) else "a"
        text = f"{article} {kind} of {format_amount(offer.amount, offer.currency, 'en')}"
        parts.append(f"{text} (rule {offer.rule})" if rules and offer.rule else text)
    if len(parts) < 2:
        return "".join(parts)
    return f"{', '.join(parts[:-1])} and {parts[-1]}"


class StepFacts(NamedTuple):
    """The escalation step an incident entered, from its stored plan: what a step's staff
    notice (``incident_step``) says of it."""

    number: int
    """Its place in the policy's ladder, 1 for the first."""
    steps: int
    """How many steps the ladder has."""
    policy: str
    after: timedelta
    """The incident's age at which the step starts."""


def format_span(span: timedelta, language: str) -> str:
    """A duration in words, to the minute, as a reader of ``language`` says it: "2 hours
    and 7 minutes", "2 uur en 7 minuten", "1 day, 4 hours, and 20 minutes"; "0 minutes"
    under one."""
    minutes = max(int(span.total_seconds() // 60), 0)
    where = locale(language)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    # Each part in its own unit: a threshold of the count itself keeps Babel from rounding
    # into a larger one ("10 days", not "1 week"; "23 hours", not "1 day").
    parts = [
        str(format_timedelta(timedelta(minutes=count * size), threshold=count, locale=where))
        for count, size in ((days, 24 * 60), (hours, 60), (minutes, 1))
        if count
    ]
    if not parts:
        return str(format_timedelta(timedelta(0), granularity="minute", locale=where))
    return str(format_list(parts, locale=where))


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
    """The operator's own words (in the operator's language), as written."""
    compensation_offers: tuple[Offer, ...] = ()
    """What the rules granted when the operator wrote no compensation: told in each
    customer's language (``resolution.offers``)."""
    opened_at: datetime | None = None
    """When the incident was declared (a step's staff notice says how long it has been
    open); None where no template needs it."""
    escalation_step: StepFacts | None = None
    """The escalation step the incident entered (a step's staff notice); None when not
    known."""


class Personal(NamedTuple):
    """The personal values of one customer's message (one per delivery: a named tuple,
    immutable and cheaper to build than a frozen dataclass)."""

    name: str
    unsubscribe_url: str
    preferences_url: str


def incident_url(public_url: str, incident_id: int) -> str:
    return f"{public_url.rstrip('/')}/incidents/{incident_id}"


def console_incident_url(public_url: str, incident_id: int) -> str:
    """The incident's page on the staff console."""
    return f"{public_url.rstrip('/')}/console/incidents/{incident_id}"


def step_context(
    facts: IncidentFacts,
    *,
    public_url: str,
    language: str,
    now: datetime,
    timezone: str = "UTC",
) -> dict[str, Any]:
    """The ``step`` of an escalation step's staff notice (``incident_step``): the step,
    when known, how long the incident has been open, in words of ``language``, and when it
    was opened and the step began, in ``timezone`` (the recipient's)."""
    step = facts.escalation_step
    opened = facts.opened_at
    open_for = None if opened is None else max(now - opened, timedelta(0))
    started = None if opened is None or step is None else opened + step.after
    return {
        "number": None if step is None else step.number,
        "steps": None if step is None else step.steps,
        "policy": None if step is None else step.policy,
        "after": None if step is None else format_span(step.after, language),
        "open_for": None if open_for is None else format_span(open_for, language),
        "open_minutes": None if open_for is None else int(open_for.total_seconds() // 60),
        "opened_at": None if opened is None else format_when(opened, timezone, language, now),
        "started_at": None if started is None else format_when(started, timezone, language, now),
        "console": console_incident_url(public_url, facts.incident_id),
    }


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
            "offers": [
                {
                    "kind": offer.kind,
                    "amount": format_amount(offer.amount, offer.currency, language),
                    "currency": offer.currency,
                }
                for offer in facts.compensation_offers
            ],
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
        "step": step_context(
            facts, public_url=public_url, language=language, now=now, timezone=timezone
        )
        if kind == "incident_step"
        else None,
    }


def _with_times(
    values: dict[str, Any] | None, when: Callable[[datetime | None], str | None]
) -> dict[str, Any] | None:
    """``values`` with each time in it written out (in the message's language and the
    customer's zone), so that a caller may hand over the datetime itself."""
    if values is None:
        return None
    return {k: when(v) if isinstance(v, datetime) else v for k, v in values.items()}
