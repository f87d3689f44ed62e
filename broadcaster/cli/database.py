"""``broadcaster db``: schema migrations."""

from __future__ import annotations

import typer

from broadcaster.cli.common import ConfigOption, fail, settings_or_exit
from broadcaster.store import migrate

app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)


@app.command("upgrade")
def upgrade(
    revision: str = typer.Argument("head", help="target revision"),
    config: ConfigOption = None,
) -> None:
    """Bring the database schema up to date (safe to run again)."""
    settings = settings_or_exit(config)
    try:
        migrate.upgrade(settings.database.url, revision)
    except Exception as exc:
        raise fail(f"migration failed on {_safe(settings.database.url)}: {exc}") from None
    typer.echo(f"database at revision {revision}: {_safe(settings.database.url)}")


@app.command("downgrade")
def downgrade(
    revision: str = typer.Argument(..., help="target revision, e.g. base or -1"),
    config: ConfigOption = None,
) -> None:
    """Move the schema back to an earlier revision (drops data of later revisions)."""
    settings = settings_or_exit(config)
    try:
        migrate.downgrade(settings.database.url, revision)
    except Exception as exc:
        raise fail(f"downgrade failed on {_safe(settings.database.url)}: {exc}") from None
    typer.echo(f"database at revision {revision}")


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
