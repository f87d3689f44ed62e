"""``broadcaster customers …``: bring customers into the store from files.

Exit codes of ``import`` are meant for scripts: 0 every row imported, 1 some rows rejected
(the good ones are still imported), 2 the input is unusable and nothing was imported.
"""

from __future__ import annotations

import functools
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from broadcaster.access import audit
from broadcaster.cli.common import (
    ConfigOption,
    cli_principal,
    fail,
    run,
    settings_or_exit,
    with_database,
)
from broadcaster.clock import RealClock
from broadcaster.customers import (
    ImportInputError,
    ImportResult,
    RowError,
    RowWarning,
    detect_format,
    import_customers,
)
from broadcaster.store import Database

app = typer.Typer(
    help="Manage customers: import them from CSV or JSON Lines.", no_args_is_help=True
)


def stderr_is_terminal() -> bool:
    """Whether a person is watching (progress bar) or a script is (plain lines only)."""
    return sys.stderr.isatty()


class FileFormat(StrEnum):
    csv = "csv"
    jsonl = "jsonl"


@app.callback()
def customers() -> None:
    """Manage customers: import them from CSV or JSON Lines."""


@app.command("import")
def import_command(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE", help="CSV (.csv) or JSON Lines (.jsonl, .ndjson)", show_default=False
        ),
    ],
    fmt: Annotated[
        FileFormat | None,
        typer.Option("--format", help="file format, when the extension does not say"),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Import customers (upsert; re-importing the same file changes nothing).

    Columns / keys: id, name, language, timezone, email, phone, push_tokens, components,
    regions, channels, tier, tags, region, sla, account_manager, postal_address.

    Lists are separated by ';' in CSV and are arrays in JSON Lines (one object per line).
    Push tokens name their provider: fcm:TOKEN, apns:HEX, ntfy:TOPIC, webpush:{JSON}.
    channels is the customer's preferred channel order for failover (e.g. sms;email), names
    of channels in the configuration.
    tier (default standard) and tags (a list) are words of a-z, 0-9, _ and -; region and
    sla are free text; account_manager is a staff id (one not in the configuration's staff
    directory is imported with a warning). Re-importing overwrites all of them, but
    postal_address (where a visit goes; its lines in one quoted CSV cell, or joined by \\n in
    JSON, at most 10 lines and 500 characters): a file without it keeps the one on file, and
    an empty value removes it.

    Known contact points keep their opt-out and disabled flags (an email that changes only in
    case too); a customer opted out of every address is opted out on new ones; subscriptions
    are replaced.
    """
    settings = settings_or_exit(config)
    file_format = fmt.value if fmt is not None else None
    try:  # fail fast, before the store is opened (or created) for nothing
        detected = detect_format(file, file_format)
    except ImportInputError as exc:
        raise fail(str(exc), code=2) from None
    if not file.is_file():
        raise fail(f"{file}: no such file", code=2)
    channels = settings.channels  # a preferred order may only name configured channels
    interactive = stderr_is_terminal()
    console = Console(stderr=True)

    def report(error: RowError) -> None:
        line = f"warning: {error}" if isinstance(error, RowWarning) else str(error)
        if interactive:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            typer.echo(line, err=True)

    async def work(database: Database) -> ImportResult:
        result = await import_rows(database)
        # As the API does: customer data written (personal data) goes in the audit log.
        await audit.record(
            database,
            RealClock(),
            cli_principal(),
            "customer.import",
            "customers",
            "cli",
            detail={
                "imported": result.imported,
                "rejected": result.rejected,
                "warned": result.warned,
                "format": detected,
            },
        )
        return result

    async def import_rows(database: Database) -> ImportResult:
        run_import = functools.partial(
            import_customers,
            database,
            file,
            clock=RealClock(),
            fmt=file_format,
            channels=channels,
            staff=settings.staff.people,
            on_error=report,
        )
        if not interactive:
            return await run_import()
        with Progress(
            TextColumn("importing"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("import", total=file.stat().st_size)
            return await run_import(on_progress=lambda done: progress.update(task, completed=done))

    try:
        result = run(with_database(settings, work))
    except ImportInputError as exc:
        raise fail(str(exc), code=2) from None
    warned = f", {result.warned} with warnings" if result.warned else ""
    typer.echo(f"imported {result.imported} customers{warned}, rejected {result.rejected} rows")
    if not result.imported and not result.rejected:  # a CRM export that failed half-way
        typer.echo(f"warning: {file} lists no customers (nothing was changed)", err=True)
    if result.rejected:
        raise typer.Exit(1)
