"""``broadcaster demo``: the whole loop on the embedded default, in accelerated time."""

from __future__ import annotations

import asyncio
import textwrap
from typing import Annotated

import typer

from broadcaster.cli.common import ConfigOption, settings_or_exit
from broadcaster.demo import play


def demo(
    config: ConfigOption = None,
    full: Annotated[
        bool, typer.Option("--full/--short", help="print every message body, not just the first")
    ] = False,
) -> None:
    """Play an incident from declaration to apology through a local SMTP server; print it all."""
    settings = settings_or_exit(config)
    typer.echo("Broadcaster demo: a local SMTP server, sample customers, a fake clock.\n")
    report = asyncio.run(play(settings))
    typer.echo(f"Incident {report.incident_id} timeline (times UTC):")
    for line in report.timeline:
        typer.echo(f"  {line}" if line else "")
    typer.echo("\nWhat each customer received (SMTP server's view):")
    shown = False
    for recipient in sorted(report.mail):
        received = report.mail[recipient]
        typer.echo(f"\n  {recipient}: {len(received)} messages")
        for mail in received:
            typer.echo(f"    {mail.when:%H:%M}Z  {mail.subject}")
            if full or not shown:
                typer.echo(textwrap.indent(mail.text.rstrip(), "        | "))
        shown = True
    typer.echo(
        "\nCustomers subscribed only to other components, or with no email address, got "
        "nothing.\nRun `broadcaster demo --full` to read every message."
    )
