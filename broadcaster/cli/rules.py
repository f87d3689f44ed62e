"""``broadcaster rules``: check a rules file, explain a decision."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from broadcaster.cli.common import ConfigOption, fail, run, settings_or_exit, with_database
from broadcaster.clock import RealClock
from broadcaster.config.settings import StaffSettings
from broadcaster.escalation.explaining import explain_incident
from broadcaster.escalation.holder import load_file
from broadcaster.followups.directory import Directory, NoOwner
from broadcaster.followups.service import NOBODY, owner_for
from broadcaster.store import Database
from broadcaster.store.ids import MAX_ID
from rules import RulesError, RuleSet

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


def owner_warnings(ruleset: RuleSet, staff: StaffSettings) -> list[str]:
    """Rules whose follow-up may have no owner of their own: the ``owner`` names nobody for
    some customers (``account_manager``, for a customer without one in the staff directory)
    and no ``escalation`` link names anyone for them either. Each warning is located at its
    rule and says whom the daemon then makes the owner with these staff settings (asked of
    :func:`broadcaster.followups.service.owner_for` itself, for such a customer), or that
    the task is kept unowned."""
    directory = Directory(staff)
    warnings: list[str] = []
    for rule in ruleset.rules:
        req = rule.followup
        if req is None:
            continue
        try:
            directory.resolve(req.owner, None)
            continue
        except NoOwner as exc:
            whom_not = (
                "a customer without an account manager in staff.people"
                if req.owner.kind == "account_manager"
                else f"some customers ({exc})"
            )
        owner, level, _ = owner_for(directory, req, None)
        if level > 0:
            continue  # a link of its escalation owns it: the rule's own choice
        if owner == NOBODY:
            whom = (
                "kept unowned, logged at error, until an admin claims or waives it (there is "
                "neither staff.unassigned_owner nor an admin: true in staff.people)"
            )
        elif owner == staff.unassigned_owner:
            whom = f"owned by staff.unassigned_owner, {owner}"
        else:
            whom = f"owned by the first admin in staff.people, {owner}"
        chain = "no link of its escalation does" if req.escalation else "it has no escalation"
        warnings.append(
            f"{rule.where}: rule {rule.name!r}: followup.owner {req.owner} names nobody for "
            f"{whom_not} and {chain}: such a follow-up is {whom}"
        )
    return warnings


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
