"""The dispatcher: claim a batch of due deliveries under a lease, send them, record outcomes.

A delivery is ``pending`` until claimed; the claim sets ``sending`` with a lease and counts
the attempt (a reclaim also writes a history event; the statements are in
:mod:`broadcaster.dispatch.claim`). Each job is rendered for its customer, checked against
the per-customer throttle, paced by the provider's rate limit, and sent. Outcomes are
written in bulk (see :mod:`broadcaster.dispatch.outcomes`). While a batch is sending, its
leases are renewed every third of a lease, so a slow relay does not let them run out. A
delivery whose lease expired (its worker died mid-send, or its process stalled for a whole
lease) is claimed again: the only way a message can go out twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Awaitable, Coroutine, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Session

from broadcaster.clock import Clock
from broadcaster.compose.context import Personal
from broadcaster.compose.forms import form_for
from broadcaster.compose.links import personal_links
from broadcaster.compose.render import Renderer, RenderError, RenderRequest
from broadcaster.config.settings import DeliverySettings, MessageSettings
from broadcaster.dispatch.backoff import delay_after
from broadcaster.dispatch.claim import Claimed, Floor, claim_batch, claim_size
from broadcaster.dispatch.content import RoundContents
from broadcaster.dispatch.handover import SENDS_AHEAD, Starting
from broadcaster.dispatch.limits import Limits, Pacer, per_process
from broadcaster.dispatch.outcomes import (
    Follow,
    Job,
    Outcome,
    Recorded,
    create_follow,
    next_channel,
    record_outcomes,
)
from broadcaster.store import ContactPoint, Database, Delivery
from broadcaster.store.retry import retried, store_transient
from channels.base import (
    URGENCY_HEADER,
    Channel,
    DeliveryError,
    Target,
    concurrency_of,
    units_of,
)

log = logging.getLogger("broadcaster.dispatch")

COUNTED_STATES = ("sending", "sent", "delivered", "undelivered")

UNTHROTTLED = ("first", "resolution")
"""Kinds of round a per-customer throttle never holds back: the first notice (the customer
must hear of the incident at all) and the resolution with its apology (doctrine 1 and 4).
A throttle thins the updates in between."""

RECORD_RETRY_FIRST = 0.5
RECORD_RETRY_LONGEST = 8.0
"""Seconds between tries to write a batch's outcomes when the store fails (doubling)."""

PLAIN_REASON = 200
"""Characters of a failure's reason kept when the store refused it whole."""


EXPIRED_LOOK_INTERVAL = timedelta(seconds=1)
"""How often a claim also looks for deliveries whose lease expired (their worker died), and,
on PostgreSQL, for due deliveries from the start of the claim index rather than from the
dispatcher's floor: a lease runs for a minute, so a second more costs nothing, and the other
claims save a query and a walk over dead index entries."""

RENEWALS_PER_LEASE = 3
"""A batch still sending renews its leases this many times per lease."""

LEASES_KEPT = 10
"""How many leases' time a batch still sending keeps its leases at most (ten minutes by
default); after that they are left to expire, and the batch's deliveries are claimed again:
a send that never returns (a channel without a timeout) must not hold them for ever."""

Announcements = dict[tuple[int, str], tuple[str, str, datetime]]
"""(incident, customer) → (owner's name, kind, deadline) of the open follow-up that the
customer's message announces."""


@dataclass
class DispatchStats:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    rerouted: int = 0
    failovers: int = 0
    reclaimed: int = 0
    cancelled: int = 0
    """Queued deliveries not sent: their address was opted out or disabled, or a later round
    of their incident had reached their customer."""
    paced: int = 0
    """Claimed-to-be deliveries of a rate-limited channel put back for later (Pacer)."""
    spent: int = 0
    """Deliveries failed at a claim: their lease had expired after ``max_attempts`` claims."""
    by_channel: dict[str, int] = field(default_factory=dict)


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
        staff_names: Mapping[str, str] | None = None,
    ) -> None:
        self._staff_names = dict(staff_names or {})
        self._renderer = renderer
        self.link_secret = link_secret
        self._db = database
        self._clock = clock
        self._channels = channels
        self._settings = settings
        self._messages = messages
        self._owner = owner
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not crypto
        self._contents = RoundContents(database)
        self._limits = Limits(per_process(settings.rate_limits, settings.processes))
        self._pacer = Pacer(per_process(settings.rate_limits, settings.processes))
        self._contact_kinds = {name: channel.contact for name, channel in channels.items()}
        self._gates = {
            name: asyncio.Semaphore(SENDS_AHEAD * limit)
            for name, channel in channels.items()
            if (limit := concurrency_of(channel)) is not None
        }
        """Per channel with a declared concurrency: the sends being prepared or sent, shared
        by the workers."""
        self.stats = DispatchStats()
        self.batch_size = claim_size(settings)
        self.lease_renewal = settings.lease / RENEWALS_PER_LEASE
        """How often (in real time) a batch still sending renews its leases."""
        self.max_renewals = LEASES_KEPT * RENEWALS_PER_LEASE
        """Renewals a batch gets at most: a send that never returns must not hold its batch
        (already sent messages included, unrecorded) for ever."""
        self._look_for_expired_at = datetime.min.replace(tzinfo=UTC)
        self._last_claim_at = datetime.min.replace(tzinfo=UTC)
        self._floor: Floor | None = None

    async def run_once(self) -> int:
        """Claim, send and record one batch; returns how many deliveries it handled."""
        aside = self.stats.cancelled + self.stats.paced + self.stats.spent
        jobs, announced = await self._claim(self.batch_size)
        if not jobs:  # more may be due behind those set aside
            return self.stats.cancelled + self.stats.paced + self.stats.spent - aside
        sent = asyncio.Event()
        lost: set[int] = set()
        keeper = asyncio.create_task(
            self._keep_leases({job.delivery_id: job.attempts for job in jobs}, sent, lost),
            name=f"leases {self._owner}",
        )
        starting = Starting(sum(1 for job in jobs if job.channel not in self._gates))
        try:
            attempts = await asyncio.gather(
                *(
                    self._paced(
                        job, announced.get((job.incident_id, job.customer_id)), lost, starting
                    )
                    for job in jobs
                )
            )
            outcomes = [outcome for outcome in attempts if outcome is not None]
            # The leases are kept while the outcomes are written: a write that fails is
            # tried again, so that messages already handed over are not sent twice.
            recorded = await self._record(outcomes)
        finally:
            sent.set()  # a renewal under way finishes, rather than be cut off mid-statement
            await keeper
        self.stats.sent += recorded.sent
        self.stats.retried += recorded.retried
        self.stats.failed += recorded.failed
        self.stats.rerouted += recorded.rerouted
        self.stats.failovers += recorded.failovers
        for outcome in outcomes:
            if outcome.error is None and outcome.reroute_to is None:
                name = outcome.job.channel
                self.stats.by_channel[name] = self.stats.by_channel.get(name, 0) + 1
        return len(jobs)

    async def _record(self, outcomes: list[Outcome]) -> Recorded:
        """Write a batch's outcomes. A write that fails on the store's side (unreachable,
        restarting) is tried again for up to a lease while the batch's leases are renewed
        (:func:`~broadcaster.store.retry.retried`): given up, the batch's messages, already
        handed to their provider, would be claimed again when the leases ran out and sent
        twice. A write the store refuses (one outcome it cannot keep) is made again one
        outcome at a time (:meth:`_record_each`), so that the others are kept."""
        try:
            return await retried(
                lambda: self._write(outcomes),
                within=self._settings.lease,
                what="the outcomes of a batch",
                first=RECORD_RETRY_FIRST,
                longest=RECORD_RETRY_LONGEST,
                count=len(outcomes),
            )
        except Exception as exc:
            if store_transient(exc):
                raise
            log.error(
                "the store refused the outcomes of a batch; writing them one at a time",
                extra={"count": len(outcomes), "reason": repr(exc)},
            )
            return await self._record_each(outcomes)

    async def _record_each(self, outcomes: list[Outcome]) -> Recorded:
        """Each outcome in a transaction of its own. One the store refuses again is written
        without what it could not keep (the provider's id and the error's details, a
        contact point's condemnation, a failover): that its message went out, or that it
        failed and when to try again. One refused even so stays ``sending``, and is claimed
        again when its lease runs out, up to ``max_attempts`` claims (see
        :func:`~broadcaster.dispatch.claim.claim_batch`)."""
        total = Recorded()
        for outcome in outcomes:
            recorded = None
            for whole in (True, False):
                try:
                    recorded = await self._write_one(outcome if whole else _plain(outcome), whole)
                except Exception as exc:
                    if store_transient(exc):
                        raise
                    log.error(
                        "the store refused the outcome of a delivery",
                        extra={"delivery": outcome.job.delivery_id, "reason": repr(exc)},
                    )
                    continue
                break
            if recorded is not None:
                for name in ("sent", "retried", "failed", "rerouted", "failovers"):
                    setattr(total, name, getattr(total, name) + getattr(recorded, name))
        return total

    async def _write_one(self, outcome: Outcome, failover: bool) -> Recorded:
        return await retried(
            lambda: self._write([outcome], failover),
            within=self._settings.lease,
            what="the outcome of a delivery",
            first=RECORD_RETRY_FIRST,
            longest=RECORD_RETRY_LONGEST,
        )

    def _write(self, outcomes: list[Outcome], failover: bool = True) -> Awaitable[Recorded]:
        return record_outcomes(
            self._db,
            self._owner,
            outcomes,
            self._clock.now(),
            failover=self._settings.failover if failover else [],
            contact_kinds=self._contact_kinds,
        )

    async def claim(self, limit: int) -> list[Job]:
        """Claim up to ``limit`` due deliveries (expired leases first) under our lease."""
        jobs, _announced = await self._claim(limit)
        return jobs

    async def _claim(self, limit: int) -> tuple[list[Job], Announcements]:
        """The claimed jobs, and the open follow-ups their messages announce: one
        transaction (:meth:`~broadcaster.store.Database.transact`)."""
        now = self._clock.now()
        if now < self._last_claim_at:
            # The clock was set back (a host whose clock ran ahead, corrected): the floor
            # and the next full look were set by the old time, and what is written now
            # lies behind them. Start again from the start of the claim index at once.
            self._floor = None
            self._look_for_expired_at = now
        self._last_claim_at = now
        expired_too = now >= self._look_for_expired_at
        if expired_too:
            self._look_for_expired_at = now + EXPIRED_LOOK_INTERVAL
        # On PostgreSQL the claim index keeps an entry for every due delivery already
        # claimed, dead until VACUUM, ahead of those still due: a claim from its start
        # steps over all of them, more the further a large round has gone. Between full
        # looks a claim starts after the last one this dispatcher took. What lies behind
        # that floor (a delivery given back by a daemon that stopped, one another claimer
        # held and let go) is taken at the next full look, within EXPIRED_LOOK_INTERVAL.
        after = None if expired_too or self._db.dialect != "postgresql" else self._floor
        if after is not None and after[0] > now:
            # Set by a claim that began before the clock went back: not a floor for now.
            after = self._floor = None

        def claim(session: Session) -> Claimed:
            claimed = claim_batch(
                session,
                limit,
                now,
                owner=self._owner,
                lease=self._settings.lease,
                skip_locked=self._db.skip_locked,
                expired_too=expired_too,
                dialect=self._db.dialect,
                after=after,
                pacer=self._pacer,
                max_attempts=self._settings.max_attempts,
            )
            # In the claim's transaction: committed, a cancelled delivery's failover must
            # be there too, or a store that failed in between would lose the round for
            # the customer.
            self._fail_over_cancelled(session, claimed[3].moot, now)
            return claimed

        jobs, followups, last, cancelled = await self._db.transact(claim)
        if last is not None and (self._floor is None or last > self._floor):
            self._floor = last
        self.stats.cancelled += cancelled.cancelled
        self.stats.paced += cancelled.paced
        self.stats.spent += cancelled.spent
        announced: Announcements = {}
        for incident_id, customer_id, owner, kind, deadline in followups:  # earliest first
            name = self._staff_names.get(owner, owner)
            announced.setdefault((incident_id, customer_id), (name, kind, deadline))
        reclaimed = sum(1 for job in jobs if job.reclaimed)
        if reclaimed:
            self.stats.reclaimed += reclaimed
            log.warning(
                "reclaimed deliveries whose lease expired; they may be sent twice",
                extra={"count": reclaimed},
            )
        return jobs, announced

    def _fail_over_cancelled(self, session: Session, moot: tuple[Job, ...], now: datetime) -> None:
        """Deliveries cancelled at claim (their address opted out or disabled since their
        round was written) go to the customer's next channel they can be reached on, as a
        permanent failure at the send would: the customer still hears of the round."""
        if not self._settings.failover:
            return
        for job in moot:
            if job.failover_from_id is not None:
                continue
            target = next_channel(job, self._settings.failover)
            kind = self._contact_kinds.get(target) if target is not None else None
            if target is not None and kind is not None:
                create_follow(session, self._db, Follow(job, target, kind, "failover"), now)

    def _personal(self, job: Job, now: datetime) -> Personal:
        expires = now + self._messages.link_lifetime
        unsubscribe, preferences = personal_links(
            self._messages.public_url, self.link_secret, job.customer_id, expires, now
        )
        return Personal(
            name=job.customer_name, unsubscribe_url=unsubscribe, preferences_url=preferences
        )

    async def _throttled(self, job: Job, now: datetime) -> str | None:
        """The fallback channel when the customer had enough on this one lately, else None
        (also when the customer has no usable address for the fallback); "" when the
        throttle has no fallback (the message is not sent)."""
        throttle = self._settings.throttle.get(job.channel)
        if throttle is None:
            return None
        async with self._db.session() as session:
            recent = (
                await session.execute(
                    select(func.count())
                    .select_from(Delivery)
                    .where(
                        Delivery.customer_id == job.customer_id,
                        Delivery.channel == job.channel,
                        Delivery.id != job.delivery_id,
                        Delivery.state.in_(COUNTED_STATES),
                        Delivery.created_at >= now - throttle.per,
                    )
                )
            ).scalar_one()
        if recent < throttle.max:
            return None
        if not throttle.fallback:
            return ""
        kind = self._contact_kinds.get(throttle.fallback)
        async with self._db.session() as session:
            reachable = (
                await session.execute(
                    select(ContactPoint.id)
                    .where(
                        ContactPoint.customer_id == job.customer_id,
                        ContactPoint.kind == kind,
                        ContactPoint.opted_out.is_(False),
                        ContactPoint.disabled.is_(False),
                    )
                    .limit(1)
                )
            ).scalar_one_or_none()
        if reachable is None:
            # Nowhere to move it: the throttle must not silence the customer (a resolution
            # or a promised update would be lost), so it goes on its own channel.
            log.info(
                "throttle reached but the fallback is unreachable; sending on the channel",
                extra={"delivery": job.delivery_id, "fallback": throttle.fallback},
            )
            return None
        return throttle.fallback

    def _paced(
        self,
        job: Job,
        followup: tuple[str, str, datetime] | None,
        lost: AbstractSet[int],
        starting: Starting,
    ) -> Coroutine[Any, Any, Outcome | None]:
        """The send of ``job``: behind its channel's gate where it has one, else handed
        over with the rest of its batch (:class:`Starting`)."""
        gate = self._gates.get(job.channel)
        if gate is None:
            return self._send(job, followup, lost, starting)
        return self._gated(gate, job, followup, lost)

    async def _gated(
        self,
        gate: asyncio.Semaphore,
        job: Job,
        followup: tuple[str, str, datetime] | None,
        lost: AbstractSet[int],
    ) -> Outcome | None:
        async with gate:
            return await self._send(job, followup, lost)

    async def _send(
        self,
        job: Job,
        followup: tuple[str, str, datetime] | None = None,
        lost: AbstractSet[int] = frozenset(),
        starting: Starting | None = None,
    ) -> Outcome | None:
        """Render and send ``job``; None when its lease was lost before it went out (its
        new holder sends it). With ``starting``, the message is handed to its channel once
        every send of the batch has made its own: each arrives there exactly once, also one
        that ends before (a failure, a throttle), so that none waits for ever."""
        try:
            channel = self._channels.get(job.channel)
            if channel is None:
                raise DeliveryError(f"channel {job.channel!r} is not configured", retryable=True)
            now = self._clock.now()
            content = await self._contents.get(job.round_id)
            kind = job.kind or content.kind  # a held message standing in for earlier ones
            fallback = None if kind in UNTHROTTLED else await self._throttled(job, now)
            if fallback:
                return Outcome(job, reroute_to=fallback)
            if fallback == "":
                limit = DeliveryError("per-customer throttle reached", retryable=False)
                return Outcome(job, error=limit)
            facts = content.facts
            if job.promised_at is not None:  # the customer's quiet hours hold the next round
                facts = dataclasses.replace(facts, next_update_at=job.promised_at)
            request = RenderRequest(
                kind=kind,
                form=form_for(channel.contact),
                facts=facts,
                language=job.language,
                timezone=job.timezone,
                now=now,
                personal=self._personal(job, now),
                cache_key=(job.round_id, followup, job.promised_at, kind),
                followup=None
                if followup is None
                else {
                    "owner": followup[0],
                    "kind": followup[1],
                    "deadline": followup[2],  # written out in the message's language
                },
            )
            message = self._renderer.message(request, idempotency_key=f"delivery-{job.delivery_id}")
            message.headers.update(
                {
                    "X-Broadcaster-Delivery": str(job.delivery_id),
                    "X-Broadcaster-Round": f"{content.facts.incident_id}/{content.number}",
                    "X-Broadcaster-Kind": kind,
                    "X-Broadcaster-Severity": content.facts.severity,
                    URGENCY_HEADER: content.urgency,
                }
            )
            # One conversation per incident (an email thread, a push group); the update's
            # time keeps email's Message-IDs unique beyond this store (channels.base).
            message = dataclasses.replace(
                message,
                thread=f"incident-{content.facts.incident_id}",
                posted_at=content.facts.posted_at,
            )
            try:
                units = units_of(channel, message)
            except ValueError as exc:  # a message the channel cannot send (too long an SMS)
                raise DeliveryError(str(exc), retryable=False) from exc
            self._pacer.observe(job.channel, units)
            target = Target(
                address=job.address, name=job.customer_name, customer_id=job.customer_id
            )
            if starting is not None:
                await starting.ready(job.delivery_id)
            # After the batch's wait: a rate limit paces the sends, not the making.
            await self._limits.acquire(job.channel, units)
            if job.delivery_id in lost:
                return None
            receipt = await channel.send(target, message)
        except DeliveryError as error:
            return self._failure(job, error)
        except RenderError as exc:
            # A template that fails (or renders nothing) for this customer: tried again with
            # the backoff, so that an admin's fix (read at the next round or attempt) sends it.
            log.warning("message could not be made", extra={**_ids(job), "reason": str(exc)})
            return self._failure(job, DeliveryError(str(exc), retryable=True))
        except Exception as exc:  # a channel bug must not kill the worker
            log.exception("channel %s raised unexpectedly", job.channel, extra=_ids(job))
            return self._failure(job, DeliveryError(f"unexpected error: {exc!r}", retryable=True))
        finally:
            if starting is not None:
                starting.arrive(job.delivery_id)  # one that ended before it got there
        return Outcome(job, receipt=receipt)

    def _failure(self, job: Job, error: DeliveryError) -> Outcome:
        if error.retryable and job.attempts < self._settings.max_attempts:
            delay = delay_after(job.attempts, self._settings.backoff, error.retry_after, self._rng)
            return Outcome(job, error=error, retry_at=self._clock.now() + delay)
        return Outcome(job, error=error)

    async def _keep_leases(self, ids: dict[int, int], sent: asyncio.Event, lost: set[int]) -> None:
        """Renew the leases of a batch's deliveries every :attr:`lease_renewal` until
        ``sent`` is set, at most :attr:`max_renewals` times. A claim sizes a batch to what
        rate limits send in half a lease, but a relay can be slower than its limit: 800
        emails on 4 SMTP connections at 250 ms each (four round trips to a distant relay)
        take 50 s. A failed renewal is logged and tried again at the next turn; the sends
        go on. A delivery no longer ours (this process stalled for a whole lease, and
        another claimed it) goes into ``lost``, and is not sent here if it has not gone
        out yet."""
        failures = 0
        for _ in range(self.max_renewals):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sent.wait(), self.lease_renewal.total_seconds())
            if sent.is_set():
                return
            try:
                held = await self._renew_leases(ids)
            except Exception as exc:  # the store may be down: the sends go on
                failures += 1
                log.warning(
                    "could not renew the leases of a batch still sending",
                    extra={"count": len(ids), "failures": failures, "reason": repr(exc)},
                )
                continue
            gone = [delivery for delivery in ids if delivery not in held]
            if gone:
                lost.update(gone)
                ids = {delivery: ids[delivery] for delivery in ids if delivery in held}
                log.warning(
                    "leases of a batch still sending were lost; another holder sends those "
                    "not yet sent",
                    extra={"count": len(gone)},
                )
                if not ids:
                    return
        if not sent.is_set():
            log.warning(
                "a batch is still sending after %d renewals of its leases; they are left to expire",
                self.max_renewals,
                extra={"count": len(ids)},
            )

    async def _renew_leases(self, ids: dict[int, int]) -> set[int]:
        """Move the lease of those of ``ids`` (delivery id to the attempt claimed) we still
        hold, at that attempt, to a whole lease from now; returns their ids. The attempt
        matters: every worker of this process has the same owner, and another may have
        claimed some of them again after their lease ran out."""
        expires = self._clock.now() + self._settings.lease
        async with self._db.session() as session, session.begin():
            result = await session.execute(
                update(Delivery)
                .where(
                    tuple_(Delivery.id, Delivery.attempts).in_(list(ids.items())),
                    Delivery.lease_owner == self._owner,
                    Delivery.state == "sending",
                )
                .values(lease_expires_at=expires)
                .returning(Delivery.id)
            )
            return set(result.scalars())

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


def _plain(outcome: Outcome) -> Outcome:
    """``outcome`` without what the store may have refused to keep: a sent message's
    provider id, a failure's long text and its verdict on the contact point (written with
    no failover: see :meth:`Dispatcher._record_each`)."""
    if outcome.error is None:
        return outcome._replace(receipt=None)
    # Printable text only: PostgreSQL refuses a NUL in text, and a provider's answer quoted
    # in a reason may carry one (or bytes that are no UTF-8).
    reason = outcome.error.reason[:PLAIN_REASON].replace("\x00", "\ufffd")
    reason = reason.encode("utf-8", "replace").decode("utf-8")
    error = DeliveryError(reason, retryable=outcome.error.retryable)
    return outcome._replace(error=error)


def _ids(job: Job) -> dict[str, object]:
    """What traces one message in the logs (no address, no name)."""
    return {
        "delivery": job.delivery_id,
        "incident": job.incident_id,
        "round": job.round_id,
        "customer": job.customer_id,
        "channel": job.channel,
    }
