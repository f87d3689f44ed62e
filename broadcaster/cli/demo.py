"""``broadcaster demo``: the main job on the embedded default, in accelerated time."""

from __future__ import annotations

import asyncio
import textwrap
from typing import Annotated

import typer

from broadcaster.cli.common import ConfigOption, escalation_or_exit, settings_or_exit
from broadcaster.demo import Received, play


def demo(
    config: ConfigOption = None,
    full: Annotated[
        bool, typer.Option("--full/--short", help="print every message body, not just the first")
    ] = False,
) -> None:
    """Play an incident on the configuration, in fast time, sending nothing; show it all."""
    settings = settings_or_exit(config)
    escalation_or_exit(settings)  # a bad rules file: every problem with its place, exit 2
    typer.echo(
        "Broadcaster demo: the configuration's schedule, rules and staff on a fresh SQLite "
        "store,\nevery channel a local sink (nothing is sent anywhere), sample customers, "
        "a fake clock.\n"
    )
    report = asyncio.run(play(settings))
    typer.echo(f"Incident {report.incident_id} timeline (times UTC):")
    for line in report.timeline:
        typer.echo(f"  {line}" if line else "")
    typer.echo("\nWhat each customer received (channel, address, subject or first words):")
    shown: set[str] = set()
    for customer, who in report.customers.items():
        received = report.received.get(customer, [])
        typer.echo(f"\n  {customer} {who}: {len(received)} messages")
        for message in received:
            _echo(message, full or message.channel not in shown)
            shown.add(message.channel)
    typer.echo("\nWhat the staff were told:")
    if settings.staff.notify_channel is None:
        typer.echo("  nothing: no staff.notify_channel (tasks are on the console and the API)")
    for staff in sorted(report.staff_notices):
        notices = report.staff_notices[staff]
        typer.echo(f"\n  {staff}: {len(notices)} notices")
        for message in notices:
            _echo(message, full)
    typer.echo("\nThe follow-ups the rules forced:")
    for line in report.followups:
        typer.echo(f"  {line}")
    if not report.followups:
        typer.echo("  none: no rule of this configuration forces one for these customers")
    typer.echo(
        "\nCustomers subscribed only to other components got nothing. Run `broadcaster demo "
        "--full`\nto read every message; `broadcaster run` is the daemon on the same file."
    )


def _echo(message: Received, body: bool) -> None:
    title = message.subject or textwrap.shorten(message.text, 60, placeholder=" …")
    typer.echo(f"    {message.when:%H:%M}Z  {message.channel:<6} {message.address}  {title}")
    if body:
        typer.echo(textwrap.indent(message.text.rstrip(), "        | "))
