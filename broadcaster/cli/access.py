"""``broadcaster tokens``, ``broadcaster accounts`` and ``broadcaster audit``: who may use
the API and the console, and what everyone did."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta
from typing import Annotated

import typer

from broadcaster.access import audit, credentials
from broadcaster.access.credentials import CredentialError
from broadcaster.access.roles import ROLES, WHAT_ROLES_MAY
from broadcaster.cli.common import (
    ConfigOption,
    cli_principal,
    fail,
    run,
    settings_or_exit,
    with_database,
)
from broadcaster.clock import RealClock
from broadcaster.config.durations import parse_duration
from broadcaster.store import Database
from broadcaster.store.ids import MAX_ID

tokens = typer.Typer(help="API tokens: create, list, revoke.", no_args_is_help=True)
accounts = typer.Typer(help="Console logins: set, disable, list.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log of operator and admin actions.", no_args_is_help=True)


def shown(value: object) -> str:
    """``value`` for a terminal or a log: each character that is not printable (control
    characters, line breaks, escape sequences, bidi overrides) as its Python escape and a
    backslash doubled, so a stored name can neither forge a line nor drive the terminal."""
    text = str(value)
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(
        c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode("ascii")
        for c in text
    )


RoleOption = Annotated[
    str,
    typer.Option(
        "--role",
        help="; ".join(f"{role}: {WHAT_ROLES_MAY[role]}" for role in ROLES),
    ),
]


DEFAULT_TOKEN_LIFETIME = "90d"  # noqa: S105 - a duration, not a secret
"""How long a token lasts unless ``--expires`` says otherwise: a token forgotten in a
script or a leaked log stops working by itself."""


@tokens.command("create")
def create_token(
    role: RoleOption,
    name: Annotated[str, typer.Option("--name", help="who or what holds it (for the audit log)")],
    expires: Annotated[
        str,
        typer.Option(
            "--expires",
            help="lifetime, e.g. 90d or 12h; 'never' for a token that lasts until revoked",
        ),
    ] = DEFAULT_TOKEN_LIFETIME,
    config: ConfigOption = None,
) -> None:
    """Create a token and print it once; only its hash is stored."""
    settings = settings_or_exit(config)
    lifetime: timedelta | None = None
    if expires.strip().lower() != "never":
        try:
            lifetime = parse_duration(expires)
        except ValueError as exc:
            raise fail(f"--expires: {exc}", 2) from None

    async def work(db: Database) -> tuple[int, str, datetime | None]:
        actor = cli_principal()
        row, secret = await credentials.create_token(
            db, RealClock(), name=name, role=role, created_by=actor.actor, lifetime=lifetime
        )
        await audit.record(
            db,
            RealClock(),
            actor,
            "token.create",
            f"token:{row.id}",
            "cli",
            detail={"name": row.name, "role": row.role},
        )
        return row.id, secret, row.expires_at

    try:
        token_id, secret, expires_at = run(with_database(settings, work))
    except CredentialError as exc:
        raise fail(str(exc), 2) from None
    until = f"expires {expires_at:%Y-%m-%d %H:%M}Z" if expires_at else "never expires"
    typer.echo(
        f"token {token_id} ({role}, for {name}, {until}); shown once, keep it secret:", err=True
    )
    typer.echo(secret)


@tokens.command("list")
def list_tokens(config: ConfigOption = None) -> None:
    """Every token: id, name, role, state, last use (never the secret)."""
    settings = settings_or_exit(config)
    rows = run(with_database(settings, credentials.list_tokens))
    now = RealClock().now()
    typer.echo(f"{'id':>4}  {'name':<20} {'role':<9} {'prefix':<11} {'state':<8} last used")
    for row in rows:
        state = (
            "revoked"
            if row.revoked_at
            else "expired"
            if row.expires_at and row.expires_at <= now
            else "active"
        )
        used = f"{row.last_used_at:%Y-%m-%d %H:%M}Z" if row.last_used_at else "never"
        typer.echo(
            f"{row.id:>4}  {shown(row.name):<20} {row.role:<9} {row.prefix:<11} {state:<8} {used}"
        )


@tokens.command("revoke")
def revoke_token(
    token_id: Annotated[
        int, typer.Argument(help="token id (see 'tokens list')", min=1, max=MAX_ID)
    ],
    config: ConfigOption = None,
) -> None:
    """Revoke a token: it stops working at once."""
    settings = settings_or_exit(config)

    async def work(db: Database) -> None:
        await credentials.revoke_token(db, RealClock(), token_id)
        await audit.record(
            db, RealClock(), cli_principal(), "token.revoke", f"token:{token_id}", "cli"
        )

    try:
        run(with_database(settings, work))
    except CredentialError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"token {token_id} revoked")


@accounts.command("set")
def set_account(
    name: Annotated[str, typer.Argument(help="the staff id (as in staff.people)")],
    role: RoleOption,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from standard input")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Create a console login, or change its role and password."""
    settings = settings_or_exit(config)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    if name not in settings.staff.people:
        typer.echo(
            f"warning: {name!r} is not in staff.people; follow-ups cannot be assigned to it",
            err=True,
        )

    async def work(db: Database) -> None:
        await credentials.set_account(db, RealClock(), name=name, role=role, password=password)
        await audit.record(
            db,
            RealClock(),
            cli_principal(),
            "account.set",
            f"account:{name}",
            "cli",
            detail={"role": role},
        )

    try:
        run(with_database(settings, work))
    except CredentialError as exc:
        raise fail(str(exc), 2) from None
    typer.echo(f"account {name} ({role}) ready")


@accounts.command("disable")
def disable_account(
    name: Annotated[str, typer.Argument(help="the account's staff id")],
    config: ConfigOption = None,
) -> None:
    """Disable a login and end its sessions."""
    settings = settings_or_exit(config)

    async def work(db: Database) -> None:
        await credentials.disable_account(db, RealClock(), name)
        await audit.record(
            db, RealClock(), cli_principal(), "account.disable", f"account:{name}", "cli"
        )

    try:
        run(with_database(settings, work))
    except CredentialError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"account {name} disabled")


@accounts.command("list")
def list_accounts(config: ConfigOption = None) -> None:
    """Every console login: staff id, role, active or disabled."""
    settings = settings_or_exit(config)
    rows = run(with_database(settings, credentials.list_accounts))
    for row in rows:
        state = "disabled" if row.disabled_at else "active"
        typer.echo(f"{shown(row.name):<20} {row.role:<9} {state}")


@audit_app.command("list")
def list_audit(
    limit: Annotated[int, typer.Option(help="how many, newest first", min=1, max=10_000)] = 50,
    actor: Annotated[str | None, typer.Option(help="e.g. account:alice, token:ci")] = None,
    action: Annotated[str | None, typer.Option(help="e.g. incident.declare")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    config: ConfigOption = None,
) -> None:
    """The audit log, newest first."""
    settings = settings_or_exit(config)

    async def work(db: Database) -> list[dict[str, object]]:
        async with db.session() as session:
            rows = await audit.recent(session, limit=limit, actor=actor, action=action)
        return [audit.as_dict(row) for row in rows]

    for item in run(with_database(settings, work)):
        if as_json:
            typer.echo(json.dumps(item, default=str))
        else:
            typer.echo(
                f"{item['at']}  {shown(item['actor']):<20} {shown(item['action']):<18} "
                f"{shown(item['target']):<16} {shown(item['outcome']):<8} "
                f"from {shown(item['source'])}"
            )
