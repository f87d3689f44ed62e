"""Rendering one message for one customer: their name, language and time zone.

Times are shown in the customer's zone, with the date when it is not today there.
Staff text is escaped in the HTML part. The "next update by" promise is in every
message except the resolution.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from broadcaster.compose.texts import TEXTS
from channels.base import Message


@dataclass(frozen=True)
class MessageContext:
    """Everything a message may say; filled from the store, nothing invented."""

    kind: str  # first | update | no_news | resolution
    incident_id: int
    title: str
    severity: str
    status: str
    update_message: str
    update_at: datetime
    cause_kind: str
    cause: str | None
    next_update_at: datetime | None
    customer_name: str
    language: str
    timezone: str
    public_url: str
    organisation: str
    now: datetime


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def local_time(when: datetime, zone_name: str, now: datetime) -> str:
    """``14:30 CET``, or ``Tue 6 Jan 14:30 CET`` when not today; seconds for sub-minute times."""
    zone = _zone(zone_name)
    local = when.astimezone(zone)
    clock = local.strftime("%H:%M:%S" if local.second else "%H:%M")
    label = local.tzname() or zone_name
    if local.date() != now.astimezone(zone).date():
        return f"{local.strftime('%a')} {local.day} {local.strftime('%b')} {clock} {label}"
    return f"{clock} {label}"


def _texts(language: str) -> dict[str, str]:
    base = language.split("-")[0].lower()
    return TEXTS.get(base) or TEXTS["en"]


def incident_url(public_url: str, incident_id: int) -> str:
    return f"{public_url.rstrip('/')}/incidents/{incident_id}"


def compose(ctx: MessageContext, idempotency_key: str = "") -> Message:
    """The message for one customer, as text and HTML."""
    t = _texts(ctx.language)
    fields = {
        "title": ctx.title,
        "name": ctx.customer_name,
        "severity_label": t.get(f"severity.{ctx.severity}", ctx.severity),
        "organisation": ctx.organisation,
    }
    subject = t[f"subject.{ctx.kind}"].format(**fields)
    paragraphs: list[str] = [t[f"lead.{ctx.kind}"].format(**fields)]
    if ctx.kind == "no_news":
        when = local_time(ctx.update_at, ctx.timezone, ctx.now)
        paragraphs.append(t["latest"].format(when=when) + "\n" + ctx.update_message)
    else:
        paragraphs.append(ctx.update_message)
    status = t.get(f"status.{ctx.status}", ctx.status)
    cause = (
        t["cause.unknown"]
        if ctx.cause_kind == "unknown" or not ctx.cause
        else t[f"cause.{ctx.cause_kind}"].format(cause=ctx.cause)
    )
    paragraphs.append(t["status"].format(status=status) + " " + cause)
    if ctx.kind == "resolution":
        paragraphs.append(t["apology"])
    elif ctx.next_update_at is not None:
        when = local_time(ctx.next_update_at, ctx.timezone, ctx.now)
        paragraphs.append(t["promise"].format(when=when))
    url = incident_url(ctx.public_url, ctx.incident_id)
    paragraphs.append(t["link"].format(url=url))
    greeting = t["greeting"].format(**fields)
    sign = t["sign"].format(**fields)
    text = "\n\n".join([greeting, *paragraphs, sign]) + "\n"
    body = "".join(
        f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>\n" for p in [greeting, *paragraphs]
    )
    page = (
        f'<!doctype html>\n<html lang="{html.escape(ctx.language)}"><body>\n{body}'
        f'<p><a href="{html.escape(url)}">{html.escape(url)}</a></p>\n'
        f"<p>{html.escape(sign)}</p>\n</body></html>\n"
    )
    return Message(
        subject=subject,
        text=text,
        html=page,
        idempotency_key=idempotency_key,
        created_at=ctx.now,
    )
