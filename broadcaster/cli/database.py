"""``broadcaster db``: schema migrations."""

from __future__ import annotations

from typing import Annotated

import typer

from broadcaster.cli.common import (
    ConfigOption,
    check_sqlite_path,
    cli_principal,
    escalation_or_exit,
    fail,
    run,
    settings_or_exit,
    with_database,
)
from broadcaster.clock import RealClock
from broadcaster.config.durations import format_duration, parse_duration
from broadcaster.config.settings import a_retention
from broadcaster.incidents import retention
from broadcaster.store import Database, migrate

app = typer.Typer(help="Database schema (Alembic migrations) and retention.", no_args_is_help=True)


@app.command("upgrade")
def upgrade(
    revision: str = typer.Argument("head", help="target revision"),
    config: ConfigOption = None,
) -> None:
    """Bring the database schema up to date (safe to run again)."""
    settings = settings_or_exit(config)
    try:
        check_sqlite_path(settings.database.direct)  # a new store's folder (./data) made
        migrate.upgrade(settings.database.direct, revision)  # past any pooler
    except Exception as exc:
        raise fail(f"migration failed on {_safe(settings.database.direct)}: {exc}") from None
    url = settings.database.direct
    typer.echo(f"database at revision {_now_at(url)}: {_safe(url)}")


@app.command("downgrade")
def downgrade(
    revision: str = typer.Argument(
        ..., help="target revision: base, a revision id such as 0014, or -- -1 for one step back"
    ),
    config: ConfigOption = None,
) -> None:
    """Move the schema back to an earlier revision (drops data of later revisions)."""
    settings = settings_or_exit(config)
    try:
        migrate.downgrade(settings.database.direct, revision)
    except Exception as exc:
        raise fail(f"downgrade failed on {_safe(settings.database.direct)}: {exc}") from None
    typer.echo(f"database at revision {_now_at(settings.database.direct)}")


def _now_at(url: str) -> str:
    """The revision the store is at now (not the one asked for: ``head``, ``-1``)."""
    return run(migrate.current_revision(url)) or "base (no schema)"


@app.command("purge")
def purge(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="count what would go; delete nothing")
    ] = False,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="closed at least this long ago, e.g. 180d (default: retention.messages)",
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Delete the messages of incidents closed long enough ago (retention).

    Their deliveries, delivery history and staff notices go; the incidents themselves stay.

    See docs/operator-guide.md, "Retention"."""
    settings = settings_or_exit(config)
    keep = settings.retention.messages
    if older_than is not None:
        try:
            keep = a_retention(parse_duration(older_than))
        except ValueError as exc:
            raise fail(f"--older-than: {exc}", 2) from None
    if keep is None:
        raise fail(
            "nothing to purge by: set retention.messages in the configuration, or give "
            "--older-than",
            2,
        )
    ruleset = escalation_or_exit(settings).holder.current
    look_back = retention.lookback(settings, ruleset)

    async def work(db: Database) -> retention.Purged:
        return await retention.purge(
            db,
            RealClock().now(),
            keep,
            look_back,
            by=cli_principal(),
            batch=settings.retention.batch,
            dry_run=dry_run,
        )

    purged = run(with_database(settings, work))
    verb = "would purge" if dry_run else "purged"
    typer.echo(
        f"{verb} the messages of incidents closed more than {format_duration(keep)} ago "
        f"(and more than {format_duration(look_back)}, the longest the rules and throttles "
        f"look back): {purged}"
    )


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
