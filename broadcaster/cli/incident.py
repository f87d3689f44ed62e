"""``broadcaster incident``: declare, update, resolve, close, list and show incidents."""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime
from typing import Annotated

import typer

from broadcaster import operations, unreached
from broadcaster.cli.access import shown
from broadcaster.cli.common import (
    ConfigOption,
    cli_actor,
    escalation_or_exit,
    fail,
    run,
    settings_or_exit,
    with_database,
)
from broadcaster.incidents import lifecycle, service
from broadcaster.incidents.lifecycle import TransitionError
from broadcaster.reports import incident_report
from broadcaster.store import Database
from broadcaster.store.ids import MAX_ID

app = typer.Typer(help="Declare and run incidents.", no_args_is_help=True)

Message = Annotated[str, typer.Option("--message", "-m", help="what customers read")]
CauseKind = Annotated[str | None, typer.Option("--cause-kind", help="known | suspected | unknown")]
Cause = Annotated[str | None, typer.Option("--cause", help="the cause, as customers read it")]
Author = Annotated[str, typer.Option("--author", help="who does this (default: your login)")]
Actions = Annotated[str | None, typer.Option("--actions", help="what is being done about it")]
Workaround = Annotated[
    str | None, typer.Option("--workaround", help="what customers can do meanwhile")
]
Expected = Annotated[
    datetime | None,
    typer.Option(
        "--expected-resolution",
        help="when you expect it resolved (ISO time, UTC unless it has an offset)",
        formats=["%Y-%m-%dT%H:%M%z", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"],
    ),
]


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _author(value: str) -> str:
    if value:
        return value
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


def _guard(error: Exception) -> typer.Exit:
    if isinstance(error, service.ResolutionRefused):
        flags = " ".join(
            "--cause-kind known --cause" if field == "cause" else f"--{field}"
            for field in error.missing
        )
        return fail(f"{error}; give {flags}")
    return fail(str(error))


@app.command("declare")
def declare(
    title: Annotated[str, typer.Option("--title", "-t", help="short title customers see")],
    message: Message,
    severity: Annotated[str, typer.Option("--severity", "-s", help="minor | major | critical")],
    component: Annotated[
        list[str] | None, typer.Option("--component", help="affected component (repeatable)")
    ] = None,
    region: Annotated[
        list[str] | None, typer.Option("--region", help="affected region (repeatable)")
    ] = None,
    status: Annotated[str, typer.Option(help="investigating | identified | monitoring")] = (
        "investigating"
    ),
    cause_kind: CauseKind = None,
    cause: Cause = None,
    actions: Actions = None,
    workaround: Workaround = None,
    expected_resolution: Expected = None,
    author: Author = "",
    config: ConfigOption = None,
) -> None:
    """Declare an incident: the first round goes out at once."""
    settings = settings_or_exit(config)
    decl = service.Declaration(
        title=title,
        severity=severity,
        message=message,
        components=component or [],
        regions=region or [],
        status=status,
        cause_kind=cause_kind or "unknown",
        cause=cause,
        author=_author(author),
        actions=actions,
        workaround=workaround,
        expected_resolution_at=_utc(expected_resolution),
    )

    async def work(db: Database) -> int:
        incident = await operations.declare(cli_actor(db, decl.author), decl)
        return incident.id

    try:
        incident_id = run(with_database(settings, work))
    except ValueError as exc:
        raise _guard(exc) from None
    typer.echo(f"declared incident {incident_id}")


@app.command("update")
def update(
    incident_id: Annotated[int, typer.Argument(help="incident id", min=1, max=MAX_ID)],
    message: Message,
    status: Annotated[
        str | None, typer.Option(help="investigating | identified | monitoring")
    ] = None,
    severity: Annotated[
        str | None,
        typer.Option(
            "--severity",
            "-s",
            help="minor | major | critical: the new severity (kept if not given)",
        ),
    ] = None,
    cause_kind: CauseKind = None,
    cause: Cause = None,
    actions: Actions = None,
    workaround: Workaround = None,
    expected_resolution: Expected = None,
    no_expected_resolution: Annotated[
        bool,
        typer.Option(
            "--no-expected-resolution",
            help="withdraw the expected resolution told before (customers read none)",
        ),
    ] = False,
    author: Author = "",
    config: ConfigOption = None,
) -> None:
    """Post an update: it goes out to the audience at once (reopens a resolved incident).

    Cause, actions, workaround and expected resolution carry over from the previous
    update unless given; give an empty string to clear one. A new severity applies from
    this update on: its cadence, the rules (follow-ups, apology requirements), urgency.
    ``--no-expected-resolution`` withdraws a time told before that no longer holds."""
    settings = settings_or_exit(config)
    if no_expected_resolution and expected_resolution is not None:
        raise fail("give --expected-resolution or --no-expected-resolution, not both")
    request = service.UpdateRequest(
        message,
        status,
        cause_kind,
        cause,
        _author(author),
        actions=actions,
        workaround=workaround,
        expected_resolution_at=_utc(expected_resolution),
        severity=severity,
        clear_expected_resolution=no_expected_resolution,
    )

    async def work(db: Database) -> None:
        await operations.post_update(cli_actor(db, request.author), incident_id, request)

    try:
        run(with_database(settings, work))
    except (ValueError, LookupError) as exc:
        raise _guard(exc) from None
    typer.echo(f"updated incident {incident_id}")


@app.command("resolve")
def resolve(
    incident_id: Annotated[int, typer.Argument(help="incident id", min=1, max=MAX_ID)],
    message: Message,
    cause_kind: CauseKind = None,
    cause: Cause = None,
    responsibility: Annotated[
        str | None, typer.Option(help="the apology: whose responsibility it was")
    ] = None,
    regret: Annotated[str | None, typer.Option(help="the apology: what we regret")] = None,
    remedy: Annotated[str | None, typer.Option(help="the apology: what we did to fix it")] = None,
    prevention: Annotated[
        str | None, typer.Option(help="the apology: what stops it happening again")
    ] = None,
    compensation: Annotated[
        str | None, typer.Option(help="what we offer to make it right (e.g. a credit)")
    ] = None,
    author: Author = "",
    config: ConfigOption = None,
) -> None:
    """Resolve: the resolution (a five-part apology) goes out and the rounds stop."""
    settings = settings_or_exit(config)
    request = service.UpdateRequest(
        message,
        None,
        cause_kind,
        cause,
        _author(author),
        responsibility=responsibility,
        regret=regret,
        remedy=remedy,
        prevention=prevention,
        compensation=compensation,
    )

    escalation = escalation_or_exit(settings)

    async def work(db: Database) -> None:
        await operations.resolve(cli_actor(db, request.author, escalation), incident_id, request)

    try:
        run(with_database(settings, work))
    except (ValueError, LookupError) as exc:
        raise _guard(exc) from None
    typer.echo(f"resolved incident {incident_id}")


@app.command("close")
def close(
    incident_id: Annotated[int, typer.Argument(help="incident id", min=1, max=MAX_ID)],
    author: Author = "",
    config: ConfigOption = None,
) -> None:
    """Close a resolved incident (no message to customers)."""
    settings = settings_or_exit(config)

    async def work(db: Database) -> None:
        await operations.close(cli_actor(db, _author(author)), incident_id)

    try:
        run(with_database(settings, work))
    except (TransitionError, LookupError) as exc:
        raise _guard(exc) from None
    typer.echo(f"closed incident {incident_id}")


@app.command("list")
def list_(
    status: Annotated[
        str | None, typer.Option(help="open, or one status (investigating … closed)")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    config: ConfigOption = None,
) -> None:
    """List incidents, newest first."""
    if status is not None and status != "open" and status not in lifecycle.STATUSES:
        known = ", ".join(("open", *lifecycle.STATUSES))
        raise fail(f"--status: {status!r} is not one of {known}", 2)
    settings = settings_or_exit(config)

    async def work(db: Database) -> list[str]:
        rows = await service.list_incidents(db, status=status, limit=limit)
        return [
            f"{i.id:>6}  {i.status:<13} {i.severity:<8} {i.created_at:%Y-%m-%d %H:%M}Z  {i.title}"
            for i in rows
        ]

    lines = run(with_database(settings, work))
    typer.echo(f"{'id':>6}  {'status':<13} {'severity':<8} {'declared':<17}  title")
    for line in lines:
        typer.echo(line)


@app.command("show")
def show(
    incident_id: Annotated[int, typer.Argument(help="incident id", min=1, max=MAX_ID)],
    config: ConfigOption = None,
) -> None:
    """Show an incident: scope, timeline, rounds, promises and delivery counts."""
    settings = settings_or_exit(config)

    async def work(db: Database) -> list[str]:
        report = await incident_report(db, incident_id)
        view, per_round = report.view, report.per_round
        i = view.incident
        out = [
            f"incident {i.id}: {i.title}",
            f"  severity {i.severity}, status {i.status}, "
            f"declared {i.created_at:%Y-%m-%d %H:%M:%S}Z"
            + (f" by {i.declared_by}" if i.declared_by else ""),
            f"  components: {', '.join(view.components) or '-'}; "
            f"regions: {', '.join(view.regions) or '-'}",
            "timeline:",
        ]
        for u in view.updates:
            cause = f" [cause {u.cause_kind}: {u.cause}]" if u.cause else ""
            out.append(f"  {u.created_at:%H:%M:%S}Z {u.kind:<9} {u.status:<13} {u.message}{cause}")
        out.append("rounds:")
        for r in view.rounds:
            states = ", ".join(f"{k} {v}" for k, v in sorted(per_round.get(r.id, {}).items()))
            promise = f", promised next by {r.next_due_at:%H:%M:%S}Z" if r.next_due_at else ""
            out.append(
                f"  #{r.number:<3} {r.kind:<10} {r.state:<12} due {r.due_at:%H:%M:%S}Z"
                f"{promise}  [{states or 'no deliveries'}]"
            )
        channels = {
            channel: [f"{state} {count}" for state, count in states.items()]
            for channel, states in report.by_channel.items()
        }
        out.append("deliveries by channel:")
        out += [f"  {name:<10} {', '.join(states)}" for name, states in channels.items()]
        if i.messages_purged_at is not None:
            out.append(
                f"  purged {i.messages_purged_at:%Y-%m-%d %H:%M}Z under retention.messages "
                "(deliveries, their history and staff notices)"
            )
        elif not channels:
            out.append("  none yet")
        out.append(_not_reached(await unreached.unreached_counts(db, incident_id)))
        out += [f"capacity warning: {warning}" for warning in report.capacity_warnings]
        tasks = report.followups
        out.append("follow-ups:" if tasks else "follow-ups: none")
        out += [
            f"  #{t.id:<4} {t.state:<8} {t.kind:<14} {t.customer_id:<12} owner {t.owner:<10} "
            f"due {t.deadline_at:%Y-%m-%d %H:%M}Z  ({t.rule})"
            + (f"  outcome {t.outcome}" if t.outcome else "")
            for t in tasks
        ]
        summary = ", ".join(
            f"{p.state} {p.count}"
            + (
                f" (worst {p.worst_lateness_s:.0f}s late)"
                if p.state == "late" and p.worst_lateness_s
                else ""
            )
            for p in report.promises
        )
        out.append(f"promises: {summary or 'none'}")
        return out

    try:
        lines = run(with_database(settings, work))
    except LookupError as exc:
        raise _guard(exc) from None
    for line in lines:
        typer.echo(line)


def _not_reached(counts: unreached.UnreachedCounts) -> str:
    """``incident show``'s line of the customers not reached (``incident unreached`` lists
    them)."""
    if counts.purged:
        return "not reached: not known (its deliveries were purged)"
    reasons = ", ".join(f"{reason} {n}" for reason, n in counts.by_reason.items() if n)
    return (
        f"not reached: {counts.unreached}"
        + (f" ({reasons})" if reasons else "")
        + f", and {counts.still_trying} still being tried"
    )


def _outcome_line(outcome: unreached.ChannelOutcome) -> str:
    at = f"{outcome.at:%Y-%m-%d %H:%M:%S}Z"
    if outcome.next_attempt_at is not None:
        at += f", next try {outcome.next_attempt_at:%Y-%m-%d %H:%M:%S}Z"
    error = f"  {shown(outcome.last_error)}" if outcome.last_error else ""
    return f"{shown(outcome.channel):<10} {outcome.state:<11} {at}{error}"


@app.command("unreached")
def unreached_(
    incident_id: Annotated[int, typer.Argument(help="incident id", min=1, max=MAX_ID)],
    limit: Annotated[
        int, typer.Option(help="customers on the page", min=1, max=unreached.MAX_LIMIT)
    ] = 50,
    after: Annotated[
        str | None, typer.Option(help="the page after this customer id (the last one shown)")
    ] = None,
    only: Annotated[
        str | None, typer.Option(help="final (not reached for good) or trying (not yet)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the page as one JSON object")] = False,
    config: ConfigOption = None,
) -> None:
    """The customers the incident has not reached: none of its messages went out to them.

    "not yet" while a delivery of theirs is still queued or retried; otherwise what became
    of their latest delivery on each channel, or no_address: in the incident's audience (as
    it is now) with no delivery at all, no usable address when its rounds were written.
    Pages by customer id (--after)."""
    try:
        unreached.check_page(after, limit, only)
        chosen = unreached.only_of(only)
    except ValueError as exc:
        raise fail(f"--{exc}", 2) from None
    settings = settings_or_exit(config)

    async def work(db: Database) -> tuple[unreached.UnreachedCounts, unreached.UnreachedPage]:
        return await unreached.unreached_report(
            db, incident_id, after=after, limit=limit, only=chosen
        )

    try:
        counts, page = run(with_database(settings, work))
    except LookupError as exc:
        raise _guard(exc) from None
    if as_json:
        typer.echo(json.dumps({"incident_id": incident_id, **unreached.as_dict(counts, page)}))
        return
    typer.echo(f"incident {incident_id}: {_not_reached(counts)}")
    if page.customers:
        typer.echo(f"{'customer':<16} {'name':<24} {'status':<12} channel    state       at")
    for c in page.customers:
        status = "not yet" if c.still_trying else c.reason
        head = f"{shown(c.customer_id):<16} {shown(c.name)[:24]:<24} {status:<12} "
        if not c.channels:  # no_address: no delivery at all
            typer.echo(f"{head}{'-':<10} no usable address on any channel")
        for n, outcome in enumerate(c.channels):
            typer.echo((head if n == 0 else " " * len(head)) + _outcome_line(outcome))
    if page.next_after is not None:
        typer.echo(f"more: --after {shown(page.next_after)}")
