"""What every CLI command shares: loading settings, opening the store, printing errors."""

from __future__ import annotations

import asyncio
import getpass
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from alembic.util.exc import CommandError
from sqlalchemy import make_url
from sqlalchemy.exc import DatabaseError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from broadcaster.access.credentials import Principal
from broadcaster.clock import RealClock
from broadcaster.config import ConfigError, Settings, load_settings
from broadcaster.escalation.holder import RulesHolder
from broadcaster.escalation.plan import Escalation
from broadcaster.followups.directory import Directory
from broadcaster.operations import Actor
from broadcaster.store import Database
from broadcaster.store.migrate import upgrade_async
from rules import RulesError

T = TypeVar("T")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="config file (default: $BROADCASTER_CONFIG, else ./config.yaml, else the shipped one)",
        show_default=False,
    ),
]


def settings_or_exit(path: Path | None) -> Settings:
    """Load the config; on error print every problem with its location and exit 2."""
    try:
        return load_settings(path)
    except ConfigError as exc:
        typer.echo("error: invalid configuration", err=True)
        for problem in exc.problems:
            typer.echo(f"  {problem}", err=True)
        raise typer.Exit(2) from None


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` to stderr and return the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


STORE_ERRORS = (OperationalError, InterfaceError, OSError, PoolTimeoutError)
"""What opening or migrating an unreachable or unwritable store raises."""


def store_problem(url: str, exc: BaseException) -> str:
    """One line for an unusable store: its URL (no password) and the driver's reason."""
    where = make_url(url).render_as_string(hide_password=True)
    reason = getattr(exc, "orig", None) or exc
    return f"cannot open the store {where}: {reason}"


def check_sqlite_path(url: str) -> None:
    """For a SQLite store, make its folder and open the file once, synchronously: a path
    that cannot be opened fails here with sqlite's reason, before the async driver's worker
    threads are involved (they report a failed open late, as noise on a closed loop)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    path = Path(parsed.database)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        sqlite3.connect(path).close()
    except sqlite3.Error as exc:
        raise OSError(str(exc)) from None


async def with_database(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    """Open the store (bringing its schema up to date first) and run ``work`` on it."""
    try:
        database = Database.configured(settings.database)  # makes the dir
        check_sqlite_path(settings.database.url)
    except OSError as exc:
        raise fail(store_problem(settings.database.url, exc), 2) from None
    try:
        try:
            await upgrade_async(settings.database.direct)  # past any pooler
        except (*STORE_ERRORS, DatabaseError) as exc:  # unreachable, locked, not a database
            raise fail(store_problem(settings.database.direct, exc), 2) from None
        except CommandError as exc:  # a revision this version does not know: a newer one's
            raise fail(
                store_problem(settings.database.direct, exc)
                + " (was it written by a newer version of Broadcaster?)",
                2,
            ) from None
        try:
            return await work(database)
        except STORE_ERRORS as exc:  # locked by another process, gone away
            raise fail(store_problem(settings.database.url, exc), 2) from None
        except DatabaseError as exc:
            if type(exc) is not DatabaseError:  # an integrity or data error: the work's own
                raise
            raise fail(store_problem(settings.database.url, exc), 2) from None  # not a database
    finally:
        await database.dispose()


def escalation_or_exit(settings: Settings) -> Escalation:
    """The configured rules, loaded and checked; exit 2 listing every problem if bad."""
    holder = RulesHolder(settings)
    try:
        holder.load()
    except RulesError as exc:
        typer.echo("error: the rules file cannot be used", err=True)
        for problem in exc.problems:
            typer.echo(f"  {problem}", err=True)
        raise typer.Exit(2) from None
    return Escalation(settings, holder, Directory(settings.staff))


def login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


def cli_principal() -> Principal:
    """Whoever runs the CLI: it reaches the store directly, so it acts as an admin; the
    audit log records the login (``cli:<login>``)."""
    return Principal("cli", login_name(), "admin")


def cli_actor(
    database: Database,
    name: str,
    escalation: Escalation | None = None,
    directory: Directory | None = None,
) -> Actor:
    """A staff action from the CLI, audited as ``cli:<name>`` from ``cli (<login>)``; it
    acts with the operator role, so a waiver still needs a manager (staff.people)."""
    return Actor(
        database,
        RealClock(),
        Principal("cli", name, "operator"),
        f"cli ({login_name()})",
        escalation,
        directory,
    )
