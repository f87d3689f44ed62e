"""What staff do, for the API and the console alike: each action runs the service and
writes the audit log, refused or not (who, what, when, from where, the outcome).

The CLI audits the same actions as ``cli:<login>`` (see ``broadcaster.cli.common``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar, cast

from sqlalchemy.ext.asyncio import AsyncSession

from broadcaster.access import audit
from broadcaster.access.credentials import Principal
from broadcaster.clock import Clock
from broadcaster.config.settings import StaffSettings
from broadcaster.escalation.holder import RulesHolder
from broadcaster.escalation.plan import Escalation
from broadcaster.followups import service as followups
from broadcaster.followups.directory import Directory
from broadcaster.incidents import service as incidents
from broadcaster.store import Also, Database, Followup, Incident, IncidentUpdate

T = TypeVar("T")

REFUSALS: tuple[type[Exception], ...] = (ValueError, LookupError)
"""What a service raises when it refuses an action (bad input, wrong state, unknown id)."""


@dataclass(frozen=True)
class Actor:
    """One caller's request: who, from where, and what they act with."""

    database: Database
    clock: Clock
    principal: Principal
    source: str
    escalation: Escalation | None = None
    directory: Directory | None = None

    async def run(
        self,
        action: str,
        target: str,
        work: Callable[[Also], Awaitable[T]],
        detail: Mapping[str, object] | None = None,
        describe: Callable[[T], str] | None = None,
        also: Also | None = None,
    ) -> T:
        """Run ``work``, which writes the audit entry inside its own transaction through the
        hook it is given (an action is never stored without its entry); a refusal is
        recorded on its own, since nothing else was written. ``also`` writes more in that
        transaction (the API's idempotency key)."""

        def audited(session: AsyncSession, result: object) -> None:
            session.add(
                audit.entry(
                    self.principal,
                    action,
                    describe(cast(T, result)) if describe else target,
                    self.source,
                    self.clock.now(),
                    detail=detail,
                )
            )
            if also is not None:
                also(session, result)

        try:
            return await work(audited)
        except REFUSALS as exc:
            await audit.record(
                self.database,
                self.clock,
                self.principal,
                action,
                target,
                self.source,
                outcome="refused",
                detail={**(detail or {}), "reason": str(exc)},
            )
            raise


class NoRulesFile(LookupError):
    """The daemon was started without a rules file (``rules.path``): nothing to reload."""


async def reload_rules(actor: Actor, holder: RulesHolder | None) -> bool:
    """Read the rules file again (off the event loop: parsing, the holder's lock): True if
    the new rules are active; False if the file has problems (``holder.error``) and the
    previous rules stay; :class:`NoRulesFile` without one. Each outcome is audited alike
    from the API and the console: target ``rules:<path>``, the problems in the detail."""
    if holder is None or holder.path is None:
        reason = "no rules file is configured (rules.path)"
        await audit.record(
            actor.database,
            actor.clock,
            actor.principal,
            "rules.reload",
            "rules",
            actor.source,
            outcome="refused",
            detail={"reason": reason},
        )
        raise NoRulesFile(reason)
    reloaded = await asyncio.to_thread(holder.reload)
    await audit.record(
        actor.database,
        actor.clock,
        actor.principal,
        "rules.reload",
        f"rules:{holder.path}",
        actor.source,
        outcome="ok" if reloaded else "refused",
        detail=None if reloaded else {"problems": (holder.error or "").splitlines()},
    )
    return reloaded


async def declare(
    actor: Actor, decl: incidents.Declaration, *, also: Also | None = None
) -> Incident:
    return await actor.run(
        "incident.declare",
        "incident:new",
        lambda audited: incidents.declare(actor.database, actor.clock, decl, also=audited),
        {"title": decl.title, "severity": decl.severity},
        lambda incident: f"incident:{incident.id}",
        also=also,
    )


async def post_update(
    actor: Actor,
    incident_id: int,
    request: incidents.UpdateRequest,
    *,
    also: Also | None = None,
) -> IncidentUpdate:
    return await actor.run(
        "incident.update",
        f"incident:{incident_id}",
        lambda audited: incidents.post_update(
            actor.database, actor.clock, incident_id, request, also=audited
        ),
        {
            key: value
            for key, value in (("status", request.status), ("severity", request.severity))
            if value
        }
        or None,
        also=also,
    )


async def resolve(
    actor: Actor,
    incident_id: int,
    request: incidents.UpdateRequest,
    *,
    also: Also | None = None,
) -> IncidentUpdate:
    return await actor.run(
        "incident.resolve",
        f"incident:{incident_id}",
        lambda audited: incidents.resolve(
            actor.database, actor.clock, incident_id, request, actor.escalation, also=audited
        ),
        also=also,
    )


async def close(actor: Actor, incident_id: int) -> Incident:
    return await actor.run(
        "incident.close",
        f"incident:{incident_id}",
        lambda also: incidents.close(
            actor.database, actor.clock, incident_id, actor.principal.name, also=also
        ),
    )


def _staff(actor: Actor, staff: str | None) -> str:
    """Whom a follow-up action is recorded for: the caller, or (admins only) a member of
    staff of the configuration (a name no one has, or blank, was recorded as given)."""
    if staff is None or staff == actor.principal.name:
        return actor.principal.name
    if actor.principal.role != "admin":
        raise followups.FollowupError(
            f"staff: only an admin may act for {staff!r}; you are {actor.principal.name!r}"
        )
    if actor.directory is not None and actor.directory.person(staff) is None:
        known = ", ".join(sorted(actor.directory.staff.people)) or "none"
        raise followups.FollowupError(f"staff: {staff!r} is not a member of staff (staff: {known})")
    return staff


def _for(actor: Actor, staff: str | None) -> dict[str, object]:
    """The audit detail of an admin acting for someone else: for whom."""
    return {} if staff is None or staff == actor.principal.name else {"for": staff}


async def claim_followup(actor: Actor, followup_id: int, staff: str | None = None) -> Followup:
    async def work(also: Also) -> Followup:
        return await followups.claim(
            actor.database,
            actor.clock,
            followup_id,
            _staff(actor, staff),
            actor.directory or Directory(StaffSettings()),
            admin=actor.principal.role == "admin",
            also=also,
        )

    return await actor.run(
        "followup.claim", f"followup:{followup_id}", work, _for(actor, staff) or None
    )


async def followup_done(
    actor: Actor, followup_id: int, outcome: str, note: str, staff: str | None = None
) -> Followup:
    async def work(also: Also) -> Followup:
        return await followups.done(
            actor.database,
            actor.clock,
            followup_id,
            _staff(actor, staff),
            outcome,
            note,
            also=also,
            directory=actor.directory or Directory(StaffSettings()),
            admin=actor.principal.role == "admin",
        )

    return await actor.run(
        "followup.done", f"followup:{followup_id}", work, {"outcome": outcome, **_for(actor, staff)}
    )


async def waive_followup(
    actor: Actor, followup_id: int, reason: str, staff: str | None = None
) -> Followup:
    async def work(also: Also) -> Followup:
        return await followups.waive(
            actor.database,
            actor.clock,
            followup_id,
            _staff(actor, staff),
            reason,
            actor.directory or Directory(StaffSettings()),
            admin=actor.principal.role == "admin",
            also=also,
        )

    return await actor.run(
        "followup.waive", f"followup:{followup_id}", work, _for(actor, staff) or None
    )
