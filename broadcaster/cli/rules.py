"""``broadcaster rules``: check a rules file, explain a decision."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from broadcaster.cli.common import ConfigOption, fail, run, settings_or_exit, with_database
from broadcaster.clock import RealClock
from broadcaster.escalation.facts import customer_facts, incident_facts, load_customers
from broadcaster.escalation.holder import load_file
from broadcaster.store import Database, Incident
from rules import PlanSnapshot, RulesError, SnapshotError, explain

app = typer.Typer(help="Escalation rules: check and explain.", no_args_is_help=True)


@app.command("check")
def check(
    path: Annotated[Path | None, typer.Argument(help="rules file (default: rules.path)")] = None,
    config: ConfigOption = None,
) -> None:
    """Check a rules file against the configured channels and staff; exit 1 listing every
    error (file:line:column)."""
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
    typer.echo(f"{target}: ok ({len(ruleset.policies)} policies, {len(ruleset.rules)} rules)")


@app.command("explain")
def explain_(
    incident_id: Annotated[int, typer.Argument(help="incident id")],
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
        now = RealClock().now()
        async with db.session() as session:
            incident = await session.get(Incident, incident_id)
            if incident is None:
                raise LookupError(f"no incident with id {incident_id}")
            facts = await incident_facts(session, incident)
            person = None
            if customer is not None:
                loaded = await load_customers(session, [customer])
                found = await customer_facts(session, loaded, now, ruleset.history_window)
                if customer not in found:
                    raise LookupError(f"no customer with id {customer!r}")
                person = found[customer]
        plan = None
        if incident.plan is not None:
            try:
                plan = PlanSnapshot.from_dict(incident.plan)
            except SnapshotError:
                plan = None
        text = explain(ruleset, facts, person, now=now, plan=plan).render_text()
        if plan is not None:
            text += f"\n(escalation plan fixed at the first round: policy {plan.policy})"
        return text

    try:
        typer.echo(run(with_database(settings, work)))
    except LookupError as exc:
        raise fail(str(exc)) from None
