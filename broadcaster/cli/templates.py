"""``broadcaster templates``: lint the message templates and preview exactly what is sent."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer
from sqlalchemy import select

from broadcaster.cli.common import ConfigOption, fail, run, settings_or_exit, with_database
from broadcaster.clock import RealClock
from broadcaster.compose.check import check_templates
from broadcaster.compose.context import IncidentFacts, Personal
from broadcaster.compose.forms import form_for
from broadcaster.compose.links import personal_links
from broadcaster.compose.render import RenderRequest
from broadcaster.compose.samples import (
    SAMPLE_FOLLOWUP,
    SAMPLE_NOW,
    SAMPLE_TASK,
    sample_facts,
    sample_personal,
)
from broadcaster.compose.templates import FORMS, KINDS
from broadcaster.config import Settings
from broadcaster.config.settings import CadenceSettings
from broadcaster.dispatch.content import facts_of
from broadcaster.engine import link_secret, make_renderer
from broadcaster.followups.notify import step_notice_facts
from broadcaster.incidents.service import latest_update
from broadcaster.store import Customer, Database, Incident, IncidentScope, Round
from broadcaster.store.ids import MAX_ID
from channels.base import DeliveryError, Message
from channels.sms_segments import segments
from rules.facts import zone as time_zone

app = typer.Typer(help="Message templates: check and preview.", no_args_is_help=True)


@app.command("check")
def check(config: ConfigOption = None) -> None:
    """Lint every template (variables, the five-part apology, SMS length); exit 1 on errors."""
    settings = settings_or_exit(config)
    renderer = make_renderer(settings)
    report = check_templates(renderer.templates, renderer, settings.messages.sms_max_segments)
    for warning in report.warnings:
        typer.echo(f"warning: {warning}", err=True)
    for error in report.errors:
        typer.echo(f"error: {error}", err=True)
    typer.echo(
        f"checked {report.checked} templates: {len(report.errors)} errors, "
        f"{len(report.warnings)} warnings"
    )
    if report.errors:
        raise typer.Exit(1)


def _form(settings: Settings, channel: str) -> str:
    """The message form of ``channel``: a form's own name, or a configured channel's."""
    if channel in FORMS:
        return channel
    spec = settings.channels.get(channel)
    if spec is None:
        known = ", ".join([*FORMS, *sorted(settings.channels)])
        raise fail(
            f"--channel: {channel!r} is neither a form nor a configured channel ({known})", 2
        )
    return form_for(spec.contact)


async def _facts(
    db: Database, incident_id: int, kind: str, cadence: CadenceSettings, now: datetime
) -> IncidentFacts:
    """The incident's facts as its next message would carry them, the promise included:
    the one its latest round made while it is ahead, else the severity's cadence from now.
    An escalation step's notice: the facts the daemon's notice has (its age at ``now``, the
    step of its stored plan in force then)."""
    async with db.session() as session:
        incident = await session.get(Incident, incident_id)
        if incident is None:
            raise LookupError(f"no incident with id {incident_id}")
        if kind == "incident_step":
            try:
                return await step_notice_facts(session, incident, now=now)
            except DeliveryError:
                raise LookupError(f"incident {incident_id} has no timeline") from None
        update = await latest_update(session, incident_id)
        if update is None:
            raise LookupError(f"incident {incident_id} has no timeline")
        promised = (
            await session.execute(
                select(Round.next_due_at)
                .where(Round.incident_id == incident_id)
                .order_by(Round.number.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
        scopes = (
            await session.execute(
                select(IncidentScope.kind, IncidentScope.value).where(
                    IncidentScope.incident_id == incident_id
                )
            )
        ).all()
    next_update = None
    if kind != "resolution":
        next_update = (
            promised
            if promised is not None and promised > now
            else now + cadence.for_severity(incident.severity)
        )
    return facts_of(incident, update, [(k, v) for k, v in scopes], next_update)


@app.command("preview")
def preview(
    kind: Annotated[str, typer.Argument(help=f"one of: {', '.join(KINDS)}")],
    channel: Annotated[
        str, typer.Option("--channel", help="a configured channel, or email / sms / push")
    ] = "email",
    language: Annotated[str, typer.Option("--language", help="e.g. en, nl")] = "en",
    timezone: Annotated[str, typer.Option("--timezone", help="IANA zone")] = "Europe/Amsterdam",
    incident: Annotated[
        int | None, typer.Option("--incident", help="use this incident", min=1, max=MAX_ID)
    ] = None,
    customer: Annotated[str | None, typer.Option("--customer", help="use this customer")] = None,
    config: ConfigOption = None,
) -> None:
    """Print exactly what would be sent (sample values unless --incident / --customer)."""
    settings = settings_or_exit(config)
    if kind not in KINDS:
        raise fail(f"unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
    renderer = make_renderer(settings)
    form = _form(settings, channel)
    try:
        time_zone(timezone)
    except ValueError as exc:
        raise fail(f"--timezone: {exc}", 2) from None

    now = RealClock().now()

    async def load(db: Database) -> tuple[IncidentFacts, Personal, str, str]:
        facts = (
            await _facts(db, incident, kind, settings.schedule.cadence, now)
            if incident is not None
            else sample_facts(kind)
        )
        personal, lang, zone = sample_personal(), language, timezone
        if customer is not None:
            async with db.session() as session:
                found = await session.get(Customer, customer)
            if found is None:
                raise LookupError(f"no customer with id {customer!r}")
            secret = await link_secret(settings, db, RealClock())
            unsubscribe, preferences = personal_links(
                settings.messages.public_url,
                secret,
                found.id,
                now + settings.messages.link_lifetime,
                now,
            )
            personal = Personal(
                name=found.name, unsubscribe_url=unsubscribe, preferences_url=preferences
            )
            lang, zone = found.language, found.timezone
        return facts, personal, lang, zone

    if incident is not None or customer is not None:
        try:
            facts, personal, lang, zone = run(with_database(settings, load))
        except LookupError as exc:
            raise fail(str(exc)) from None
    else:
        facts, personal, lang, zone = sample_facts(kind), sample_personal(), language, timezone
    request = RenderRequest(
        kind=kind,
        form=form,
        facts=facts,
        language=lang,
        timezone=zone,
        now=SAMPLE_NOW if incident is None else now,
        personal=personal,
        followup=SAMPLE_FOLLOWUP if kind == "followup_announcement" else None,
        task=SAMPLE_TASK if kind == "followup_task" else None,
    )
    _print(renderer.message(request), form)


def _print(message: Message, form: str) -> None:
    if form == "email":
        typer.echo(f"Subject: {message.subject}")
        for key, value in message.headers.items():
            typer.echo(f"{key}: {value}")
        typer.echo("\n--- text/plain ---\n" + message.text)
        typer.echo("--- text/html ---\n" + (message.html or ""))
    elif form == "sms":
        info = segments(message.text)
        typer.echo(message.text)
        typer.echo(f"--- {len(message.text)} characters, {info.segments} {info.encoding} segments")
    else:
        typer.echo(f"title: {message.subject}\nbody:  {message.text}")
