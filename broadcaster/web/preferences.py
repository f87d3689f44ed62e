"""The customer's preferences page, reached by the signed, expiring link in every message:
which of their addresses get updates, their language, or unsubscribe from everything.

The link is the credential (``purpose=preferences``; forged, altered or expired links are
refused). Addresses are shown masked, since a forwarded message carries the link too. An
expired link (one we issued, past ``messages.link_lifetime``) cannot change addresses or
switch any back on, but its page says where a fresh one comes from and can still
unsubscribe the customer, as an unsubscribe link can after its expiry.
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
from broadcaster.compose.templates import TemplateSet, available_languages
from broadcaster.store import ContactPoint, Customer
from broadcaster.web.inputs import row_id
from broadcaster.web.public import page, refused, unsubscribe_customer
from broadcaster.web.state import WebState, state_of

router = APIRouter(tags=["public"])

KIND_LABEL = {
    "email": "Email",
    "sms": "Text message (SMS)",
    "fcm": "App notification",
    "apns": "App notification",
    "webpush": "Browser notification",
    "ntfy": "ntfy notification",
}


def mask(kind: str, address: str) -> str:
    """Enough to recognise one's own address, not enough to learn someone else's."""
    if kind == "email" and "@" in address:
        local, _, domain = address.partition("@")
        return f"{local[:1]}•••@{domain}"
    if kind == "sms":
        return f"{address[:3]}•••{address[-2:]}"
    return f"device •••{address[-4:]}" if len(address) > 4 else "device"


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
        return _not_found()
    org = escape(web.settings.messages.organisation)
    if claims.issued_at is None:
        return refused(ExpiredLink(claims), org)
    body = (
        "<p>For your security, a link to your notification preferences works for a limited "
        f"time. The next message {org} sends you carries a fresh one: open it to change "
        "where updates go or their language.</p>"
        "<p>To stop all disruption updates now:</p>"
        '<form method="post"><p><button type="submit" name="action" value="unsubscribe">'
        "Stop all updates (unsubscribe)</button></p></form>"
    )
    return page("This link has expired", body, 400)


def _languages(web: WebState) -> list[str]:
    return available_languages(web.settings.messages.templates_dir)


def _written_in(web: WebState, language: str) -> str:
    """The offered language ``language``'s messages are written in, by the renderer's own
    fallback (:meth:`TemplateSet.resolve_language`): ``nl-BE`` reads ``nl``, ``en-GB``
    reads ``en``, one without templates the default language. The form shows it chosen:
    with no option chosen a browser submits the first, and saving the page to stop an SMS
    turned a ``nl-BE`` customer's messages English."""
    messages = web.settings.messages
    key = "preferences_templates"
    templates = web.caches.get(key)
    if (
        not isinstance(templates, TemplateSet)
        or templates.override_dir != messages.templates_dir
        or templates.default_language != messages.default_language
    ):
        templates = web.caches[key] = TemplateSet(messages.templates_dir, messages.default_language)
    offered = _languages(web)
    for candidate in templates.resolve_language(language):
        if candidate in offered:
            return candidate
    return messages.default_language


def _not_found() -> Response:
    return page("Not found", "<p>We have no preferences for this link any more.</p>", 404)


async def _form(web: WebState, claims: LinkClaims, notice: str = "") -> Response:
    customer_id = claims.customer_id
    async with web.database.session() as session:
        customer = await session.get(Customer, customer_id)
        if customer is None or issued_before(claims, customer.created_at):
            return _not_found()
        points = list(
            (
                await session.execute(
                    select(ContactPoint)
                    .where(ContactPoint.customer_id == customer_id)
                    .order_by(ContactPoint.id)
                )
            ).scalars()
        )
    rows = "".join(
        f'<li><label><input type="checkbox" name="point" value="{p.id}"'
        f"{'' if p.opted_out else ' checked'}{' disabled' if p.disabled else ''}> "
        f"{escape(KIND_LABEL.get(p.kind, p.kind))}: {escape(mask(p.kind, p.address))}"
        + (" <em>(not working; contact us to fix it)</em>" if p.disabled else "")
        + "</label></li>"
        for p in points
    )
    chosen = _written_in(web, customer.language)
    options = "".join(
        f'<option value="{escape(lang)}"{" selected" if lang == chosen else ""}>'
        f"{escape(lang)}</option>"
        for lang in _languages(web)
    )
    org = escape(web.settings.messages.organisation)
    body = (
        (f'<p role="status"><strong>{escape(notice)}</strong></p>' if notice else "")
        + f"<p>How {org} tells you about disruptions.</p>"
        + '<form method="post"><fieldset><legend>Send updates to</legend>'
        + f'<ul style="list-style:none;padding:0">{rows or "<li>No addresses on file.</li>"}</ul>'
        + "</fieldset>"
        + f'<p><label>Language <select name="language">{options}</select></label></p>'
        + '<p><button type="submit" name="action" value="save">Save</button> '
        + '<button type="submit" name="action" value="unsubscribe">'
        + "Stop all updates (unsubscribe)</button></p></form>"
    )
    return page("Your notification preferences", body)


@router.get("/preferences/{token}", response_class=HTMLResponse)
async def preferences_page(token: str, request: Request) -> Response:
    web = state_of(request)
    claims = _claims(web, token)
    if isinstance(claims, ExpiredLink):
        return await _expired(web, claims.claims)
    if isinstance(claims, InvalidLink):
        return refused(claims, escape(web.settings.messages.organisation))
    return await _form(web, claims)


@router.post("/preferences/{token}", response_class=HTMLResponse)
async def save_preferences(token: str, request: Request) -> Response:
    web = state_of(request)
    claims = _claims(web, token)
    if isinstance(claims, InvalidLink) and not isinstance(claims, ExpiredLink):
        return refused(claims, escape(web.settings.messages.organisation))
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
    for value in form.getlist("point"):
        point_id = row_id(value) if isinstance(value, str) else None
        if point_id is None:
            # The form sends the ids of the addresses it lists; anything else (an upload,
            # "²", thousands of digits) is not this form's.
            return page(
                "Not saved",
                "<p>The form sent an address that is not one of its own; "
                "reload the page and try again.</p>",
                400,
            )
        wanted.add(point_id)
    now = web.clock.now()
    async with web.database.session() as session, session.begin():
        customer = await session.get(Customer, claims.customer_id)
        if customer is None or issued_before(claims, customer.created_at):
            return _not_found()
        if action not in ("save", "unsubscribe"):
            # Each of the form's buttons names its action. Without one, this is not the form
            # (an empty or mangled request), and read as "save" with no box ticked it would
            # have opted the customer out of every address.
            return page("Not saved", "<p>Use the Save or Unsubscribe button of the form.</p>", 422)
        if isinstance(language, str) and language:
            if language not in _languages(web):
                return page("Not saved", "<p>That language is not offered.</p>", 422)
            # Only a language the customer chose: the one the form showed chosen (their
            # messages' language) leaves theirs as it is, "nl-BE" staying "nl-BE".
            if language != _written_in(web, customer.language):
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
    notice = (
        "You are unsubscribed: no more disruption updates." if action == "unsubscribe" else "Saved."
    )
    return await _form(web, claims, notice)
