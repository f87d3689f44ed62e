"""Why the rules decide what they do for one incident (and one customer): for the CLI and API."""

from __future__ import annotations

from datetime import datetime

from broadcaster.escalation.facts import customer_facts, incident_facts, load_customers
from broadcaster.store import Database, Incident
from rules import Explanation, PlanSnapshot, RuleSet, SnapshotError, explain


async def explain_incident(
    database: Database,
    ruleset: RuleSet,
    incident_id: int,
    customer_id: str | None,
    now: datetime,
) -> tuple[Explanation, PlanSnapshot | None]:
    """The explanation and the plan fixed at the first round; LookupError for unknown ids."""
    async with database.session() as session:
        incident = await session.get(Incident, incident_id)
        if incident is None:
            raise LookupError(f"no incident with id {incident_id}")
        facts = await incident_facts(session, incident)
        person = None
        if customer_id is not None:
            loaded = await load_customers(session, [customer_id])
            found = await customer_facts(session, loaded, now, ruleset.history_window)
            if customer_id not in found:
                raise LookupError(f"no customer with id {customer_id!r}")
            person = found[customer_id]
    plan = None
    if incident.plan is not None:
        try:
            plan = PlanSnapshot.from_dict(incident.plan)
        except SnapshotError:
            plan = None
    return explain(ruleset, facts, person, now=now, plan=plan), plan
