"""The customer's preferences page, reached by the signed, expiring link in every message:
which of their addresses get updates, their language, or unsubscribe from everything.

The link is the credential (``purpose=preferences``; forged, altered or expired links are
refused). Addresses are shown masked, since a forwarded message carries the link too.
"""

from __future__ import annotations

from html import escape

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from broadcaster.compose.links import InvalidLink, LinkClaims, issued_before, verify_token
from broadcaster.compose.templates import available_languages
from broadcaster.store import ContactPoint, Customer
from broadcaster.web.inputs import row_id
from broadcaster.web.public import page
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


def _claims(web: WebState, token: str) -> LinkClaims | Response:
    try:
        return verify_token(web.link_secret, token, "preferences", web.clock.now())
    except InvalidLink as exc:
        return page("This link does not work", f"<p>{escape(str(exc))}.</p>", 400)


def _languages(web: WebState) -> list[str]:
    return available_languages(web.settings.messages.templates_dir)


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
    options = "".join(
        f'<option value="{escape(lang)}"{" selected" if lang == customer.language else ""}>'
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
    if isinstance(claims, Response):
        return claims
    return await _form(web, claims)


@router.post("/preferences/{token}", response_class=HTMLResponse)
async def save_preferences(token: str, request: Request) -> Response:
    web = state_of(request)
    claims = _claims(web, token)
    if isinstance(claims, Response):
        return claims
    form = await request.form()
    action = form.get("action")
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
