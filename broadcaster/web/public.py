"""Public endpoints reached from messages: one-click unsubscribe (RFC 8058) and health.

``GET /u/{token}`` shows a confirmation page (link scanners follow GETs, so a GET never
unsubscribes); ``POST /u/{token}`` unsubscribes: it is what mail clients send for
``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` and what the page's button sends.
A link of a customer who no longer exists (erased) gets 404 "no longer valid": nothing
was changed, so it must not say "unsubscribed". An unsubscribe link is honoured after its
expiry (:func:`~broadcaster.compose.links.verify_unsubscribe`): a mail client's one-click
POST from an old email, or a customer who finds one, must still stop the messages.

Every public page carries :data:`PUBLIC_HEADERS` (no framing, no sniffing, a CSP that
allows what the pages use: inline styles, a form posting to itself; the incident page also
its one script of ours: :data:`SCRIPTED_HEADERS`); the personal pages (``/u``,
``/preferences``) also :data:`PERSONAL_HEADERS` (not stored, no referrer). The personal
pages are in the customer's language (:func:`customer_page_language`); those of a link
whose customer is not known in the default language. A link that does not work says why in
that language, by its reason's code (:func:`refused`); the checker's English message is
only logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
from broadcaster.compose.templates import TemplateSet, available_languages
from broadcaster.reports import rounds_overdue
from broadcaster.store import ContactPoint, Customer
from broadcaster.web.state import WebState, state_of
from broadcaster.web.words import say, word, written_in

log = logging.getLogger("broadcaster.web")
router = APIRouter(tags=["public"])

_POLICY = "style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
PUBLIC_HEADERS: Final[Mapping[str, str]] = {
    "Content-Security-Policy": f"default-src 'none'; {_POLICY}",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}
"""On every public page (the incident page, unsubscribe, preferences)."""
SCRIPTED_HEADERS: Final[Mapping[str, str]] = {
    **PUBLIC_HEADERS,
    "Content-Security-Policy": f"default-src 'none'; script-src 'self'; {_POLICY}",
}
"""On the incident page, whose one script (a file of ours, never inline) shows its times in
the reader's time zone."""
PERSONAL_HEADERS: Final[Mapping[str, str]] = {
    **PUBLIC_HEADERS,
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}
"""On the pages reached by a customer's own signed link: the link is the credential, so
it must not be kept by a cache or sent on as a referrer."""


def page(lang: str, title: str, body: str, status: int = 200) -> HTMLResponse:
    """A personal page (``/u``, ``/preferences``) in ``lang`` (``title`` plain text,
    ``body`` HTML), with :data:`PERSONAL_HEADERS`."""
    return HTMLResponse(
        f'<!doctype html><html lang="{escape(lang)}"><head><meta charset="utf-8">'
        f'<title>{escape(title)}</title><meta name="viewport" content="width=device-width">'
        f'</head><body style="font-family:sans-serif;max-width:36em;margin:2em auto">'
        f"<h1>{escape(title)}</h1>{body}</body></html>",
        status_code=status,
        headers={**PERSONAL_HEADERS, "Content-Language": lang},
    )


def gone(lang: str) -> HTMLResponse:
    """The answer to a valid link of a customer who no longer exists."""
    return page(lang, word(lang, "link_gone"), f"<p>{say(lang, 'link_gone_body')}</p>", 404)


def refused(exc: InvalidLink, web: WebState, lang: str | None = None) -> HTMLResponse:
    """The answer to a link that does not work: why (its reason's words, in the page's
    language; the checker's English message goes to the log), and for an expired one, how
    to stop the messages all the same (a dead end left customers subscribed). In ``lang``,
    else (no customer known) the default language."""
    lang = lang or default_page_language(web)
    org = web.settings.messages.organisation
    web.count(f"link_refused_{exc.code}")
    log.info("refused a customer link", extra={"reason": exc.code, "detail": str(exc)})
    if isinstance(exc, ExpiredLink):
        body = link_reason(lang, exc.code) + stop_instead(lang, org)
        return page(lang, word(lang, "link_expired"), body, 400)
    return page(lang, word(lang, "link_broken"), link_reason(lang, exc.code), 400)


def link_reason(lang: str, code: str) -> str:
    """Why a link does not work (HTML), from its reason's code
    (:data:`~broadcaster.compose.links.REASONS`); one without words of its own is told as
    a link we do not recognise."""
    key = f"link_reason.{code}"
    return f"<p>{say(lang, key if word(lang, key, '') else 'link_reason.malformed')}</p>"


def stop_instead(lang: str, org: str) -> str:
    """How to stop the messages without this link (HTML)."""
    return f"<p>{say(lang, 'stop_instead', org=org)}</p>"


def offered_languages(web: WebState) -> list[str]:
    """The languages customers may choose: those the messages are written in."""
    return available_languages(web.settings.messages.templates_dir)


def messages_language(web: WebState, language: str) -> str:
    """The offered language ``language``'s messages are written in, by the renderer's own
    fallback (:meth:`TemplateSet.resolve_language`): ``nl-BE`` reads ``nl``, ``en-GB``
    reads ``en``, one without templates the default language. The preferences form shows
    it chosen: with no option chosen a browser submits the first, and saving the page to
    stop an SMS turned a ``nl-BE`` customer's messages English."""
    messages = web.settings.messages
    key = "preferences_templates"
    templates = web.caches.get(key)
    if (
        not isinstance(templates, TemplateSet)
        or templates.override_dir != messages.templates_dir
        or templates.default_language != messages.default_language
    ):
        templates = web.caches[key] = TemplateSet(messages.templates_dir, messages.default_language)
    offered = offered_languages(web)
    for candidate in templates.resolve_language(language):
        if candidate in offered:
            return candidate
    return messages.default_language


def default_page_language(web: WebState) -> str:
    """The language of a page for a link whose customer is not known (a forged link, an
    erased customer): the default language, else English."""
    return written_in([web.settings.messages.default_language])


def customer_page_language(web: WebState, customer: Customer) -> str:
    """The language of a customer's own pages: their messages' language, else (messages in
    a language the pages are not written in) the default language, else English."""
    return written_in(
        [messages_language(web, customer.language), web.settings.messages.default_language]
    )


def _theirs(customer: Customer | None, claims: LinkClaims) -> bool:
    """Whether the link's customer exists and is the one it was made for (not a customer
    created later under an erased one's id)."""
    return customer is not None and not issued_before(claims, customer.created_at)


async def _customer_of(state: WebState, claims: LinkClaims) -> Customer | None:
    async with state.database.session() as session:
        customer = await session.get(Customer, claims.customer_id)
        return customer if _theirs(customer, claims) else None


@router.get("/u/{token}")
async def unsubscribe_page(token: str, request: Request) -> Response:
    state = state_of(request)
    try:
        claims = verify_unsubscribe(state.link_secret, token, state.clock.now())
    except InvalidLink as exc:
        return refused(exc, state)
    customer = await _customer_of(state, claims)
    if customer is None:
        return gone(default_page_language(state))
    lang = customer_page_language(state, customer)
    org = state.settings.messages.organisation
    return page(
        lang,
        word(lang, "unsubscribe"),
        f"<p>{say(lang, 'unsubscribe_question', org=org)}</p>"
        f'<form method="post"><button type="submit">{say(lang, "unsubscribe")}</button></form>',
    )


@router.post("/u/{token}")
async def unsubscribe(token: str, request: Request) -> Response:
    state = state_of(request)
    try:
        claims = verify_unsubscribe(state.link_secret, token, state.clock.now())
    except InvalidLink as exc:
        return refused(exc, state)
    return await unsubscribe_customer(state, claims)


async def unsubscribe_customer(state: WebState, claims: LinkClaims) -> Response:
    """Opt every address of the link's customer out (or 404 when the link is not theirs)."""
    async with state.database.session() as session, session.begin():
        customer = await session.get(Customer, claims.customer_id)
        if customer is None or not _theirs(customer, claims):
            return gone(default_page_language(state))
        lang = customer_page_language(state, customer)
        await session.execute(
            update(ContactPoint)
            .where(ContactPoint.customer_id == claims.customer_id)
            .values(opted_out=True, updated_at=state.clock.now())
        )
    state.count("unsubscribed")
    return page(lang, word(lang, "unsubscribed"), f"<p>{say(lang, 'unsubscribed_body')}</p>")


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
