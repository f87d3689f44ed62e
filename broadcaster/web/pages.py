"""The public incident page every message links to: what happened, the timeline, when the
next update is due. It shows no customer data: anyone with the link may read it.

It is written in the reader's language (``?lang=``, else ``Accept-Language``, else
``messages.default_language``: :func:`~broadcaster.web.words.negotiate`). Its times are in
UTC, each a ``<time>`` that ``static/local-time.js`` rewrites into the reader's time zone."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from broadcaster.compose.context import Offer, describe_offers, format_amount, offers_of
from broadcaster.incidents import service
from broadcaster.store import Round
from broadcaster.web.api.schemas import IncidentId
from broadcaster.web.public import PUBLIC_HEADERS, SCRIPTED_HEADERS
from broadcaster.web.state import state_of
from broadcaster.web.words import Html, negotiate, say, word

router = APIRouter(tags=["public"])

STATIC = Path(__file__).resolve().parent / "static"
SCRIPT = "local-time.js"
"""The one script of the page (``broadcaster/web/static``): times in the reader's zone."""
STATUS = {"closed": "resolved"}
"""Statuses told as another (a closed incident reads "Resolved")."""


@router.get(f"/static/{SCRIPT}", include_in_schema=False)
async def local_time_script() -> Response:
    return Response(
        (STATIC / SCRIPT).read_bytes(),
        media_type="text/javascript; charset=utf-8",
        headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/incidents/{incident_id}", response_class=HTMLResponse)
async def incident_page(incident_id: IncidentId, request: Request) -> Response:
    state = state_of(request)
    lang = negotiate(
        request.query_params.get("lang"),
        request.headers.get("accept-language"),
        state.settings.messages.default_language,
    )
    headers = {**SCRIPTED_HEADERS, "Content-Language": lang, "Vary": "Accept-Language"}
    try:
        view = await service.show(state.database, incident_id)
    except LookupError:
        body = f"<p>{say(lang, 'no_such_incident')}</p>"
        headers["Content-Security-Policy"] = PUBLIC_HEADERS["Content-Security-Policy"]
        return HTMLResponse(_page(lang, word(lang, "not_found"), body, script=False), 404, headers)
    incident = view.incident
    async with state.database.session() as session:
        pending = (
            await session.execute(
                select(Round.due_at)
                .where(Round.incident_id == incident_id, Round.state == "pending")
                .order_by(Round.due_at)
                .limit(1)
            )
        ).scalar_one_or_none()
    entries = []
    for update in reversed(view.updates):
        if update.kind == "closed" or not update.message:
            continue
        cause = ""
        if update.cause and update.cause_kind in ("known", "suspected"):
            label = say(lang, "cause" if update.cause_kind == "known" else "suspected_cause")
            cause = f"<p><em>{label}:</em> {escape(update.cause)}</p>"
        extra = "".join(
            f"<p><em>{say(lang, label)}:</em> {escape(value)}</p>"
            for label, value in (
                ("actions", update.actions),
                ("workaround", update.workaround),
                ("remedy", update.remedy),
                ("prevention", update.prevention),
                (
                    "compensation",
                    update.compensation or _offers(lang, offers_of(update.compensation_offers)),
                ),
            )
            if value
        )
        kind = word(lang, f"entry.{update.kind}", update.kind)
        entries.append(
            f"<li><strong>{escape(kind)}</strong> {_time(update.created_at)}"
            f"<p>{escape(update.message)}</p>{cause}{extra}</li>"
        )
    scope = ", ".join((*view.components, *view.regions))
    next_update = (
        f"<p><strong>{say(lang, 'next_update', time=Html(_time(pending)))}</strong></p>"
        if pending is not None and incident.status not in ("resolved", "closed")
        else ""
    )
    status = STATUS.get(incident.status, incident.status)
    severity = word(lang, f"severity.{incident.severity}", incident.severity)
    told = Html(f"<strong>{escape(word(lang, f'status.{status}', status))}</strong>")
    body = (
        f"<p>{say(lang, 'status', status=told)}"
        + f" · {say(lang, 'severity', severity=severity)}"
        + (f" · {say(lang, 'affects', scope=scope)}" if scope else "")
        + "</p>"
        + next_update
        + f"<ol reversed>{''.join(entries)}</ol>"
        + f"<p><small>{escape(state.settings.messages.organisation)}</small></p>"
    )
    return HTMLResponse(_page(lang, incident.title, body), headers=headers)


def _time(when: datetime) -> str:
    """``when`` as a ``<time>``: its text UTC, its ``datetime`` the instant with its offset,
    which the page's script shows in the reader's own time zone."""
    when = when.astimezone(UTC)
    return (
        f'<time datetime="{escape(when.isoformat(timespec="seconds"))}" data-local>'
        f"{when:%Y-%m-%d %H:%M} UTC</time>"
    )


def _offers(lang: str, offers: Iterable[Offer]) -> str:
    """The compensation the rules granted, in the page's language (plain text)."""
    if lang == "en":
        return describe_offers(offers)
    parts = [
        word(lang, "offer").format(
            kind=word(lang, f"offer.{offer.kind}", offer.kind.replace("_", " ")),
            amount=format_amount(offer.amount, offer.currency, lang),
        )
        for offer in offers
    ]
    if len(parts) < 2:
        return "".join(parts)
    return f"{', '.join(parts[:-1])} {word(lang, 'offers_and')} {parts[-1]}"


def _page(lang: str, title: str, body: str, *, script: bool = True) -> str:
    return (
        f'<!doctype html><html lang="{escape(lang)}"><head><meta charset="utf-8">'
        f'<title>{escape(title)}</title><meta name="viewport" content="width=device-width">'
        f'<meta http-equiv="refresh" content="60">'
        + (f'<script src="../static/{SCRIPT}" defer></script>' if script else "")
        + "</head>"
        f'<body style="font-family:sans-serif;max-width:40em;margin:2em auto;line-height:1.5">'
        f"<h1>{escape(title)}</h1>{body}</body></html>"
    )
