"""The dispatcher: claim a batch of due deliveries under a lease, send them, record outcomes.

A delivery is ``pending`` until claimed; the claim sets ``sending`` with a lease and counts
the attempt (a reclaim also writes a history event; the statements are in
:mod:`broadcaster.dispatch.claim`). Each job is rendered for its customer, checked against
the per-customer throttle, paced by the provider's rate limit, and sent. Outcomes are
written in bulk (see :mod:`broadcaster.dispatch.outcomes`): at the end of a batch, and,
while the rest of it is still sending, about every :data:`RECORD_AFTER`. While a batch is
sending, the leases of its deliveries not yet recorded are renewed every third of a lease
for as long as it takes, so a slow relay does not let them run out; what is bounded is
each send's own time (:data:`LEASES_KEPT` leases). A delivery whose lease expired (its
worker died mid-send, or its process stalled for a whole lease) is claimed again: the only
way a message can go out twice. A stopping dispatcher hands no more messages to their
channels: those not handed over yet stay claimed until the wind-down gives them back.

A provider that says the *sender* is over its rate (a ``DeliveryError`` with ``throttled``)
pauses its channel (:mod:`broadcaster.dispatch.pause`): the throttled message is retried as
any, its attempt counted; the channel's messages already claimed are not handed to it
while the pause lasts (a pause within :attr:`Dispatcher.pause_hold` is waited out in place,
a longer one gives them back to the queue, due at its end, their attempt not counted), and
claims leave its due messages in the queue until then. The other channels go on. A throttle
with a ``throttled_scope`` (one push service of a Web Push channel, one customer's host of a
webhook) pauses only the channel's messages whose address is in that scope (the channel's
``pause_scope`` of the address): they are deferred alike at the send, but claimed as any, as
a claim does not read addresses; the channel's other messages go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
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
from broadcaster.config.durations import format_duration
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
from broadcaster.dispatch.pause import HOLD_AT_MOST, WHOLE, ChannelPauses
from broadcaster.store import ContactPoint, Database, Delivery
from broadcaster.store.retry import retried, store_transient
from channels.base import (
    URGENCY_HEADER,
    Channel,
    DeliveryError,
    Target,
    concurrency_of,
    scope_of,
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
"""How many leases' time a delivery whose message was handed to its channel keeps its lease
at most (five minutes by default): how long one send (``channel.send``, waiting there for
one of the channel's connections included) may take. A channel's own timeouts end a slow
send long before (the email channel's 30 s for each SMTP reply, an HTTP channel's 10 s);
this bounds one that never returns (a channel without a timeout, a bug). Such a send is
cancelled and recorded as a retryable failure (it may have gone out); one that does not end
even then has its lease left to expire. The batch's other deliveries keep their leases
however long the batch takes: each waits for sends that are themselves bounded. So a
stopping dispatcher, which hands nothing more over, ends within this and the writing of
its outcomes. (This used to bound a whole batch: a slow relay's later messages, and those
already sent but not yet recorded, were then claimed again and sent again, up to
``max_attempts`` times, and failed.)"""

RECORD_AFTER = 1.0
"""Seconds an outcome waits, at most, while the rest of its batch is still sending (a slow
relay, a small pool), before it is written with the others that came meanwhile: what a
crash can repeat is then what was on the wire and what came within a second, not a whole
batch already sent. A batch that ends sooner (a push fan-out's, in milliseconds) writes
its outcomes once, at its end, as before."""

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
    pauses: int = 0
    """Channel pauses begun: a provider said the sender was over its rate."""
    deferred: int = 0
    """Deliveries of a paused channel given back after their claim, not sent, due at the
    pause's end, their attempt not counted."""
    held: int = 0
    """Due deliveries of a channel paused as a whole that a claim left pending until the
    pause's end (not claimed, not counted)."""
    by_channel: dict[str, int] = field(default_factory=dict)


class _Batch:
    """A claimed batch in flight, shared by its sends, its lease keeper and its outcome
    writer (one event loop: no locks)."""

    __slots__ = ("ended", "held", "lost", "outcomes", "overrun", "sending", "stop", "writing")

    def __init__(self, jobs: list[Job], stop: asyncio.Event | None) -> None:
        self.held = {job.delivery_id: job.attempts for job in jobs}
        """Deliveries whose outcome is not written yet (id to the attempt claimed): the
        leases kept."""
        self.outcomes: list[Outcome] = []
        """Outcomes of sends that ended, not yet taken by a write."""
        self.writing: set[int] = set()
        """Deliveries whose outcome is being written."""
        self.lost: set[int] = set()
        """Deliveries whose lease another claimer took: not sent here if not sent yet."""
        self.sending: dict[int, tuple[float, asyncio.Task[Any] | None]] = {}
        """Sends handed to their channel and not ended: since when (``time.monotonic``),
        and their task."""
        self.overrun: set[int] = set()
        """Sends cancelled for taking longer than the send bound."""
        self.ended = asyncio.Event()
        """Every send of the batch has ended."""
        self.stop = stop

    def stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def take(self) -> list[Outcome]:
        """The outcomes waiting to be written, now marked as being written."""
        outcomes, self.outcomes = self.outcomes, []
        self.writing.update(outcome.job.delivery_id for outcome in outcomes)
        return outcomes

    def written(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            self.held.pop(outcome.job.delivery_id, None)
            self.writing.discard(outcome.job.delivery_id)

    def put_back(self, outcomes: list[Outcome]) -> None:
        """A write that failed: its outcomes wait for the next one."""
        self.outcomes[:0] = outcomes
        self.writing.difference_update(outcome.job.delivery_id for outcome in outcomes)


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
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
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
        self.send_bound = settings.lease * LEASES_KEPT
        """How long (in real time) one send may take before it is given up."""
        self.record_after = RECORD_AFTER
        """Seconds an outcome waits at most, while its batch still sends, to be written."""
        self._look_for_expired_at = datetime.min.replace(tzinfo=UTC)
        self._last_claim_at = datetime.min.replace(tzinfo=UTC)
        self._floor: Floor | None = None
        self.pauses = ChannelPauses(monotonic=monotonic, sleep=sleep)
        """The channels paused by their provider (in real time, on ``monotonic``)."""
        self.pause_hold = min(HOLD_AT_MOST, settings.lease.total_seconds() / 4)
        """Seconds of a channel's pause a claimed message waits out in place; a longer
        pause gives it back to the queue."""

    async def run_once(self, stop: asyncio.Event | None = None) -> int:
        """Claim, send and record one batch; returns how many deliveries it handled.

        Once ``stop`` is set, no more of the batch's messages are handed to their channels:
        those already handed over finish and are recorded; the others stay claimed, for the
        wind-down to give back (:meth:`release`)."""
        aside = self._aside()
        jobs, announced = await self._claim(self.batch_size)
        if not jobs:  # more may be due behind those set aside
            return self._aside() - aside
        batch = _Batch(jobs, stop)
        recorded = asyncio.Event()
        keeper = asyncio.create_task(
            self._keep_leases(batch, recorded), name=f"leases {self._owner}"
        )
        writer = asyncio.create_task(self._write_along(batch), name=f"outcomes {self._owner}")
        starting = Starting(sum(1 for job in jobs if job.channel not in self._gates))
        try:
            await asyncio.gather(
                *(
                    self._paced(
                        job, announced.get((job.incident_id, job.customer_id)), batch, starting
                    )
                    for job in jobs
                )
            )
            batch.ended.set()
            await writer  # a write under way finishes first
            # The leases are kept while the outcomes are written: a write that fails is
            # tried again, so that messages already handed over are not sent twice.
            outcomes = batch.take()
            if outcomes:
                self._tally(outcomes, await self._record(outcomes))
                batch.written(outcomes)
        finally:
            batch.ended.set()
            recorded.set()  # a renewal under way finishes, rather than be cut off mid-statement
            await asyncio.gather(writer, keeper)
        return len(jobs)

    def _aside(self) -> int:
        """Deliveries claims have set aside so far (cancelled, paced, spent, held back for
        a pause): a claim that took none but set some aside is followed by another."""
        stats = self.stats
        return stats.cancelled + stats.paced + stats.spent + stats.held

    def _tally(self, outcomes: list[Outcome], recorded: Recorded) -> None:
        self.stats.sent += recorded.sent
        self.stats.retried += recorded.retried
        self.stats.failed += recorded.failed
        self.stats.rerouted += recorded.rerouted
        self.stats.failovers += recorded.failovers
        self.stats.deferred += recorded.deferred
        for outcome in outcomes:
            if outcome.error is None and outcome.reroute_to is None and outcome.deferred_to is None:
                name = outcome.job.channel
                self.stats.by_channel[name] = self.stats.by_channel.get(name, 0) + 1

    async def _write_along(self, batch: _Batch) -> None:
        """While ``batch`` is still sending, write the outcomes of the sends that ended,
        about every :attr:`record_after`: a long batch (a slow relay) then holds unwritten
        only what ended within the last second, and a crash repeats no more than that and
        what was on the wire. A batch that ends sooner writes once, at its end. A write
        that fails (the store away for a whole lease) leaves its outcomes to the batch's
        last write, which tries again."""
        while not batch.ended.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(batch.ended.wait(), self.record_after)
            if batch.ended.is_set() or not batch.outcomes:
                continue
            outcomes = batch.take()
            try:
                recorded = await self._record(outcomes)
            except Exception as exc:
                batch.put_back(outcomes)
                log.warning(
                    "could not record the outcomes of a batch still sending; they are "
                    "written at its end",
                    extra={"count": len(outcomes), "reason": repr(exc)},
                )
                return
            batch.written(outcomes)
            self._tally(outcomes, recorded)

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
                for name in ("sent", "retried", "failed", "rerouted", "failovers", "deferred"):
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
        # Channels paused as a whole: their due messages stay in the queue. A scope's pause
        # (one receiver of a channel) is not here: its messages are deferred at the send.
        paused = self._paused_channels(now) if self.pauses.active else None

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
                paused=paused,
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
        for channel, count in cancelled.held.items():
            self.stats.held += count
            self.pauses.board.held_back(channel, count)
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
        batch: _Batch,
        starting: Starting,
    ) -> Coroutine[Any, Any, None]:
        """The send of ``job``: behind its channel's gate where it has one, else handed
        over with the rest of its batch (:class:`Starting`)."""
        gate = self._gates.get(job.channel)
        if gate is None:
            return self._send(job, followup, batch, starting)
        return self._gated(gate, job, followup, batch)

    async def _gated(
        self,
        gate: asyncio.Semaphore,
        job: Job,
        followup: tuple[str, str, datetime] | None,
        batch: _Batch,
    ) -> None:
        async with gate:
            await self._send(job, followup, batch)

    async def _send(
        self,
        job: Job,
        followup: tuple[str, str, datetime] | None,
        batch: _Batch,
        starting: Starting | None = None,
    ) -> None:
        """Render and send ``job``, and put its outcome with ``batch``'s; none when its
        lease was lost before it went out (its new holder sends it), or when the
        dispatcher is stopping (the wind-down gives it back). With ``starting``, the message
        is handed to its channel once every send of the batch has made its own: each
        arrives there exactly once, also one that ends before (a failure, a throttle), so
        that none waits for ever. A send that outlasts :attr:`send_bound` is cancelled by
        the lease keeper and recorded as a retryable failure."""
        outcome: Outcome | None = None
        try:
            if batch.stopping():
                return
            channel = self._channels.get(job.channel)
            if channel is None:
                raise DeliveryError(f"channel {job.channel!r} is not configured", retryable=True)
            now = self._clock.now()
            content = await self._contents.get(job.round_id)
            kind = job.kind or content.kind  # a held message standing in for earlier ones
            fallback = None if kind in UNTHROTTLED else await self._throttled(job, now)
            if fallback:
                outcome = Outcome(job, reroute_to=fallback)
                return
            if fallback == "":
                limit = DeliveryError("per-customer throttle reached", retryable=False)
                outcome = Outcome(job, error=limit)
                return
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
            # One conversation per incident (an email thread, a push group); the update's
            # time keeps email's Message-IDs unique beyond this store (channels.base).
            message = self._renderer.message(
                request,
                idempotency_key=f"delivery-{job.delivery_id}",
                thread=content.thread,
                posted_at=content.facts.posted_at,
            )
            message.headers.update(
                {
                    "X-Broadcaster-Delivery": str(job.delivery_id),
                    "X-Broadcaster-Round": f"{content.facts.incident_id}/{content.number}",
                    "X-Broadcaster-Kind": kind,
                    "X-Broadcaster-Severity": content.facts.severity,
                    URGENCY_HEADER: content.urgency,
                }
            )
            try:
                units = units_of(channel, message)
            except ValueError as exc:  # a message the channel cannot send (too long an SMS)
                raise DeliveryError(str(exc), retryable=False) from exc
            if self.pauses.active:  # before the rate: a message held back takes none of it
                until = await self._paused(job, channel, wait=False)
                if until is not None:
                    outcome = Outcome(job, deferred_to=until)
                    return
            self._pacer.observe(job.channel, units)
            target = Target(
                address=job.address, name=job.customer_name, customer_id=job.customer_id
            )
            if starting is not None:
                await starting.ready(job.delivery_id)
            # After the batch's wait: a rate limit paces the sends, not the making.
            await self._limits.acquire(job.channel, units)
            if batch.stopping() or job.delivery_id in batch.lost:
                return
            if self.pauses.active:  # the only cost of pauses while none is on
                until = await self._paused(job, channel)
                if until is not None:  # not handed over: nothing for the provider to refuse
                    outcome = Outcome(job, deferred_to=until)
                    return
                if batch.stopping() or job.delivery_id in batch.lost:
                    return
            batch.sending[job.delivery_id] = (time.monotonic(), asyncio.current_task())
            try:
                receipt = await channel.send(target, message)
            except asyncio.CancelledError:
                if not _given_up(job.delivery_id, batch):
                    raise
                bound = format_duration(self.send_bound)
                raise DeliveryError(
                    f"the channel did not answer within {bound}; the message may have gone out",
                    retryable=True,
                ) from None
            finally:
                del batch.sending[job.delivery_id]
            outcome = Outcome(job, receipt=receipt)
        except DeliveryError as error:
            if error.throttled:
                self._pause(job, error)
            outcome = self._failure(job, error)
        except RenderError as exc:
            # A template that fails (or renders nothing) for this customer: tried again with
            # the backoff, so that an admin's fix (read at the next round or attempt) sends it.
            log.warning("message could not be made", extra={**_ids(job), "reason": str(exc)})
            outcome = self._failure(job, DeliveryError(str(exc), retryable=True))
        except Exception as exc:  # a channel bug must not kill the worker
            log.exception("channel %s raised unexpectedly", job.channel, extra=_ids(job))
            unexpected = DeliveryError(f"unexpected error: {exc!r}", retryable=True)
            outcome = self._failure(job, unexpected)
        finally:
            if starting is not None:
                starting.arrive(job.delivery_id)  # one that ended before it got there
            if outcome is not None:
                batch.outcomes.append(outcome)

    def _paused_channels(self, now: datetime) -> dict[str, datetime]:
        """The channels paused as a whole, each with when its pause ends on the daemon's
        clock: the later of the end it was given and ``now`` plus what is left of it on the
        monotonic clock (the daemon's clock may have stepped forward meanwhile: a time
        already past would leave their messages due, and claims would take them again at
        once)."""
        return {
            name: max(at, now + timedelta(seconds=self.pauses.remaining(name)))
            for name, at in self.pauses.paused().items()
        }

    async def _paused(self, job: Job, channel: Channel, *, wait: bool = True) -> datetime | None:
        """None when ``job`` may be sent now, after waiting out what is left of the pause
        that holds it (its channel's, or its address's scope's: whichever lasts longer)
        when that is no more than :attr:`pause_hold`; else when that pause ends (the
        daemon's clock), for the message to go back to the queue until then: a batch held
        longer would hold its worker, and the claims of every other channel with it. The
        scope of the address is found (the channel's ``pause_scope``) only while a scope
        of its channel is paused. Not ``wait``, a pause short enough to wait out is not
        waited for here (None): the check before the send waits it out."""
        pauses = self.pauses
        scope = WHOLE
        if pauses.scoped(job.channel):
            scope = scope_of(channel, job.address) or WHOLE
        pause = pauses.holding(job.channel, scope)
        left = pauses.left(pause)
        if 0 < left <= self.pause_hold:
            if not wait:
                return None
            await pauses.sleep(left)
            # A throttle meanwhile may have made it longer, or paused the whole channel or
            # another scope of it.
            if scope == WHOLE and pauses.scoped(job.channel):
                scope = scope_of(channel, job.address) or WHOLE
            pause = pauses.holding(job.channel, scope)
            left = pauses.left(pause)
        if pause is None or left <= 0:
            return None
        pauses.board.held_back(job.channel, scope=pause.scope)
        # Not before now plus what is left: the daemon's clock may have stepped past the
        # end it was given (see _paused_channels).
        return max(pause.until_at, self._clock.now() + timedelta(seconds=left))

    def _pause(self, job: Job, error: DeliveryError) -> None:
        """``job``'s provider throttled its channel, or the scope of it its answer names:
        pause it, with one warning per pause (the answers of the sends already on the wire
        when it began only make it longer, silently)."""
        scope = error.throttled_scope or WHOLE
        pause = self.pauses.throttled(
            job.channel, error.retry_after, error.reason, self._clock.now(), scope
        )
        if pause is None:
            return
        self.stats.pauses += 1
        extra = {
            "channel": job.channel,
            "scope": scope,
            "seconds": round(pause.seconds, 3),
            "until": pause.until_at.isoformat(),
            "streak": pause.streak,
            "reason": error.reason,
            "delivery": job.delivery_id,
        }
        if scope == WHOLE:
            log.warning(
                "channel %s paused for %.1f s: its provider asked to slow down (%s)",
                job.channel,
                pause.seconds,
                error.reason,
                extra=extra,
            )
        else:
            log.warning(
                "channel %s paused for %.1f s for %s: that receiver asked to slow down (%s); "
                "the channel's other receivers go on",
                job.channel,
                pause.seconds,
                scope,
                error.reason,
                extra=extra,
            )

    def _failure(self, job: Job, error: DeliveryError) -> Outcome:
        if error.retryable and job.attempts < self._settings.max_attempts:
            delay = delay_after(job.attempts, self._settings.backoff, error.retry_after, self._rng)
            return Outcome(job, error=error, retry_at=self._clock.now() + delay)
        return Outcome(job, error=error)

    async def _keep_leases(self, batch: _Batch, recorded: asyncio.Event) -> None:
        """Renew the leases of ``batch``'s deliveries whose outcome is not written yet,
        every :attr:`lease_renewal` until ``recorded`` is set, for as long as the batch
        takes: those waiting for their turn (a relay slower than its rate limit, or with
        fewer connections than the batch has messages: 800 emails on 4 SMTP connections
        at 250 ms each take 50 s, at 2 s each over six minutes), on the wire, or sent and
        waiting to be written. What is bounded is each send (:attr:`send_bound`): one that
        outlasts it is cancelled, and, should it not end even so, its lease is left to
        expire. A failed renewal is logged and tried again at the next turn; the sends go
        on. A delivery no longer ours (this process stalled for a whole lease, and another
        claimed it) goes into the batch's ``lost``, and is not sent here if it has not
        gone out yet."""
        failures = 0
        while not recorded.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(recorded.wait(), self.lease_renewal.total_seconds())
            if recorded.is_set():
                return
            self._end_overruns(batch)
            ids = dict(batch.held)
            if not ids:
                continue
            try:
                held = await self._renew_leases(ids)
            except Exception as exc:  # the store may be down: the sends go on
                failures += 1
                log.warning(
                    "could not renew the leases of a batch still sending",
                    extra={"count": len(ids), "failures": failures, "reason": repr(exc)},
                )
                continue
            # Not renewed because written meanwhile is not lost.
            gone = [
                delivery
                for delivery in ids
                if delivery not in held and delivery in batch.held and delivery not in batch.writing
            ]
            if gone:
                batch.lost.update(gone)
                for delivery in gone:
                    del batch.held[delivery]
                log.warning(
                    "leases of a batch still sending were lost; another holder sends those "
                    "not yet sent",
                    extra={"count": len(gone)},
                )

    def _end_overruns(self, batch: _Batch) -> None:
        """Cancel the sends of ``batch`` that would outlast :attr:`send_bound` before the
        next renewal (their outcome: a retryable failure); one still there a renewal later
        did not end when cancelled, and its lease is left to expire (claimed again, it may
        go out twice)."""
        if not batch.sending:
            return
        bound = (self.send_bound - self.lease_renewal).total_seconds()
        now = time.monotonic()
        for delivery, (since, task) in list(batch.sending.items()):
            if now - since < bound:
                continue
            if delivery not in batch.overrun:
                batch.overrun.add(delivery)
                log.warning(
                    "a send took longer than %s; giving it up",
                    format_duration(self.send_bound),
                    extra={"delivery": delivery},
                )
                if task is not None:
                    task.cancel()
            elif batch.held.pop(delivery, None) is not None:
                log.warning(
                    "a send given up did not end; its lease is left to expire",
                    extra={"delivery": delivery},
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


def _given_up(delivery: int, batch: _Batch) -> bool:
    """Whether the send of ``delivery`` was cancelled for taking too long (the lease
    keeper's doing), rather than by its task's own cancellation (a shutdown), which then
    goes on."""
    if delivery not in batch.overrun:
        return False
    task = asyncio.current_task()
    return task is None or task.uncancel() == 0


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
