"""``broadcaster rules``: check a rules file, explain a decision."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from broadcaster.cli.common import ConfigOption, fail, run, settings_or_exit, with_database
from broadcaster.clock import RealClock
from broadcaster.escalation.explaining import explain_incident
from broadcaster.escalation.holder import load_file
from broadcaster.followups.checks import owner_warnings
from broadcaster.store import Database
from broadcaster.store.ids import MAX_ID
from rules import RulesError

app = typer.Typer(help="Escalation rules: check and explain.", no_args_is_help=True)


@app.command("check")
def check(
    path: Annotated[Path | None, typer.Argument(help="rules file (default: rules.path)")] = None,
    config: ConfigOption = None,
) -> None:
    """Check a rules file against the configured channels and staff.

    Exit code 1 if it has errors, each listed with its file:line:column. Warnings (a
    follow-up whose owner may name nobody for some customers, with whom it then falls back
    to) are listed too and do not fail the check."""
    settings = settings_or_exit(config)
    target = path or settings.rules.path
    if target is None:
        raise fail("no rules file: give PATH or set rules.path in the config", 2)
    try:
        ruleset = load_file(target, settings)
    except RulesError as exc:
        for problem in exc.problems:
            typer.echo(f"error: {problem}", err=True)
        typer.echo(f"{target}: {len(exc.problems)} error(s)")
        raise typer.Exit(1) from None
    warnings = owner_warnings(ruleset, settings.staff)
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)
    counted = f", {len(warnings)} warning(s)" if warnings else ""
    typer.echo(
        f"{target}: ok ({len(ruleset.policies)} policies, {len(ruleset.rules)} rules{counted})"
    )


@app.command("explain")
def explain_(
    incident_id: Annotated[int, typer.Argument(help="incident id", min=1, max=MAX_ID)],
    customer: Annotated[str | None, typer.Option("--customer", help="customer id")] = None,
    config: ConfigOption = None,
) -> None:
    """Which rules matched an incident (and a customer), why, and the decision."""
    settings = settings_or_exit(config)
    if settings.rules.path is None:
        raise fail("no rules file configured (rules.path)", 2)
    try:
        ruleset = load_file(settings.rules.path, settings)
    except RulesError as exc:
        raise fail("the rules file cannot be used:\n  " + "\n  ".join(exc.problems), 2) from None

    async def work(db: Database) -> str:
        explanation, plan = await explain_incident(
            db, ruleset, incident_id, customer, RealClock().now()
        )
        text = explanation.render_text()
        if plan is not None:
            text += f"\n(escalation plan fixed at the first round: policy {plan.policy})"
        return text

    try:
        typer.echo(run(with_database(settings, work)))
    except LookupError as exc:
        raise fail(str(exc)) from None
