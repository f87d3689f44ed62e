"""Public endpoints reached from messages: one-click unsubscribe (RFC 8058) and health.

``GET /u/{token}`` shows a confirmation page (link scanners follow GETs, so a GET never
unsubscribes); ``POST /u/{token}`` unsubscribes: it is what mail clients send for
``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` and what the page's button sends.
A link of a customer who no longer exists (erased) gets 404 "no longer valid": nothing
was changed, so it must not say "unsubscribed". An unsubscribe link is honoured after its
expiry (:func:`~broadcaster.compose.links.verify_unsubscribe`): a mail client's one-click
POST from an old email, or a customer who finds one, must still stop the messages.

Every public page carries :data:`PUBLIC_HEADERS` (no framing, no sniffing, a CSP that
allows what the pages use: inline styles, a form posting to itself); the personal pages
(``/u``, ``/preferences``) also :data:`PERSONAL_HEADERS` (not stored, no referrer).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from html import escape
from typing import Final

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy import update

from broadcaster.compose.links import (
    ExpiredLink,
    InvalidLink,
    LinkClaims,
    issued_before,
    verify_unsubscribe,
)
from broadcaster.reports import rounds_overdue
from broadcaster.store import ContactPoint, Customer
from broadcaster.web.state import WebState, state_of

router = APIRouter(tags=["public"])

PUBLIC_HEADERS: Final[Mapping[str, str]] = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}
"""On every public page (the incident page, unsubscribe, preferences)."""
PERSONAL_HEADERS: Final[Mapping[str, str]] = {
    **PUBLIC_HEADERS,
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}
"""On the pages reached by a customer's own signed link: the link is the credential, so
it must not be kept by a cache or sent on as a referrer."""


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    """A personal page (``/u``, ``/preferences``), with :data:`PERSONAL_HEADERS`."""
    return HTMLResponse(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}'
        f'</title><meta name="viewport" content="width=device-width"></head>'
        f'<body style="font-family:sans-serif;max-width:36em;margin:2em auto">'
        f"<h1>{escape(title)}</h1>{body}</body></html>",
        status_code=status,
        headers=dict(PERSONAL_HEADERS),
    )


def gone() -> HTMLResponse:
    """The answer to a valid link of a customer who no longer exists."""
    return page(
        "This link is no longer valid",
        "<p>We have no subscription for this link any more.</p>",
        404,
    )


def refused(exc: InvalidLink, org: str) -> HTMLResponse:
    """The answer to a link that does not work: why, and for an expired one, how to stop
    the messages all the same (a dead end left customers subscribed)."""
    if isinstance(exc, ExpiredLink):
        return page("This link has expired", stop_instead(org), 400)
    return page("This link does not work", f"<p>{escape(str(exc))}.</p>", 400)


def stop_instead(org: str) -> str:
    """How to stop the messages without this link (``org`` already escaped)."""
    return (
        f"<p>To stop all disruption updates from {org}, use the unsubscribe link in our "
        "most recent email, or reply STOP to one of our text messages. Every message we "
        "send carries a fresh link to your preferences.</p>"
    )


def _theirs(customer: Customer | None, claims: LinkClaims) -> bool:
    """Whether the link's customer exists and is the one it was made for (not a customer
    created later under an erased one's id)."""
    return customer is not None and not issued_before(claims, customer.created_at)


async def _customer_exists(state: WebState, claims: LinkClaims) -> bool:
    async with state.database.session() as session:
        return _theirs(await session.get(Customer, claims.customer_id), claims)


@router.get("/u/{token}")
async def unsubscribe_page(token: str, request: Request) -> Response:
    state = state_of(request)
    org = escape(state.settings.messages.organisation)
    try:
        claims = verify_unsubscribe(state.link_secret, token, state.clock.now())
    except InvalidLink as exc:
        return refused(exc, org)
    if not await _customer_exists(state, claims):
        return gone()
    return page(
        "Unsubscribe",
        f"<p>Stop all disruption updates from {org}?</p>"
        f'<form method="post"><button type="submit">Unsubscribe</button></form>',
    )


@router.post("/u/{token}")
async def unsubscribe(token: str, request: Request) -> Response:
    state = state_of(request)
    try:
        claims = verify_unsubscribe(state.link_secret, token, state.clock.now())
    except InvalidLink as exc:
        return refused(exc, escape(state.settings.messages.organisation))
    return await unsubscribe_customer(state, claims)


async def unsubscribe_customer(state: WebState, claims: LinkClaims) -> Response:
    """Opt every address of the link's customer out (or 404 when the link is not theirs)."""
    async with state.database.session() as session, session.begin():
        if not _theirs(await session.get(Customer, claims.customer_id), claims):
            return gone()
        await session.execute(
            update(ContactPoint)
            .where(ContactPoint.customer_id == claims.customer_id)
            .values(opted_out=True, updated_at=state.clock.now())
        )
    state.count("unsubscribed")
    return page(
        "You are unsubscribed",
        "<p>You will receive no more disruption updates. Changed your mind? "
        "Contact us and we will switch them back on.</p>",
    )


STORE_CHECK_SECONDS = 5.0
"""How long ``/healthz`` waits for the store's answer before saying it is unreachable."""
ROUNDS_CHECK_SECONDS = 0.5
"""How long it waits to count the overdue rounds (``null`` if the store is busy)."""


@router.get("/healthz")
async def healthz(request: Request) -> Response:
    state = state_of(request)
    store_ok = True
    try:
        # Bounded: a store that does not answer (a paused pooler, a server that stopped
        # replying) must give the probe a 503, not keep it waiting until it gives up.
        async with asyncio.timeout(STORE_CHECK_SECONDS):
            await state.database.ping()
    except Exception:  # any failure, or no answer in time, means the store is not reachable
        store_ok = False
    healthy = store_ok and state.scheduler_running
    body: dict[str, object] = {
        "status": "ok" if healthy else "failing",
        "store": "ok" if store_ok else "unreachable",
        "scheduler": "running" if state.scheduler_running else "stopped",
        "leader": state.leading(),
    }
    if store_ok:
        # Said, not failed on: a follower cannot mend a frozen leader, and a leader catching
        # up after an outage has overdue rounds while it works (alert on the metric). Null
        # when the store is too busy to say at once (a SQLite daemon writing a big round).
        body["rounds_overdue"] = None
        with contextlib.suppress(Exception):
            async with (
                asyncio.timeout(min(STORE_CHECK_SECONDS, ROUNDS_CHECK_SECONDS)),
                state.database.session() as session,
            ):
                body["rounds_overdue"] = await rounds_overdue(
                    session, state.clock.now(), state.settings.schedule.promise_grace
                )
    holder = state.rules
    if holder is not None and holder.path is not None:
        body["rules"] = {
            "loaded": holder.current is not None,
            "last_reload_error": holder.error,
            "reloads": holder.reloads,
            # The rules loaded still run; the next reload or start would fail.
            "file_present": holder.path.is_file(),
        }
    if state.capacity is not None and state.capacity():
        body["capacity_warnings"] = state.capacity()
    if state.feeds:
        body["feeds"] = {
            watcher.name: {
                "last_poll": watcher.last_poll.isoformat() if watcher.last_poll else None,
                "last_success": watcher.last_success.isoformat() if watcher.last_success else None,
                "last_error": watcher.last_error,
                "counts": dict(watcher.counters),
            }
            for watcher in state.feeds
        }
    return JSONResponse(body, status_code=200 if healthy else 503)
