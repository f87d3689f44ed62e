"""Telling staff about their follow-up tasks, over the staff notification channel.

The message is the ``followup_task`` template: whom to contact, how to reach them, their
recent history and what to say. A failed notice is logged and recorded; the reminders that
follow are the retry.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime

from sqlalchemy import func, select

from broadcaster.compose.context import Personal
from broadcaster.compose.forms import form_for
from broadcaster.compose.locale import format_when
from broadcaster.compose.render import Renderer, RenderRequest
from broadcaster.dispatch.content import facts_of
from broadcaster.followups.directory import Directory
from broadcaster.followups.service import Notice
from broadcaster.incidents.service import latest_update
from broadcaster.store import (
    ContactPoint,
    Customer,
    Database,
    Delivery,
    Followup,
    FollowupEvent,
    Incident,
    IncidentScope,
)
from channels.base import Channel, DeliveryError, Message, Target

log = logging.getLogger("broadcaster.followups")

SAY = {
    "assigned": "",
    "reminder": "Reminder: ",
    "escalation": "Overdue, escalated to you: ",
}


async def send_notices(
    database: Database,
    channel: Channel | None,
    renderer: Renderer,
    directory: Directory,
    notices: list[Notice],
    now: datetime,
) -> int:
    """Send each notice; returns how many went out."""
    sent = 0
    for notice in notices:
        person = directory.person(notice.staff)
        address = None
        if person is not None and channel is not None:
            address = person.phone if channel.contact == "sms" else person.email
        detail = "no staff notification channel or address"
        if person is not None and channel is not None and address:
            try:
                message = await _message(database, renderer, notice, person.name, channel, now)
                receipt = await channel.send(Target(address, person.name, notice.staff), message)
                detail = f"{notice.kind} sent ({receipt.provider_message_id or 'ok'})"
                sent += 1
            except DeliveryError as exc:
                detail = f"{notice.kind} failed: {exc.reason}"
                log.warning(
                    "follow-up notice failed",
                    extra={"followup": notice.followup_id, "reason": exc.reason},
                )
            except Exception as exc:  # one notice's fault must not keep the others unsent
                detail = f"{notice.kind} failed: unexpected error: {exc!r}"
                log.exception("follow-up notice failed", extra={"followup": notice.followup_id})
        try:
            async with database.session() as session, session.begin():
                session.add(
                    FollowupEvent(
                        followup_id=notice.followup_id,
                        at=now,
                        kind="notified",
                        staff=notice.staff,
                        detail=detail,
                    )
                )
        except Exception:
            log.exception(
                "could not record a follow-up notice",
                extra={"followup": notice.followup_id, "detail": detail},
            )
    return sent


async def _message(
    database: Database,
    renderer: Renderer,
    notice: Notice,
    staff_name: str,
    channel: Channel,
    now: datetime,
) -> Message:
    async with database.session() as session:
        task = await session.get(Followup, notice.followup_id)
        if task is None:
            raise DeliveryError(f"follow-up {notice.followup_id} is gone", retryable=False)
        incident = await session.get(Incident, task.incident_id)
        customer = await session.get(Customer, task.customer_id)
        update = await latest_update(session, task.incident_id)
        if incident is None or customer is None or update is None:
            raise DeliveryError(f"follow-up {task.id} lost its incident", retryable=False)
        scopes = (
            await session.execute(
                select(IncidentScope.kind, IncidentScope.value).where(
                    IncidentScope.incident_id == incident.id
                )
            )
        ).all()
        points = (
            await session.execute(
                select(ContactPoint.kind, ContactPoint.address).where(
                    ContactPoint.customer_id == customer.id, ContactPoint.kind.in_(("email", "sms"))
                )
            )
        ).all()
        hits = (
            await session.execute(
                select(func.count(func.distinct(Delivery.incident_id))).where(
                    Delivery.customer_id == customer.id
                )
            )
        ).scalar_one()
    facts = facts_of(incident, update, [(k, v) for k, v in scopes], None)
    language = renderer.templates.default_language
    task_context = {
        "customer": customer.name,
        "contact": ", ".join(address for _, address in points) or "no phone or email on file",
        "history": f"{hits} incident(s) affected them so far; tier {customer.tier}",
        "what_to_say": _say(task.kind, incident.title),
        "deadline": format_when(task.deadline_at, "UTC", language, now),
        "kind": task.kind,
        "incident": incident.title,
    }
    message = renderer.message(
        RenderRequest(
            kind="followup_task",
            form=form_for(channel.contact),
            facts=facts,
            language=language,
            timezone="UTC",
            now=now,
            personal=Personal(staff_name, "", ""),
            task=task_context,
        ),
        idempotency_key=f"followup-{task.id}-{notice.kind}",
    )
    if SAY[notice.kind]:
        message = dataclasses.replace(message, subject=SAY[notice.kind] + message.subject)
    return message


def _say(kind: str, title: str) -> str:
    return (
        f"Apologise for '{title}', say what happened and what we did, ask how it affected "
        f"them, and offer what the rules attach. Record the outcome with "
        f"'broadcaster followups done ID --outcome reached|voicemail|declined|unreachable'."
        if kind != "visit"
        else f"Visit in person about '{title}'; record the outcome afterwards."
    )
