"""The dispatcher: claim a batch of due deliveries under a lease, send them, record outcomes.

A delivery is ``pending`` until claimed; the claim sets ``sending`` with a lease and
counts the attempt. Outcomes are written in bulk, only while we still own the lease:
``sent`` with the provider's id; ``pending`` again with a backoff for a retryable error;
``failed`` with the reason for a permanent one or when attempts run out. A delivery whose
lease expired (its worker died mid-send) is claimed again: the only way a message can go
out twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import and_, bindparam, or_, select, update

from broadcaster.clock import Clock
from broadcaster.compose.context import IncidentFacts, Personal
from broadcaster.compose.forms import form_for
from broadcaster.compose.links import link_url
from broadcaster.compose.render import Renderer, RenderRequest
from broadcaster.config.settings import DeliverySettings, MessageSettings
from broadcaster.dispatch.backoff import retry_delay
from broadcaster.store import (
    ContactPoint,
    Customer,
    Database,
    Delivery,
    Incident,
    IncidentScope,
    IncidentUpdate,
    Round,
)
from broadcaster.store.models import table_of
from channels.base import Channel, ContactPointState, DeliveryError, Receipt, Target

log = logging.getLogger("broadcaster.dispatch")


@dataclass(frozen=True)
class Job:
    """A claimed delivery with what is needed to render it."""

    delivery_id: int
    round_id: int
    channel: str
    address: str
    attempts: int
    contact_point_id: int | None
    customer_id: str
    customer_name: str
    language: str
    timezone: str
    reclaimed: bool


@dataclass(frozen=True)
class RoundContent:
    number: int
    kind: str
    facts: IncidentFacts


@dataclass
class DispatchStats:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    reclaimed: int = 0
    by_channel: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Outcome:
    job: Job
    receipt: Receipt | None = None
    error: DeliveryError | None = None


class Dispatcher:
    """One per daemon; several worker tasks may call :meth:`run_once` concurrently."""

    def __init__(
        self,
        database: Database,
        clock: Clock,
        channels: Mapping[str, Channel],
        settings: DeliverySettings,
        messages: MessageSettings,
        owner: str,
        renderer: Renderer,
        link_secret: str,
        rng: random.Random | None = None,
    ) -> None:
        self._renderer = renderer
        self._link_secret = link_secret
        self._db = database
        self._clock = clock
        self._channels = channels
        self._settings = settings
        self._messages = messages
        self._owner = owner
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not crypto
        self._rounds: OrderedDict[int, RoundContent] = OrderedDict()
        self.stats = DispatchStats()

    async def run_once(self) -> int:
        """Claim, send and record one batch; returns how many deliveries it handled."""
        jobs = await self.claim(self._settings.batch_size)
        if not jobs:
            return 0
        outcomes = await asyncio.gather(*(self._send(job) for job in jobs))
        await self.record(list(outcomes))
        return len(jobs)

    async def claim(self, limit: int) -> list[Job]:
        now = self._clock.now()
        async with self._db.session() as session, session.begin():
            query = (
                select(Delivery.id, Delivery.state)
                .where(
                    or_(
                        and_(Delivery.state == "pending", Delivery.next_attempt_at <= now),
                        and_(Delivery.state == "sending", Delivery.lease_expires_at <= now),
                    )
                )
                .order_by(Delivery.next_attempt_at, Delivery.id)
                .limit(limit)
            )
            if self._db.skip_locked:
                query = query.with_for_update(skip_locked=True)
            found = (await session.execute(query)).all()
            if not found:
                return []
            ids = [row[0] for row in found]
            reclaimed = {row[0] for row in found if row[1] == "sending"}
            await session.execute(
                update(Delivery)
                .where(Delivery.id.in_(ids))
                .values(
                    state="sending",
                    lease_owner=self._owner,
                    lease_expires_at=now + self._settings.lease,
                    attempts=Delivery.attempts + 1,
                )
            )
            rows = await session.execute(
                select(
                    Delivery.id,
                    Delivery.round_id,
                    Delivery.channel,
                    Delivery.address,
                    Delivery.attempts,
                    Delivery.contact_point_id,
                    Customer.id,
                    Customer.name,
                    Customer.language,
                    Customer.timezone,
                )
                .join(Customer, Customer.id == Delivery.customer_id)
                .where(Delivery.id.in_(ids))
                .order_by(Delivery.id)
            )
            jobs = [Job(*row, reclaimed=row[0] in reclaimed) for row in rows]  # type: ignore[misc]
        if reclaimed:
            self.stats.reclaimed += len(reclaimed)
            log.warning(
                "reclaimed deliveries whose lease expired; they may be sent twice",
                extra={"count": len(reclaimed)},
            )
        return jobs

    async def _content(self, round_id: int) -> RoundContent:
        cached = self._rounds.get(round_id)
        if cached is not None:
            self._rounds.move_to_end(round_id)
            return cached
        async with self._db.session() as session:
            row = (
                await session.execute(
                    select(Round, Incident, IncidentUpdate)
                    .join(Incident, Incident.id == Round.incident_id)
                    .join(IncidentUpdate, IncidentUpdate.id == Round.update_id)
                    .where(Round.id == round_id)
                )
            ).one()
            rnd, incident, upd = row
            scopes = (
                await session.execute(
                    select(IncidentScope.kind, IncidentScope.value)
                    .where(IncidentScope.incident_id == incident.id)
                    .order_by(IncidentScope.id)
                )
            ).all()
        content = RoundContent(
            number=rnd.number,
            kind=rnd.kind,
            facts=IncidentFacts(
                incident_id=incident.id,
                title=incident.title,
                severity=incident.severity,
                status=upd.status,
                components=tuple(v for k, v in scopes if k == "component"),
                regions=tuple(v for k, v in scopes if k == "region"),
                summary=upd.message,
                cause_kind=upd.cause_kind,
                cause=upd.cause,
                actions=upd.actions,
                workaround=upd.workaround,
                expected_resolution_at=upd.expected_resolution_at,
                posted_at=upd.created_at,
                next_update_at=rnd.next_due_at,
                responsibility=upd.responsibility,
                regret=upd.regret,
                remedy=upd.remedy,
                prevention=upd.prevention,
                compensation=upd.compensation,
            ),
        )
        self._rounds[round_id] = content
        if len(self._rounds) > 512:
            self._rounds.popitem(last=False)
        return content

    def _personal(self, job: Job, now: datetime) -> Personal:
        expires = now + self._messages.link_lifetime
        base = self._messages.public_url
        secret = self._link_secret
        return Personal(
            name=job.customer_name,
            unsubscribe_url=link_url(base, secret, job.customer_id, "unsubscribe", expires),
            preferences_url=link_url(base, secret, job.customer_id, "preferences", expires),
        )

    async def _send(self, job: Job) -> _Outcome:
        channel = self._channels.get(job.channel)
        if channel is None:
            return _Outcome(
                job,
                error=DeliveryError(f"channel {job.channel!r} is not configured", retryable=True),
            )
        try:
            content = await self._content(job.round_id)
            now = self._clock.now()
            request = RenderRequest(
                kind=content.kind,
                form=form_for(channel.contact),
                facts=content.facts,
                language=job.language,
                timezone=job.timezone,
                now=now,
                personal=self._personal(job, now),
                cache_key=job.round_id,
            )
            message = self._renderer.message(request, idempotency_key=f"delivery-{job.delivery_id}")
            message.headers.update(
                {
                    "X-Broadcaster-Delivery": str(job.delivery_id),
                    "X-Broadcaster-Round": f"{content.facts.incident_id}/{content.number}",
                    "X-Broadcaster-Kind": content.kind,
                }
            )
            target = Target(
                address=job.address, name=job.customer_name, customer_id=job.customer_id
            )
            receipt = await channel.send(target, message)
        except DeliveryError as error:
            return _Outcome(job, error=error)
        except Exception as exc:  # a channel bug must not kill the worker
            log.exception("channel %s raised unexpectedly", job.channel)
            return _Outcome(job, error=DeliveryError(f"unexpected error: {exc!r}", retryable=True))
        return _Outcome(job, receipt=receipt)

    async def record(self, outcomes: list[_Outcome]) -> None:
        now = self._clock.now()
        sent: list[dict[str, object]] = []
        retry: list[dict[str, object]] = []
        failed: list[dict[str, object]] = []
        points: list[dict[str, object]] = []
        for outcome in outcomes:
            job = outcome.job
            if outcome.error is None:
                pmid = outcome.receipt.provider_message_id if outcome.receipt else None
                sent.append({"b_id": job.delivery_id, "b_pmid": pmid})
                self.stats.sent += 1
                self.stats.by_channel[job.channel] = self.stats.by_channel.get(job.channel, 0) + 1
                continue
            error = outcome.error
            if error.retryable and job.attempts < self._settings.max_attempts:
                delay = retry_delay(
                    job.attempts,
                    initial=self._settings.backoff.initial,
                    maximum=self._settings.backoff.maximum,
                    multiplier=self._settings.backoff.multiplier,
                    jitter=self._settings.backoff.jitter,
                    retry_after=error.retry_after,
                    rng=self._rng,
                )
                retry.append(
                    {"b_id": job.delivery_id, "b_next": now + delay, "b_err": error.reason}
                )
                self.stats.retried += 1
                continue
            reason = error.reason
            if error.retryable:
                reason = f"gave up after {job.attempts} attempts: {reason}"
            failed.append({"b_id": job.delivery_id, "b_err": reason})
            self.stats.failed += 1
            if error.contact_point is not None and job.contact_point_id is not None:
                points.append(
                    {
                        "b_cp": job.contact_point_id,
                        "b_opted_out": error.contact_point is ContactPointState.OPTED_OUT,
                        "b_disabled": error.contact_point is ContactPointState.DISABLED,
                        "b_reason": error.reason,
                    }
                )
            log.warning(
                "delivery failed",
                extra={"delivery": job.delivery_id, "channel": job.channel, "reason": reason},
            )
        d = table_of(Delivery)
        cp = table_of(ContactPoint)
        mine = and_(
            d.c.id == bindparam("b_id"),
            d.c.lease_owner == self._owner,
            d.c.state == "sending",
        )
        async with self._db.session() as session, session.begin():
            if sent:
                await session.execute(
                    update(d)
                    .where(mine)
                    .values(
                        state="sent",
                        sent_at=now,
                        provider_message_id=bindparam("b_pmid"),
                        last_error=None,
                        lease_owner=None,
                        lease_expires_at=None,
                    ),
                    sent,
                )
            if retry:
                await session.execute(
                    update(d)
                    .where(mine)
                    .values(
                        state="pending",
                        next_attempt_at=bindparam("b_next"),
                        last_error=bindparam("b_err"),
                        lease_owner=None,
                        lease_expires_at=None,
                    ),
                    retry,
                )
            if failed:
                await session.execute(
                    update(d)
                    .where(mine)
                    .values(
                        state="failed",
                        last_error=bindparam("b_err"),
                        lease_owner=None,
                        lease_expires_at=None,
                    ),
                    failed,
                )
            if points:
                await session.execute(
                    update(cp)
                    .where(cp.c.id == bindparam("b_cp"))
                    .values(
                        opted_out=or_(cp.c.opted_out, bindparam("b_opted_out")),
                        disabled=or_(cp.c.disabled, bindparam("b_disabled")),
                        disabled_reason=bindparam("b_reason"),
                        updated_at=now,
                    ),
                    points,
                )

    async def release(self) -> int:
        """Give back every delivery we hold (clean shutdown); returns how many."""
        async with self._db.session() as session, session.begin():
            result = await session.execute(
                update(Delivery)
                .where(Delivery.lease_owner == self._owner, Delivery.state == "sending")
                .values(
                    state="pending",
                    lease_owner=None,
                    lease_expires_at=None,
                    attempts=Delivery.attempts - 1,
                )
            )
            return max(getattr(result, "rowcount", 0), 0)
