"""The engine: one step of each stage of the flow, shared by the daemon and the demo.

It holds no state the store does not have: every call reads what is due from the store,
so the daemon (woken by APScheduler) and the demo (driven by a fake clock) run the same
code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from broadcaster.access.credentials import Principal
from broadcaster.clock import Clock
from broadcaster.compose.render import Renderer
from broadcaster.compose.templates import TemplateSet
from broadcaster.config.settings import Settings
from broadcaster.dispatch.worker import Dispatcher
from broadcaster.escalation.holder import RulesHolder
from broadcaster.escalation.plan import Escalation
from broadcaster.followups.directory import Directory
from broadcaster.followups.notify import send_due_notices
from broadcaster.followups.service import Notice, due_notices
from broadcaster.incidents import retention
from broadcaster.incidents.lifecycle import OPEN_STATUSES
from broadcaster.outbox.materialise import ChannelRoute, materialise_round
from broadcaster.schedule.capacity import check_round, queued_elsewhere
from broadcaster.schedule.leader import count_daemons
from broadcaster.schedule.rounds import (
    ClaimedRound,
    LostLease,
    claim_due_round,
    next_wakeup,
    release_round,
)
from broadcaster.store import Database, Delivery, Incident, Round
from broadcaster.store.retry import store_unreachable
from broadcaster.store.secrets import get_or_create_secret
from channels.base import Channel

log = logging.getLogger("broadcaster.engine")


LEASE_OWNER_LENGTH = 64
"""The store's ``lease_owner`` columns hold this many characters."""


def make_owner(host: str | None = None) -> str:
    """A lease owner id unique to this process: host, pid and a random tag, within
    :data:`LEASE_OWNER_LENGTH` (a long host name, a fully qualified one, is cut: every
    claim wrote it and failed with "value too long" on PostgreSQL)."""
    tail = f":{os.getpid()}:{secrets.token_hex(3)}"
    name = socket.gethostname() if host is None else host
    return name[: LEASE_OWNER_LENGTH - len(tail)] + tail


def make_renderer(settings: Settings) -> Renderer:
    messages = settings.messages
    return Renderer(
        TemplateSet(messages.templates_dir, messages.default_language),
        organisation=messages.organisation,
        public_url=messages.public_url,
        sms_max_segments=messages.sms_max_segments,
    )


async def link_secret(settings: Settings, database: Database, clock: Clock) -> str:
    configured = settings.messages.link_secret
    if configured is not None and configured.get_secret_value():
        return configured.get_secret_value()
    return await get_or_create_secret(database, "link-signing", clock)


class Engine:
    def __init__(
        self,
        settings: Settings,
        database: Database,
        clock: Clock,
        channels: Mapping[str, Channel],
        owner: str | None = None,
        *,
        link_secret: str,
        rules: RulesHolder | None = None,
    ) -> None:
        self.settings = settings
        self.rules = rules or RulesHolder(settings)
        self._capacity: dict[int, list[str]] = {}
        self.directory = Directory(settings.staff)
        self.escalation = Escalation(settings, self.rules, self.directory)
        self.database = database
        self.clock = clock
        self.channels = channels
        self.owner = owner or make_owner()
        self.routes = [
            ChannelRoute(name, channels[name].contact) for name in settings.delivery.channels
        ]
        self.renderer = make_renderer(settings)
        self.dispatcher = Dispatcher(
            database,
            clock,
            channels,
            settings.delivery,
            settings.messages,
            self.owner,
            self.renderer,
            link_secret,
            staff_names={sid: p.name for sid, p in settings.staff.people.items()},
        )

    @classmethod
    async def create(
        cls,
        settings: Settings,
        database: Database,
        clock: Clock,
        channels: Mapping[str, Channel],
        owner: str | None = None,
        rules: RulesHolder | None = None,
    ) -> Engine:
        """An engine with the link secret from config (or the store's) and its rules loaded
        (raises ``rules.RulesError`` when the rules file is bad: start-up fails)."""
        holder = rules or RulesHolder(settings)
        if holder.current is None:
            holder.load()
        return cls(
            settings,
            database,
            clock,
            channels,
            owner,
            link_secret=await link_secret(settings, database, clock),
            rules=holder,
        )

    def routes_for(self, channels: str | None) -> list[ChannelRoute]:
        """The routes of a round: its escalation step's channels, else the configured ones."""
        names = [n for n in (channels or "").split(",") if n in self.channels]
        if not names:
            return self.routes
        return [ChannelRoute(name, self.channels[name].contact) for name in names]

    def fallbacks_for(self, routes: list[ChannelRoute]) -> list[ChannelRoute]:
        """Where a customer unreachable on every route of a round gets it instead: the
        other configured channels, in the failover order (``delivery.failover``, else
        ``delivery.channels``)."""
        taken = {route.name for route in routes}
        order = [*self.settings.delivery.failover, *self.settings.delivery.channels]
        names = [n for n in dict.fromkeys(order) if n in self.channels and n not in taken]
        return [ChannelRoute(name, self.channels[name].contact) for name in names]

    async def send_staff_notices(self) -> int:
        """Send the staff notices that are due (queued in the transactions that made them
        due: follow-ups assigned, reminders, escalations, escalation steps), and those to
        try again; returns how many went out."""
        name = self.settings.staff.notify_channel
        return await send_due_notices(
            self.database,
            self.clock,
            self.channels.get(name) if name else None,
            self.renderer,
            self.directory,
            owner=self.owner,
            settings=self.settings.delivery,
            public_url=self.settings.messages.public_url,
            history_window=retention.history_window(self.settings, self.rules.current),
        )

    async def purge_messages(
        self, keep: timedelta, keep_going: Callable[[], bool] = lambda: True
    ) -> retention.Purged:
        """Purge the messages of the incidents closed at least ``keep`` ago that no rule or
        throttle looks back at any more (:mod:`broadcaster.incidents.retention`), while
        ``keep_going``."""
        return await retention.purge(
            self.database,
            self.clock.now(),
            keep,
            retention.lookback(self.settings, self.rules.current),
            by=Principal("daemon", self.owner, "admin"),
            batch=self.settings.retention.batch,
            keep_going=keep_going,
        )

    async def _tell_staff(self) -> None:
        """Send the notices a round just queued, rather than at the next follow-up sweep. A
        failure (the store may be down) is logged; they stay queued for the sweep."""
        try:
            await self.send_staff_notices()
        except Exception:
            log.exception("could not send staff notices; the follow-up sweep tries again")

    async def sweep_followups(self) -> int:
        """Queue the reminders and escalations that are due, then send every due notice;
        returns how many went out."""
        try:
            await due_notices(self.database, self.clock, self.directory)
        except Exception:  # the notices already queued (retries among them) still go out
            log.exception("could not queue the reminders and escalations that are due")
        return await self.send_staff_notices()

    async def process_due_rounds(
        self,
        should_stop: Callable[[], bool] = lambda: False,
        committed: Callable[[], object] | None = None,
        notices_queued: Callable[[], object] | None = None,
    ) -> int:
        """Claim and materialise every due round; returns how many were completed.
        ``should_stop`` is asked before each claim and between a round's batches: when it
        says to stop (the daemon stopping, or no longer leading), no further round is
        claimed and the one being written is given back after the batch in hand, for the
        next claimer to go on from its cursor (a batch is written only under the round's
        fencing token, so a claimer that lost the round writes nothing of it).
        ``committed`` is called whenever a batch of a round's deliveries has committed (the
        daemon wakes its dispatch workers with it). ``notices_queued`` is called when a
        round queued staff notices (an escalation step's, new follow-ups' owners): the
        daemon wakes its follow-up sweep with it, so that a slow staff relay never holds up
        the rounds. Without it they are sent here, when the round is written."""
        done = 0
        while not should_stop():
            claimed = await claim_due_round(
                self.database, self.clock, self.settings.schedule, self.owner, self.escalation
            )
            if claimed is None:
                break
            log.info(
                "round started",
                extra={
                    "incident": claimed.incident_id,
                    "round": claimed.number,
                    "kind": claimed.kind,
                    "resumed": claimed.resumed,
                },
            )
            notices: list[Notice] = []
            followups = self._followup_hook(notices)

            try:
                routes = self.routes_for(await self._round_channels(claimed.round_id))
                inserted = await materialise_round(
                    self.database,
                    self.clock,
                    claimed,
                    routes,
                    self.settings.schedule,
                    should_stop,
                    followups,
                    committed,
                    fallbacks=self.fallbacks_for(routes),
                )
                if claimed.notify_staff or notices:  # queued with the claim and follow-ups
                    if notices_queued is not None:
                        notices_queued()
                    else:
                        await self._tell_staff()
            except LostLease as exc:
                log.warning(
                    "round lease lost",
                    extra={
                        "incident": claimed.incident_id,
                        "round": claimed.number,
                        "round_id": claimed.round_id,
                        "reason": str(exc),
                    },
                )
                continue
            except Exception as exc:
                # The store failed mid-round (a connection lost, the server restarting): give
                # the round back, so that the next pass takes it up at once instead of after
                # the round lease. Best effort: with the store still away, the lease runs out
                # as before. Any other error keeps the lease, so that a round that fails
                # every time does not come first at every pass and hold up the others.
                if store_unreachable(exc):
                    with contextlib.suppress(Exception):
                        await release_round(self.database, claimed)
                raise
            if inserted is None:
                await release_round(self.database, claimed)
                log.info(
                    "round released: stopping, or no longer the leader",
                    extra={
                        "incident": claimed.incident_id,
                        "round": claimed.number,
                        "round_id": claimed.round_id,
                    },
                )
                break
            done += 1
            await self._check_capacity(claimed)
            log.info(
                "round materialised",
                extra={
                    "incident": claimed.incident_id,
                    "round": claimed.number,
                    "deliveries": inserted,
                },
            )
        return done

    def _followup_hook(
        self, notices: list[Notice]
    ) -> Callable[[AsyncSession, int, int, list[str], datetime], Awaitable[None]]:
        """The per-batch hook: follow-ups (collecting whom to notify) and quiet hours."""

        async def hook(
            session: AsyncSession,
            round_id: int,
            incident_id: int,
            customers: list[str],
            now: datetime,
        ) -> None:
            notices.extend(
                await self.escalation.on_batch(session, round_id, incident_id, customers, now)
            )

        return hook

    async def _check_capacity(self, claimed: ClaimedRound) -> None:
        async with self.database.session() as session:
            counts = dict(
                (
                    await session.execute(
                        select(Delivery.channel, func.count())
                        .where(Delivery.round_id == claimed.round_id)
                        .group_by(Delivery.channel)
                    )
                ).all()
            )
            started, promised = (
                await session.execute(
                    select(Round.started_at, Round.next_due_at).where(Round.id == claimed.round_id)
                )
            ).one()
            limited = [c for c in counts if c in self.settings.delivery.rate_limits]
            queued = (
                await queued_elsewhere(session, claimed.round_id, limited, promised)
                if promised and limited
                else {}
            )
        cadence = promised - started if promised and started else None
        daemons = await count_daemons(self.database) if cadence and limited else 1
        warnings = check_round(
            claimed.incident_id,
            claimed.number,
            counts,
            cadence,
            self.settings.delivery,
            queued,
            daemons,
        )
        texts = [str(w) for w in warnings]
        if texts:
            self._capacity[claimed.incident_id] = texts
            async with self.database.session() as session, session.begin():
                await session.execute(
                    update(Round)
                    .where(Round.id == claimed.round_id)
                    .values(capacity_warning="\n".join(texts))
                )
        else:
            self._capacity.pop(claimed.incident_id, None)
        for text in texts:
            log.warning("round cannot finish within its cadence", extra={"detail": text})

    async def refresh_capacity(self) -> None:
        """Read the capacity warnings from the store: those of the latest written round of
        each open incident, whichever daemon wrote it (this one may not lead, or may have
        just started)."""
        latest = (
            select(func.max(Round.number))
            .where(Round.incident_id == Incident.id, Round.state == "dispatched")
            .correlate(Incident)
            .scalar_subquery()
        )
        async with self.database.session() as session:
            rows = (
                await session.execute(
                    select(Round.incident_id, Round.capacity_warning)
                    .join(Incident, Incident.id == Round.incident_id)
                    .where(Incident.status.in_(OPEN_STATUSES), Round.number == latest)
                )
            ).all()
        self._capacity = {incident: warning.split("\n") for incident, warning in rows if warning}

    @property
    def capacity_warnings(self) -> list[str]:
        """The latest round of each incident that cannot finish within its cadence."""
        return [w for warnings in self._capacity.values() for w in warnings]

    async def _round_channels(self, round_id: int) -> str | None:
        async with self.database.session() as session:
            channels: str | None = (
                await session.execute(select(Round.channels).where(Round.id == round_id))
            ).scalar_one_or_none()
            return channels

    async def dispatch_all(self) -> int:
        """Send until nothing is due now (the demo and tests; the daemon runs workers)."""
        total = 0
        while (handled := await self.dispatcher.run_once()) > 0:
            total += handled
        return total

    async def next_wakeup(self) -> datetime | None:
        return await next_wakeup(self.database)

    async def aclose(self) -> None:
        """Close every channel; one that fails to close is logged, and the others (and the
        store, after this) are still closed."""
        for name, channel in self.channels.items():
            try:
                await channel.aclose()
            except Exception:
                log.exception("channel %s did not close cleanly", name)
