"""The customer's preferences page, reached by the signed, expiring link in every message:
which of their addresses get updates, their language, or unsubscribe from everything.

The link is the credential (``purpose=preferences``; forged, altered or expired links are
refused). Addresses are shown masked, since a forwarded message carries the link too. An
expired link (one we issued, past ``messages.link_lifetime``) cannot change addresses or
switch any back on, but its page says where a fresh one comes from and can still
unsubscribe the customer, as an unsubscribe link can after its expiry. Its words are in
the customer's language, the one their messages are in (``nl-BE`` reads ``nl``).
"""

from __future__ import annotations

from html import escape

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from broadcaster.compose.links import (
    ExpiredLink,
    InvalidLink,
    LinkClaims,
    issued_before,
    verify_token,
)
from broadcaster.store import ContactPoint, Customer
from broadcaster.web.inputs import row_id
from broadcaster.web.public import (
    customer_page_language,
    default_page_language,
    link_reason,
    messages_language,
    offered_languages,
    page,
    refused,
    stop_instead,
    unsubscribe_customer,
)
from broadcaster.web.state import WebState, state_of
from broadcaster.web.words import say, word

router = APIRouter(tags=["public"])


def mask(kind: str, address: str, lang: str = "en") -> str:
    """Enough to recognise one's own address, not enough to learn someone else's."""
    if kind == "email" and "@" in address:
        local, _, domain = address.partition("@")
        return f"{local[:1]}•••@{domain}"
    if kind == "sms":
        return f"{address[:3]}•••{address[-2:]}"
    device = word(lang, "device")
    return f"{device} •••{address[-4:]}" if len(address) > 4 else device


def _claims(web: WebState, token: str) -> LinkClaims | InvalidLink:
    try:
        return verify_token(web.link_secret, token, "preferences", web.clock.now())
    except InvalidLink as exc:
        return exc


async def _expired(web: WebState, claims: LinkClaims) -> Response:
    """The page of a preferences link past its expiry: where a fresh link comes from, and
    a button that unsubscribes (the one thing an old link may still do: it can switch
    nothing back on). A link of an earlier build, which carries no issue time and so cannot
    be told from one of an erased customer of the same id, only says how to stop."""
    async with web.database.session() as session:
        customer = await session.get(Customer, claims.customer_id)
    if customer is None or issued_before(claims, customer.created_at):
        return _not_found(default_page_language(web))
    lang = customer_page_language(web, customer)
    org = web.settings.messages.organisation
    if claims.issued_at is None:
        body = link_reason(lang, "expired") + stop_instead(lang, org)
        return page(lang, word(lang, "link_expired"), body, 400)
    body = (
        f"<p>{say(lang, 'fresh_link', org=org)}</p>"
        f"<p>{say(lang, 'stop_now')}</p>"
        '<form method="post"><p><button type="submit" name="action" value="unsubscribe">'
        f"{say(lang, 'unsubscribe_all')}</button></p></form>"
    )
    return page(lang, word(lang, "link_expired"), body, 400)


def _not_found(lang: str) -> Response:
    return page(lang, word(lang, "not_found"), f"<p>{say(lang, 'no_preferences')}</p>", 404)


def _not_saved(lang: str, reason: str, status: int) -> Response:
    return page(lang, word(lang, "not_saved"), f"<p>{say(lang, reason)}</p>", status)


async def _form(web: WebState, claims: LinkClaims, notice: str = "") -> Response:
    """The form, in the customer's language; ``notice``: the key of a word said above it."""
    customer_id = claims.customer_id
    async with web.database.session() as session:
        customer = await session.get(Customer, customer_id)
        if customer is None or issued_before(claims, customer.created_at):
            return _not_found(default_page_language(web))
        points = list(
            (
                await session.execute(
                    select(ContactPoint)
                    .where(ContactPoint.customer_id == customer_id)
                    .order_by(ContactPoint.id)
                )
            ).scalars()
        )
    lang = customer_page_language(web, customer)
    not_working = f" <em>{say(lang, 'not_working')}</em>"
    rows = "".join(
        f'<li><label><input type="checkbox" name="point" value="{p.id}"'
        f"{'' if p.opted_out else ' checked'}{' disabled' if p.disabled else ''}> "
        f"{escape(word(lang, f'kind.{p.kind}', p.kind))}: {escape(mask(p.kind, p.address, lang))}"
        + (not_working if p.disabled else "")
        + "</label></li>"
        for p in points
    )
    chosen = messages_language(web, customer.language)
    options = "".join(
        f'<option value="{escape(offered)}"{" selected" if offered == chosen else ""}>'
        f"{escape(offered)}</option>"
        for offered in offered_languages(web)
    )
    org = web.settings.messages.organisation
    body = (
        (f'<p role="status"><strong>{say(lang, notice)}</strong></p>' if notice else "")
        + f"<p>{say(lang, 'preferences_intro', org=org)}</p>"
        + f'<form method="post"><fieldset><legend>{say(lang, "send_updates_to")}</legend>'
        + '<ul style="list-style:none;padding:0">'
        + (rows or f"<li>{say(lang, 'no_addresses')}</li>")
        + "</ul></fieldset>"
        + f"<p><label>{say(lang, 'language')} "
        + f'<select name="language">{options}</select></label></p>'
        + '<p><button type="submit" name="action" value="save">'
        + f"{say(lang, 'save')}</button> "
        + '<button type="submit" name="action" value="unsubscribe">'
        + f"{say(lang, 'unsubscribe_all')}</button></p></form>"
    )
    return page(lang, word(lang, "preferences"), body)


@router.get("/preferences/{token}", response_class=HTMLResponse)
async def preferences_page(token: str, request: Request) -> Response:
    web = state_of(request)
    claims = _claims(web, token)
    if isinstance(claims, ExpiredLink):
        return await _expired(web, claims.claims)
    if isinstance(claims, InvalidLink):
        return refused(claims, web)
    return await _form(web, claims)


@router.post("/preferences/{token}", response_class=HTMLResponse)
async def save_preferences(token: str, request: Request) -> Response:
    web = state_of(request)
    claims = _claims(web, token)
    if isinstance(claims, InvalidLink) and not isinstance(claims, ExpiredLink):
        return refused(claims, web)
    form = await request.form()
    action = form.get("action")
    if isinstance(claims, ExpiredLink):
        expired = claims.claims
        if action == "unsubscribe" and expired.issued_at is not None:
            # Safe to honour at any age (checked against the customer of the time by
            # unsubscribe_customer); saving addresses or a language is not.
            return await unsubscribe_customer(web, expired)
        return await _expired(web, expired)
    language = form.get("language")
    wanted: set[int] = set()
    foreign = False
    for value in form.getlist("point"):
        point_id = row_id(value) if isinstance(value, str) else None
        if point_id is None:
            # The form sends the ids of the addresses it lists; anything else (an upload,
            # "²", thousands of digits) is not this form's.
            foreign = True
            break
        wanted.add(point_id)
    now = web.clock.now()
    async with web.database.session() as session, session.begin():
        customer = await session.get(Customer, claims.customer_id)
        theirs = customer is not None and not issued_before(claims, customer.created_at)
        lang = (
            customer_page_language(web, customer)
            if customer is not None and theirs
            else default_page_language(web)
        )
        if foreign:
            return _not_saved(lang, "not_its_address", 400)
        if customer is None or not theirs:
            return _not_found(lang)
        if action not in ("save", "unsubscribe"):
            # Each of the form's buttons names its action. Without one, this is not the form
            # (an empty or mangled request), and read as "save" with no box ticked it would
            # have opted the customer out of every address.
            return _not_saved(lang, "use_the_buttons", 422)
        if isinstance(language, str) and language:
            if language not in offered_languages(web):
                return _not_saved(lang, "language_not_offered", 422)
            # Only a language the customer chose: the one the form showed chosen (their
            # messages' language) leaves theirs as it is, "nl-BE" staying "nl-BE".
            if language != messages_language(web, customer.language):
                customer.language = language
                customer.updated_at = now
        points = (
            await session.execute(
                select(ContactPoint).where(ContactPoint.customer_id == claims.customer_id)
            )
        ).scalars()
        for point in points:
            # Only this customer's own addresses are touched, whatever ids the form sent.
            # A disabled address has no checkbox a browser submits: leave its choice alone.
            if point.disabled and action != "unsubscribe":
                continue
            point.opted_out = action == "unsubscribe" or point.id not in wanted
            point.updated_at = now
    web.count("preferences_saved" if action != "unsubscribe" else "unsubscribed")
    notice = "unsubscribed_notice" if action == "unsubscribe" else "saved"
    return await _form(web, claims, notice)
