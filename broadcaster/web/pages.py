"""The public incident page every message links to: what happened, the timeline, when the
next update is due. It shows no customer data: anyone with the link may read it."""

from __future__ import annotations

from html import escape

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from broadcaster.compose.context import describe_offers, offers_of
from broadcaster.incidents import service
from broadcaster.store import Round
from broadcaster.web.api.schemas import IncidentId
from broadcaster.web.public import PUBLIC_HEADERS
from broadcaster.web.state import state_of

router = APIRouter(tags=["public"])

STATUS = {
    "investigating": "Investigating",
    "identified": "Cause identified, fix under way",
    "monitoring": "Fix applied, monitoring",
    "resolved": "Resolved",
    "closed": "Resolved",
}
KIND = {"declared": "Reported", "update": "Update", "reopened": "Reopened", "resolved": "Resolved"}


@router.get("/incidents/{incident_id}", response_class=HTMLResponse)
async def incident_page(incident_id: IncidentId, request: Request) -> Response:
    state = state_of(request)
    try:
        view = await service.show(state.database, incident_id)
    except LookupError:
        return HTMLResponse(
            _page("Not found", "<p>There is no such incident.</p>"), 404, dict(PUBLIC_HEADERS)
        )
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
            label = "Cause" if update.cause_kind == "known" else "Suspected cause"
            cause = f"<p><em>{label}:</em> {escape(update.cause)}</p>"
        extra = "".join(
            f"<p><em>{label}:</em> {escape(value)}</p>"
            for label, value in (
                ("What we are doing", update.actions),
                ("What you can do meanwhile", update.workaround),
                ("What we did to put it right", update.remedy),
                ("So it does not happen again", update.prevention),
                # The page is in English: the rules' compensation told in English words.
                (
                    "To make up for it",
                    update.compensation or describe_offers(offers_of(update.compensation_offers)),
                ),
            )
            if value
        )
        entries.append(
            f"<li><strong>{escape(KIND.get(update.kind, update.kind))}</strong> "
            f'<time datetime="{update.created_at.isoformat()}">'
            f"{update.created_at:%Y-%m-%d %H:%M} UTC</time>"
            f"<p>{escape(update.message)}</p>{cause}{extra}</li>"
        )
    scope = ", ".join(escape(v) for v in (*view.components, *view.regions))
    next_update = (
        f"<p><strong>Next update by {pending:%Y-%m-%d %H:%M} UTC.</strong></p>"
        if pending is not None and incident.status not in ("resolved", "closed")
        else ""
    )
    body = (
        f"<p>Status: <strong>{escape(STATUS.get(incident.status, incident.status))}</strong>"
        f" · severity {escape(incident.severity)}"
        + (f" · affects {scope}" if scope else "")
        + "</p>"
        + next_update
        + f"<ol reversed>{''.join(entries)}</ol>"
        + f"<p><small>{escape(state.settings.messages.organisation)}</small></p>"
    )
    return HTMLResponse(_page(incident.title, body), headers=dict(PUBLIC_HEADERS))


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}'
        f'</title><meta name="viewport" content="width=device-width">'
        f'<meta http-equiv="refresh" content="60"></head>'
        f'<body style="font-family:sans-serif;max-width:40em;margin:2em auto;line-height:1.5">'
        f"<h1>{escape(title)}</h1>{body}</body></html>"
    )
