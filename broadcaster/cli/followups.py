"""``broadcaster followups``: the queue of forced human follow-ups."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer
from sqlalchemy import select

from broadcaster import operations
from broadcaster.cli.common import (
    ConfigOption,
    cli_actor,
    fail,
    run,
    settings_or_exit,
    with_database,
)
from broadcaster.clock import RealClock
from broadcaster.compose.locale import format_when
from broadcaster.config.settings import StaffMember
from broadcaster.followups import service
from broadcaster.followups.directory import Directory
from broadcaster.followups.notify import NO_POSTAL_ADDRESS, postal_lines
from broadcaster.store import ContactPoint, Customer, Database, Followup, Incident
from broadcaster.store.ids import MAX_ID

app = typer.Typer(help="Forced follow-ups: list, show, claim, done, waive.", no_args_is_help=True)

Staff = Annotated[str, typer.Option("--as", help="your staff id (from the staff directory)")]


def _known(settings_staff: set[str], staff: str) -> None:
    if staff not in settings_staff:
        raise fail(f"unknown staff id {staff!r}; see staff.people in the config", 2)


@app.command("list")
def list_(
    state: Annotated[str | None, typer.Option(help="open (default), done, waived, all")] = "open",
    owner: Annotated[
        str | None,
        typer.Option(help="only this person's tasks: those they own and those escalated to them"),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Follow-ups, soonest deadline first."""
    if state not in (None, "open", "claimed", "done", "waived", "all"):
        raise fail(f"--state: {state!r} is not one of open, claimed, done, waived, all", 2)
    settings = settings_or_exit(config)

    async def work(db: Database) -> list[str]:
        tasks = await service.list_followups(
            db, state=None if state == "all" else state, owner=owner
        )
        now = RealClock().now()
        return [
            f"{t.id:>5}  {t.state:<8} {t.kind:<15} {t.customer_id:<12} {t.owner:<12} "
            f"due {t.deadline_at:%Y-%m-%d %H:%M}Z"
            + ("  OVERDUE" if t.state in service.OPEN_STATES and t.deadline_at < now else "")
            + f"  incident {t.incident_id} ({t.rule})"
            + (f"  escalated to {owner}" if owner is not None and t.owner != owner else "")
            for t in tasks
        ]

    lines = run(with_database(settings, work))
    typer.echo(f"{'id':>5}  {'state':<8} {'kind':<15} {'customer':<12} {'owner':<12} deadline")
    for line in lines:
        typer.echo(line)


@app.command("show")
def show(
    followup_id: Annotated[int, typer.Argument(min=1, max=MAX_ID)],
    staff: Annotated[
        str | None,
        typer.Option(
            "--as", help="your staff id: the deadline in your time zone (default: staff.timezone)"
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """One follow-up: whom to contact and how, where a visit goes, the deadline, the outcome."""
    settings = settings_or_exit(config)
    if staff is not None:
        _known(set(settings.staff.people), staff)
    zone = settings.staff.timezone_of(staff) if staff is not None else settings.staff.timezone
    zone = zone or "UTC"

    async def work(db: Database) -> list[tuple[str, str]]:
        async with db.session() as session:
            task = await session.get(Followup, followup_id)
            if task is None:
                raise LookupError(f"no follow-up with id {followup_id}")
            customer = await session.get(Customer, task.customer_id)
            incident = await session.get(Incident, task.incident_id)
            points = (
                await session.execute(
                    select(ContactPoint.address)
                    .where(
                        ContactPoint.customer_id == task.customer_id,
                        ContactPoint.kind.in_(("email", "sms")),
                    )
                    .order_by(ContactPoint.id)
                )
            ).scalars()
            addresses = list(points)
        return _described(
            task, customer, incident, addresses, zone, settings.staff.people, RealClock().now()
        )

    try:
        rows = run(with_database(settings, work))
    except LookupError as exc:
        raise fail(str(exc)) from None
    for label, value in rows:
        first, *rest = value.split("\n")
        typer.echo(f"{label:<10} {first}")
        for line in rest:
            typer.echo(f"{'':<10} {line}")


def _described(
    task: Followup,
    customer: Customer | None,
    incident: Incident | None,
    addresses: list[str],
    zone: str,
    people: dict[str, StaffMember],
    now: datetime,
) -> list[tuple[str, str]]:
    """``followups show``'s lines at ``now``: (label, value), a value of several lines split
    at ``\\n``."""
    overdue = task.state in service.OPEN_STATES and task.deadline_at < now
    owner = people.get(task.owner)
    rows = [
        ("follow-up", f"{task.id}: {task.kind}, {task.state}" + ("  OVERDUE" if overdue else "")),
        ("incident", f"{task.incident_id}" + (f" {incident.title}" if incident else "")),
        ("rule", task.rule),
        ("owner", task.owner + (f" ({owner.name})" if owner is not None else "")),
    ]
    deadline = format_when(task.deadline_at, zone, "en", now, ahead=True)
    if customer is None:
        rows.append(("customer", task.customer_id))
    else:
        local = format_when(task.deadline_at, customer.timezone, "en", now, ahead=True)
        deadline += f" ({local} for the customer)"
        rows.append(("customer", f"{customer.id} {customer.name}"))
        rows.append(
            (
                "reach",
                f"{', '.join(addresses) or 'no phone or email on file'}; "
                f"they read {customer.language}; time zone {customer.timezone}",
            )
        )
        if task.kind == "visit":
            lines = postal_lines(customer.postal_address)
            rows.append(("address", "\n".join(lines) or NO_POSTAL_ADDRESS))
    rows.append(("deadline", deadline))
    if task.outcome:
        rows.append(("outcome", task.outcome + (f": {task.note}" if task.note else "")))
    return rows


@app.command("claim")
def claim(
    followup_id: Annotated[int, typer.Argument(min=1, max=MAX_ID)],
    staff: Staff,
    config: ConfigOption = None,
) -> None:
    """Take a follow-up: it becomes yours.

    Allowed to its owner, those its rule named or it escalated to, the owner's managers, admins."""
    settings = settings_or_exit(config)
    _known(set(settings.staff.people), staff)
    directory = Directory(settings.staff)

    async def work(db: Database) -> None:
        await operations.claim_followup(cli_actor(db, staff, directory=directory), followup_id)

    try:
        run(with_database(settings, work))
    except (service.FollowupError, LookupError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"follow-up {followup_id} claimed by {staff}")


@app.command("done")
def done(
    followup_id: Annotated[int, typer.Argument(min=1, max=MAX_ID)],
    outcome: Annotated[str, typer.Option(help=" | ".join(service.OUTCOMES))],
    note: Annotated[str, typer.Option(help="what was said or agreed")],
    staff: Staff,
    config: ConfigOption = None,
) -> None:
    """Record the outcome of a follow-up."""
    settings = settings_or_exit(config)
    _known(set(settings.staff.people), staff)

    async def work(db: Database) -> None:
        await operations.followup_done(
            cli_actor(db, staff, directory=Directory(settings.staff)), followup_id, outcome, note
        )

    try:
        run(with_database(settings, work))
    except (service.FollowupError, LookupError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"follow-up {followup_id} done: {outcome}")


@app.command("waive")
def waive(
    followup_id: Annotated[int, typer.Argument(min=1, max=MAX_ID)],
    reason: Annotated[str, typer.Option(help="why no one will follow up")],
    staff: Staff,
    config: ConfigOption = None,
) -> None:
    """Waive a follow-up (a manager of its owner, or an admin, only)."""
    settings = settings_or_exit(config)
    _known(set(settings.staff.people), staff)
    directory = Directory(settings.staff)

    async def work(db: Database) -> None:
        await operations.waive_followup(
            cli_actor(db, staff, directory=directory), followup_id, reason
        )

    try:
        run(with_database(settings, work))
    except (service.FollowupError, LookupError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"follow-up {followup_id} waived by {staff}")
