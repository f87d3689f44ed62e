"""Who an incident has not reached, in the console: the figures and the first customers on
the incident's page, every one of them a page at a time on its own
(:mod:`broadcaster.unreached`). The customers are shown to operators; viewers see the
figures."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import Request, Response

from broadcaster import unreached
from broadcaster.access.credentials import Principal
from broadcaster.access.roles import allows
from broadcaster.incidents.service import IncidentNotFound
from broadcaster.web.api.schemas import IncidentId
from broadcaster.web.console.common import LIST_LIMIT, error_page, render, router, stoppable, who
from broadcaster.web.state import WebState, state_of

ON_INCIDENT_PAGE = 50
"""Customers not reached the incident's page shows; its link pages them all."""


async def unreached_context(
    state: WebState, principal: Principal, incident_id: int
) -> dict[str, Any]:
    """The incident page's figures and, for an operator, its first customers not reached.
    Read when the page is loaded, not with its live part every few seconds: on an incident
    of a million deliveries the count reads them all."""
    counts, page = await unreached.unreached_report(
        state.database,
        incident_id,
        limit=ON_INCIDENT_PAGE,
        customers=allows(principal.role, "operator"),
    )
    return {"unreached": counts, "unreached_page": page}


def _query(request: Request) -> tuple[str | None, unreached.Only | None]:
    """The page's cursor and filter; a bad one is refused, naming it."""
    after = request.query_params.get("after") or None
    only = request.query_params.get("only") or None
    unreached.check_page(after, LIST_LIMIT, only)
    return after, unreached.only_of(only)


@router.get("/incidents/{incident_id}/unreached")
@stoppable
async def unreached_list(incident_id: IncidentId, request: Request) -> Response:
    principal = await who(request, "viewer")
    state = state_of(request)
    try:
        after, only = _query(request)
    except ValueError as exc:
        raise error_page(request, principal, 422, str(exc)) from None
    try:
        counts, page = await unreached.unreached_report(
            state.database,
            incident_id,
            after=after,
            limit=LIST_LIMIT,
            only=only,
            customers=allows(principal.role, "operator"),
        )
    except IncidentNotFound:
        raise error_page(request, principal, 404, f"There is no incident {incident_id}.") from None
    return render(
        request,
        "unreached.html",
        principal,
        incident_id=incident_id,
        unreached=counts,
        unreached_page=page,
        only=only,
        after=after,
        filters=unreached.ONLY,
        next_href=(
            f"/console/incidents/{incident_id}/unreached?after={quote(page.next_after, safe='')}"
            + (f"&only={only}" if only else "")
            if page.next_after is not None
            else None
        ),
    )
