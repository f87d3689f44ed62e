"""``broadcaster``: the command line entry point and its sub-commands."""

from __future__ import annotations

import typer

from broadcaster import __version__
from broadcaster.cli import (
    access,
    channels,
    customers,
    daemon,
    database,
    demo,
    feeds,
    followups,
    incident,
    rules,
    templates,
)
from channels import http_transport

app = typer.Typer(
    help="Broadcaster: tells every affected customer about a disruption, on a promised schedule.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("run")(daemon.run)
app.command("demo")(demo.demo)
app.add_typer(database.app, name="db")
app.add_typer(incident.app, name="incident")
app.add_typer(customers.app, name="customers")
app.add_typer(templates.app, name="templates")
app.add_typer(channels.app, name="channels")
app.add_typer(rules.app, name="rules")
app.add_typer(followups.app, name="followups")
app.add_typer(feeds.app, name="feeds")
app.add_typer(access.tokens, name="tokens")
app.add_typer(access.accounts, name="accounts")
app.add_typer(access.audit_app, name="audit")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"broadcaster {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """Broadcaster command line."""


def main() -> None:
    """The CLI; a command that sent through an HTTP channel ends without the interpreter's
    finalization (:func:`channels.http_transport.exit_now`)."""
    http_transport.run_main(app)
