"""``/api/v1/incidents/{id}/unreached``: the customers an incident has not reached, a page
of them with the counts (:mod:`broadcaster.unreached`)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from broadcaster import unreached
from broadcaster.access.credentials import Principal
from broadcaster.access.roles import allows
from broadcaster.incidents.service import IncidentNotFound
from broadcaster.web.api.schemas import IncidentId, Page
from broadcaster.web.auth import require
from broadcaster.web.errors import AUTHENTICATED, ApiError, responses
from broadcaster.web.state import state_of

router = APIRouter(prefix="/api/v1/incidents", tags=["incidents"], responses=AUTHENTICATED)

Viewer = Annotated[Principal, Depends(require("viewer"))]


class ChannelOutcomeOut(BaseModel):
    channel: str
    state: str = Field(description="its latest delivery's state on this channel")
    delivery_id: int = Field(description="that delivery (GET /api/v1/deliveries)")
    attempts: int
    last_error: str | None
    at: datetime = Field(description="when its state was last recorded")
    next_attempt_at: datetime | None = Field(description="when it is tried next (pending only)")


class UnreachedCustomerOut(BaseModel):
    customer_id: str
    name: str
    still_trying: bool = Field(
        description='"not yet": a delivery of theirs is still queued, sending or retried'
    )
    reason: unreached.Reason = Field(
        description="trying while still tried; else failed (a delivery failed for good), "
        "undelivered (the carrier said so) or cancelled (opted out, address disabled or "
        "removed), in that order; other (rerouted only); no_address: in the incident's "
        "audience as it is now, without any delivery of it (no usable address when its "
        "rounds were written)"
    )
    channels: list[ChannelOutcomeOut] = Field(
        description="the latest delivery per channel; empty for no_address"
    )


class UnreachedCountsOut(BaseModel):
    unreached: int = Field(description="not reached for good: nothing sent, nothing in flight")
    still_trying: int = Field(description="not reached yet, a delivery still in flight")
    by_reason: dict[str, int] = Field(
        description="the unreached by reason (failed, undelivered, cancelled, other, no_address)"
    )
    purged: bool = Field(
        description="its deliveries were purged under retention.messages: nobody is counted"
    )


class UnreachedPageOut(Page[UnreachedCustomerOut]):
    counts: UnreachedCountsOut
    withheld: bool = Field(
        False,
        description="true for a viewer: the customers are customer data, for operators "
        "(items empty, next_cursor null); the counts are for every role",
    )


@router.get(
    "/{incident_id}/unreached",
    response_model=UnreachedPageOut,
    summary="The customers it has not reached, by customer id, with the counts",
    description="A customer is *not reached* when no delivery of the incident was sent or "
    "delivered to them and none is queued, sending or retried; *still trying* while one "
    "is. Both are listed (`only=final` or `only=trying` for one kind), each with their "
    "latest delivery per channel. A customer of the incident's audience (as it is now) "
    "with no delivery of it at all, having no usable address on any channel when its "
    "rounds were written, is not reached with the reason `no_address` and no channels "
    "(one subscribed since the last round shows so until the next round).",
    responses=responses(404),
)
async def unreached_customers(
    incident_id: IncidentId,
    request: Request,
    principal: Viewer,
    limit: Annotated[int, Query(ge=1, le=unreached.MAX_LIMIT, description="page size")] = 100,
    cursor: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=unreached.MAX_CURSOR_CHARS,
            description="next_cursor of the previous page (a customer id)",
        ),
    ] = None,
    only: Annotated[
        Literal["final", "trying"] | None,
        Query(description="final: not reached for good; trying: not yet; both when absent"),
    ] = None,
) -> UnreachedPageOut:
    state = state_of(request)
    shown = allows(principal.role, "operator")
    try:
        counts, page = await unreached.unreached_report(
            state.database, incident_id, after=cursor, limit=limit, only=only, customers=shown
        )
    except IncidentNotFound as exc:
        raise ApiError(404, str(exc), field="path.incident_id") from None
    except ValueError as exc:  # the query's own checks come first; kept as a guard
        name = str(exc).partition(":")[0]
        raise ApiError(
            422, str(exc), field=f"query.{'cursor' if name == 'after' else name}"
        ) from None
    return UnreachedPageOut(
        items=[
            UnreachedCustomerOut(
                customer_id=c.customer_id,
                name=c.name,
                still_trying=c.still_trying,
                reason=c.reason,
                channels=[ChannelOutcomeOut(**asdict(o)) for o in c.channels],
            )
            for c in page.customers
        ],
        next_cursor=page.next_after,
        counts=UnreachedCountsOut(**asdict(counts)),
        withheld=not shown,
    )
