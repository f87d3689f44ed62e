"""A Statuspage-compatible read API (``/api/v2/*.json``), so status tools, dashboards and
aggregators that read Atlassian Statuspage pages can read ours.

The shapes follow Statuspage's public v2 API: ``page``, ``incidents`` with
``incident_updates``, ``components``, ``status`` (indicator and description). Impact is the
severity; ``closed`` shows as ``resolved``. Components are those our incidents have named;
their status comes from the worst open incident affecting them. No customer data.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import case, func, select

from broadcaster.incidents.lifecycle import OPEN_STATUSES
from broadcaster.store import Incident, IncidentScope, IncidentUpdate
from broadcaster.web.state import WebState, state_of

router = APIRouter(prefix="/api/v2", tags=["statuspage"])

RECENT = 50
_RANK = {"minor": 1, "major": 2, "critical": 3}
_COMPONENT_STATUS = {
    0: "operational",
    1: "degraded_performance",
    2: "partial_outage",
    3: "major_outage",
}
_INDICATOR = {0: "none", 1: "minor", 2: "major", 3: "critical"}
_DESCRIPTION = {
    0: "All Systems Operational",
    1: "Minor Service Outage",
    2: "Partial System Outage",
    3: "Major System Outage",
}


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _page_id(web: WebState) -> str:
    return (
        re.sub(r"[^a-z0-9]+", "-", web.settings.messages.organisation.lower()).strip("-") or "page"
    )


def _page(web: WebState, updated: datetime | None) -> dict[str, Any]:
    return {
        "id": _page_id(web),
        "name": web.settings.messages.organisation,
        "url": web.settings.messages.public_url.rstrip("/"),
        "time_zone": "Etc/UTC",
        "updated_at": _time(updated or web.clock.now()),
    }


def _status(incident: Incident) -> str:
    return "resolved" if incident.status == "closed" else incident.status


async def _incidents(web: WebState, *, unresolved: bool) -> list[dict[str, Any]]:
    query = select(Incident).order_by(Incident.created_at.desc(), Incident.id.desc()).limit(RECENT)
    if unresolved:
        query = query.where(Incident.status.in_(OPEN_STATUSES))
    base = web.settings.messages.public_url.rstrip("/")
    page_id = _page_id(web)
    async with web.database.session() as session:
        incidents = list((await session.execute(query)).scalars())
        ids = [i.id for i in incidents]
        updates: dict[int, list[IncidentUpdate]] = {i: [] for i in ids}
        scopes: dict[int, list[str]] = {i: [] for i in ids}
        if ids:
            for update in (
                await session.execute(
                    select(IncidentUpdate)
                    .where(IncidentUpdate.incident_id.in_(ids), IncidentUpdate.message != "")
                    .order_by(IncidentUpdate.id.desc())
                )
            ).scalars():
                updates[update.incident_id].append(update)
            for incident_id, value in await session.execute(
                select(IncidentScope.incident_id, IncidentScope.value)
                .where(IncidentScope.incident_id.in_(ids), IncidentScope.kind == "component")
                .order_by(IncidentScope.id)
            ):
                scopes[incident_id].append(value)
    ranks = await _ranks(web) if incidents else {}
    out = []
    for incident in incidents:
        monitoring = next(
            (u.created_at for u in reversed(updates[incident.id]) if u.status == "monitoring"),
            None,
        )
        out.append(
            {
                "id": str(incident.id),
                "name": incident.title,
                "status": _status(incident),
                "created_at": _time(incident.created_at),
                "updated_at": _time(incident.updated_at),
                "monitoring_at": _time(monitoring),
                "resolved_at": _time(incident.resolved_at),
                "impact": incident.severity,
                "shortlink": f"{base}/incidents/{incident.id}",
                "started_at": _time(incident.created_at),
                "page_id": page_id,
                "incident_updates": [
                    {
                        "id": str(u.id),
                        "status": "resolved" if u.status == "closed" else u.status,
                        "body": u.message,
                        "incident_id": str(incident.id),
                        "created_at": _time(u.created_at),
                        "updated_at": _time(u.created_at),
                        "display_at": _time(u.created_at),
                        "affected_components": None,
                        "deliver_notifications": True,
                    }
                    for u in updates[incident.id]
                ],
                "components": [
                    _component(web, name, ranks.get(name, 0)) for name in scopes[incident.id]
                ],
            }
        )
    return out


def _component(web: WebState, name: str, rank: int) -> dict[str, Any]:
    return {
        "id": name,
        "name": name,
        "status": _COMPONENT_STATUS[rank],
        "page_id": _page_id(web),
        "group_id": None,
        "group": False,
        "only_show_if_degraded": False,
        "showcase": True,
        "description": None,
        "position": 0,
    }


async def _ranks(web: WebState) -> dict[str, int]:
    """Each component our incidents named → the rank of the worst open incident on it."""
    # Worked out by the store, one row a component: a public, unauthenticated page must not
    # bring every incident scope ever written into the daemon at each call.
    rank = case(
        (Incident.status.not_in(OPEN_STATUSES), 0),
        *((Incident.severity == severity, value) for severity, value in _RANK.items()),
        else_=1,
    )
    async with web.database.session() as session:
        rows = await session.execute(
            select(IncidentScope.value, func.max(rank))
            .join(Incident, Incident.id == IncidentScope.incident_id)
            .where(IncidentScope.kind == "component")
            .group_by(IncidentScope.value)
        )
        return {value: int(worst) for value, worst in rows}


async def _components(web: WebState) -> list[dict[str, Any]]:
    worst = await _ranks(web)
    components = [_component(web, name, rank) for name, rank in sorted(worst.items())]
    for position, component in enumerate(components, start=1):
        component["position"] = position
    return components


def _overall(incidents: list[dict[str, Any]]) -> dict[str, str]:
    rank = max((_RANK.get(i["impact"], 1) for i in incidents), default=0)
    return {"indicator": _INDICATOR[rank], "description": _DESCRIPTION[rank]}


@router.get("/incidents.json", summary="The 50 most recent incidents (Statuspage format)")
async def incidents(request: Request) -> dict[str, Any]:
    web = state_of(request)
    items = await _incidents(web, unresolved=False)
    stamps = [datetime.fromisoformat(i["updated_at"]) for i in items if i["updated_at"]]
    return {"page": _page(web, max(stamps, default=None)), "incidents": items}


@router.get("/incidents/unresolved.json", summary="Open incidents (Statuspage format)")
async def unresolved(request: Request) -> dict[str, Any]:
    web = state_of(request)
    return {"page": _page(web, None), "incidents": await _incidents(web, unresolved=True)}


@router.get("/components.json", summary="Components and their status (Statuspage format)")
async def components(request: Request) -> dict[str, Any]:
    web = state_of(request)
    return {"page": _page(web, None), "components": await _components(web)}


@router.get("/status.json", summary="The overall indicator (Statuspage format)")
async def status(request: Request) -> dict[str, Any]:
    web = state_of(request)
    return {"page": _page(web, None), "status": _overall(await _incidents(web, unresolved=True))}


@router.get("/summary.json", summary="Page, components, open incidents, status (Statuspage format)")
async def summary(request: Request) -> dict[str, Any]:
    web = state_of(request)
    open_incidents = await _incidents(web, unresolved=True)
    return {
        "page": _page(web, None),
        "components": await _components(web),
        "incidents": open_incidents,
        "scheduled_maintenances": [],
        "status": _overall(open_incidents),
    }
