"""Twilio webhooks: delivery status callbacks and inbound SMS (STOP / START / HELP).

Both verify ``X-Twilio-Signature`` with the Twilio library's request validator against the
URL Twilio called: for status callbacks, each Twilio channel's ``status_callback_url`` (with
the request's query) when it has one, else ``messages.public_url`` + the path and query;
for inbound SMS, ``messages.public_url`` + the path. A missing or forged signature gets 403
and changes nothing. Status callbacks move a delivery forward only (queued → sent →
delivered | undelivered | failed): callbacks arrive out of order, and a late "sent" must
not undo "delivered". Only a callback that moves the delivery forward adds to its history:
a repeated or stale one (Twilio retries; a signed request can be replayed) adds nothing.
A callback for a delivery waiting to be retried after its send went unanswered (a timeout)
proves that Twilio took the message: the delivery is recorded as handed over, as a send
Twilio answered is, and is not sent again.
An inbound STOP or START is applied once by its MessageSid (``inbound_messages``): a
signed request carries no time, and a START sent again after the customer's STOP must not
subscribe them again; one without a MessageSid is refused (400). HELP is answered (TwiML)
in the language of the customer whose number it came from.

A Messaging Service with Advanced Opt-Out answers its keywords itself and says which one a
message was in ``OptOutType`` (STOP, START, HELP): then consent follows that, whatever the
text (keywords configured in Twilio's console included), and we answer nothing, so the
customer does not get two answers. An ``OptOutType`` we do not know changes nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast
from xml.sax.saxutils import escape

from fastapi import APIRouter, Request, Response
from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from broadcaster.dispatch.outcomes import fail_over_reported
from broadcaster.store import ContactPoint, Customer, Delivery, DeliveryEvent, InboundMessage
from broadcaster.store.models import table_of
from broadcaster.web.inputs import row_id
from broadcaster.web.public import customer_page_language, default_page_language
from broadcaster.web.state import WebState, state_of
from broadcaster.web.words import sms_text
from channels.sms_segments import gsm7_fold
from channels.twilio_sms import (
    STATUS_MAP,
    Keyword,
    TwilioSettings,
    parse_inbound_keyword,
    verify_twilio_signature,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import CursorResult

log = logging.getLogger("broadcaster.web")
router = APIRouter(prefix="/hooks/twilio", tags=["twilio"])

RANK = {"pending": 0, "sending": 1, "queued": 1, "sent": 2, "delivered": 3, "undelivered": 3}
FINAL_FAILED = 3
HANDED_OVER = ("sending", "sent", "delivered", "undelivered", "failed")
"""States of a delivery that may have reached Twilio (``sending``: its outcome not yet
recorded when the callback comes)."""
REPORTED = ("sent", "delivered", "undelivered", "failed")
"""States a status callback records: a report of ``queued`` (or ``sending``, ``accepted``)
says nothing a recorded send does not."""
OPTED_OUT_CODES = {"21610"}
DISABLED_CODES = {"21211", "21614", "21635", "30005", "30006"}
_SID = re.compile(r"(SM|MM)[0-9a-fA-F]{32}")
"""A Twilio message id: SM (SMS) or MM (MMS) and 32 hex digits."""


UrlFor = Callable[[Request, TwilioSettings], str]


def _inbound_url(state: WebState) -> UrlFor:
    return lambda request, _account: state.public_url_for(request)


def _status_url(state: WebState) -> UrlFor:
    return state.status_callback_url_for


async def _verified(request: Request, state: WebState, url_for: UrlFor) -> dict[str, str] | None:
    form = await request.form()
    params = {key: str(value) for key, value in form.items()}
    signature = request.headers.get("X-Twilio-Signature")
    tried: list[str] = []
    for account in state.twilio_accounts():
        if params.get("AccountSid") not in (None, account.account_sid):
            continue
        url = url_for(request, account)
        tried.append(url)
        if verify_twilio_signature(account.auth_token, url, params, signature):
            # Signed as sent; a NUL (never in Twilio's values) can match nothing we keep.
            return {key: value.replace("\x00", "") for key, value in params.items()}
    state.count("twilio_forged")
    log.warning(
        "rejected a Twilio request with a missing or invalid signature",
        extra={"url": ", ".join(dict.fromkeys(tried)) or state.public_url_for(request)},
    )
    return None


def _forbidden() -> Response:
    return Response(
        '{"error": "invalid or missing X-Twilio-Signature"}', 403, media_type="application/json"
    )


@router.post("/status")
async def status_callback(request: Request) -> Response:
    state = state_of(request)
    params = await _verified(request, state, _status_url(state))
    if params is None:
        return _forbidden()
    sid = params.get("MessageSid", "")
    reported = params.get("MessageStatus", "")
    new_state = STATUS_MAP.get(reported)
    key = request.query_params.get("delivery", "")
    delivery_id = row_id(key.removeprefix("delivery-")) or -1
    error_code = params.get("ErrorCode") or None
    now = state.clock.now()
    async with state.database.session() as session, session.begin():
        # Only a delivery of a Twilio channel that may have reached Twilio: by its message
        # SID, or by the id in the callback URL (the callback may come before the SID is
        # recorded) while it has no other SID. An email, or an SMS never tried, is never
        # the callback's, whatever the URL says. Locked (PostgreSQL; a SQLite transaction
        # holds the store): a worker cannot claim it, or record its send, meanwhile.
        row = (
            await session.execute(
                select(Delivery)
                .where(
                    Delivery.channel.in_(state.twilio_channels()),
                    or_(Delivery.state.in_(HANDED_OVER), _awaiting_retry()),
                    or_(
                        Delivery.provider_message_id == sid,
                        and_(Delivery.id == delivery_id, Delivery.provider_message_id.is_(None)),
                    ),
                )
                .limit(1)
                .with_for_update()
            )
        ).scalar_one_or_none()
        if row is None or new_state is None:
            state.count("twilio_status_unmatched")
            return Response(status_code=204)
        if row.state == "pending":
            _record_handover(session, row, sid, reported, now)
        current = RANK.get(row.state, FINAL_FAILED if row.state == "failed" else 0)
        advances = RANK.get(new_state, FINAL_FAILED) > current
        if advances and new_state in REPORTED:
            # Only a step forward is history: a repeated, replayed or stale callback
            # (Twilio retries; a signed request verifies again) adds no event.
            session.add(
                DeliveryEvent(
                    delivery_id=row.id,
                    at=now,
                    state=new_state,
                    provider_message_id=sid,
                    detail=f"Twilio {reported}" + (f", error {error_code}" if error_code else ""),
                )
            )
            row.state = new_state
            row.provider_message_id = row.provider_message_id or sid
            row.sent_at = row.sent_at or now  # handed over (a worker's record is fenced off)
            if new_state in ("undelivered", "failed"):
                row.last_error = f"Twilio {reported}" + (
                    f" (error {error_code})" if error_code else ""
                )
                await _fail_over(session, state, row, now)
        if error_code in OPTED_OUT_CODES | DISABLED_CODES and row.contact_point_id is not None:
            point = await session.get(ContactPoint, row.contact_point_id)
            if point is not None:
                point.opted_out = point.opted_out or error_code in OPTED_OUT_CODES
                point.disabled = point.disabled or error_code in DISABLED_CODES
                point.disabled_reason = f"Twilio error {error_code}"
                point.updated_at = now
    state.count(f"twilio_status_{new_state}")
    return Response(status_code=204)


def _awaiting_retry() -> ColumnElement[bool]:
    """A delivery waiting for its retry after an attempt that ended in a retryable error
    (``last_error``): the send may have reached Twilio all the same (no answer within the
    timeout, a connection lost after the request went), and only then does Twilio call
    back with the delivery's id. One never tried, or given back untried, is not matched."""
    return and_(
        Delivery.state == "pending",
        Delivery.attempts >= 1,
        Delivery.last_error.is_not(None),
        Delivery.provider_message_id.is_(None),
    )


def _record_handover(
    session: AsyncSession, row: Delivery, sid: str, reported: str, now: datetime
) -> None:
    """Twilio took the message of a delivery waiting for its retry: record it ``sent``,
    as the send would have been had Twilio answered in time (its SID, ``sent_at``, no
    error), so that it is not sent again; what the callback reports beyond that (delivered,
    undelivered, failed) then moves it on like any other."""
    session.add(
        DeliveryEvent(
            delivery_id=row.id,
            at=now,
            state="sent",
            provider_message_id=sid,
            detail=(
                f"attempt {row.attempts}: taken by Twilio after all (its status callback "
                f"says {reported}); not sent again"
            ),
        )
    )
    row.state = "sent"
    row.provider_message_id = sid or None
    row.sent_at = now
    row.last_error = None
    row.next_attempt_at = now  # no retry waits any more
    row.lease_owner = row.lease_expires_at = None
    log.info(
        "Twilio took a message whose send went unanswered; its retry is called off",
        extra={"delivery": row.id},
    )


async def _fail_over(session: AsyncSession, state: WebState, row: Delivery, now: datetime) -> None:
    """The carrier could not deliver it: the customer's next channel gets the round."""
    order = (
        await session.execute(select(Customer.channel_order).where(Customer.id == row.customer_id))
    ).scalar_one_or_none()
    settings = state.settings
    kinds = {name: channel.contact for name, channel in settings.channels.items()}
    database = state.database
    await session.flush()
    target = await session.run_sync(
        lambda sync: fail_over_reported(
            sync, database, row, order, settings.delivery.failover, kinds, now
        )
    )
    if target is not None:
        log.info("failed over after a carrier report", extra={"delivery": row.id, "to": target})


def _twiml(message: str | None = None) -> Response:
    body = f"<Message>{escape(message)}</Message>" if message else ""
    return Response(
        f'<?xml version="1.0" encoding="UTF-8"?><Response>{body}</Response>',
        media_type="application/xml",
    )


OPT_OUT_TYPES: dict[str, Keyword] = {"STOP": "stop", "START": "start", "HELP": "help"}
"""The values of ``OptOutType``, which Twilio adds to an inbound message that a Messaging
Service with Advanced Opt-Out took as one of its keywords (its defaults or those configured
in the console, in any language), and the keyword each is."""


@router.post("/inbound")
async def inbound_sms(request: Request) -> Response:
    state = state_of(request)
    params = await _verified(request, state, _inbound_url(state))
    if params is None:
        return _forbidden()
    if "OptOutType" in params:
        return await _advanced_opt_out(state, params, params["OptOutType"])
    keyword = parse_inbound_keyword(params.get("Body", ""))
    if keyword == "help":
        return _twiml(await _help_text(state, params.get("From", "")))
    if keyword in ("stop", "start"):
        return await _apply_consent(state, params, keyword)
    return _twiml()


async def _advanced_opt_out(state: WebState, params: dict[str, str], value: str) -> Response:
    """An inbound message Twilio's Advanced Opt-Out took as a keyword: Twilio has answered
    it (and blocked or unblocked the number) itself, so we answer nothing; consent follows
    its ``OptOutType``, whatever the text (custom keywords included). A value we do not
    know changes nothing."""
    keyword = OPT_OUT_TYPES.get(value.strip().upper())
    if keyword is None:
        state.count("twilio_inbound_opt_out_type_unknown")
        log.warning(
            "inbound SMS with an OptOutType we do not know; consent unchanged",
            extra={"opt_out_type": value[:32]},
        )
        return _twiml()
    if keyword == "help":
        state.count("twilio_inbound_help_by_twilio")
        log.info("inbound SMS HELP, answered by Twilio's Advanced Opt-Out")
        return _twiml()
    return await _apply_consent(state, params, keyword)


async def _apply_consent(state: WebState, params: dict[str, str], keyword: Keyword) -> Response:
    """Opt the sender's number out (``stop``) or back in (``start``), once per MessageSid."""
    sid = params.get("MessageSid", "")
    if not _SID.fullmatch(sid):
        # Twilio sends one with every inbound message; without it a replay cannot be
        # told from a new message, so consent is not changed on its word.
        state.count("twilio_inbound_refused")
        log.warning("inbound SMS keyword without a valid MessageSid; consent unchanged")
        return Response(
            '{"error": "MessageSid: missing or not a Twilio message id"}',
            400,
            media_type="application/json",
        )
    sender = params.get("From", "")
    now = state.clock.now()
    database = state.database
    async with database.session() as session, session.begin():
        result = await session.execute(
            database.insert_ignoring_duplicates(table_of(InboundMessage)).values(
                provider_message_id=sid, keyword=keyword, received_at=now
            )
        )
        first = cast("CursorResult[Any]", result).rowcount == 1
        if first:
            await session.execute(
                update(ContactPoint)
                .where(ContactPoint.kind == "sms", ContactPoint.address == sender)
                .values(opted_out=keyword == "stop", updated_at=now)
            )
    if not first:
        state.count("twilio_inbound_repeated")
        log.info("inbound SMS keyword already applied", extra={"keyword": keyword})
        return _twiml()
    state.count(f"twilio_inbound_{keyword}")
    log.info("inbound SMS keyword", extra={"keyword": keyword})
    return _twiml()


async def _help_text(state: WebState, sender: str) -> str:
    """Our answer to HELP, in the language of the customer whose SMS number ``sender`` is
    (of several, the first by id; of none, the default language), written the GSM-7 way
    where that makes all of it GSM-7 (one SMS holds 160 characters of it, 70 otherwise)."""
    async with state.database.session() as session:
        customer = (
            await session.execute(
                select(Customer)
                .join(ContactPoint, ContactPoint.customer_id == Customer.id)
                .where(ContactPoint.kind == "sms", ContactPoint.address == sender)
                .order_by(Customer.id)
                .limit(1)
            )
        ).scalar_one_or_none()
    language = (
        default_page_language(state)
        if customer is None
        else customer_page_language(state, customer)
    )
    messages = state.settings.messages
    return gsm7_fold(sms_text(language, "help", org=messages.organisation, url=messages.public_url))
