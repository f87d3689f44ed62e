"""Claiming deliveries (expired leases first, then due pending ones, never more than asked)
and recording their outcomes (history, fencing)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from broadcaster.clock import FakeClock
from broadcaster.config.settings import RateLimit
from broadcaster.daemon import Daemon
from broadcaster.dispatch.claim import claim_size
from broadcaster.dispatch.limits import per_process
from broadcaster.dispatch.outcomes import Outcome, record_outcomes
from broadcaster.engine import Engine
from broadcaster.incidents import service
from broadcaster.store import Database, Delivery, DeliveryEvent, Followup
from channels.base import DeliveryError, Message, Receipt, Target
from channels.memory import MemoryChannel
from tests.integration.test_broadcast_loop import START, add_customers, make_settings


async def _one_round(database: Database, clock: FakeClock, customers: int) -> Engine:
    """An engine whose one round for ``customers`` customers is materialised (one email
    delivery each, pending)."""
    specs = [(f"C{i}", ["component:rail"]) for i in range(customers)]
    await add_customers(database, clock, specs)
    engine = await Engine.create(
        make_settings(), database, clock, {"mail": MemoryChannel(name="mail")}, owner="a"
    )
    await service.declare(
        database, clock, service.Declaration("t", "minor", "m", components=["rail"])
    )
    await engine.process_due_rounds()
    return engine


async def test_claim_takes_expired_leases_then_due_pending_up_to_the_limit(
    database: Database,
) -> None:
    clock = FakeClock(START)
    dispatcher = (await _one_round(database, clock, 6)).dispatcher

    first = await dispatcher.claim(2)  # then this worker "dies" holding them
    assert [job.reclaimed for job in first] == [False, False]
    clock.advance(timedelta(seconds=15))
    held = await dispatcher.claim(1)  # a live worker's, until 08:00:45
    assert len(held) == 1

    clock.advance(timedelta(seconds=20))  # 08:00:35: the first two leases (30 s) expired
    second = await dispatcher.claim(3)
    assert len(second) == 3
    assert {job.delivery_id for job in second if job.reclaimed} == {
        job.delivery_id for job in first
    }
    assert sum(1 for job in second if not job.reclaimed) == 1

    rest = await dispatcher.claim(10)
    assert len(rest) == 2  # the last two pending; the live lease is left alone
    assert not any(job.reclaimed for job in rest)
    claimed = {job.delivery_id for job in first + held + second + rest}
    assert len(claimed) == 6


def test_a_slow_rate_limit_shrinks_the_claims_to_what_the_lease_can_send() -> None:
    settings = make_settings().delivery.model_copy(
        update={"batch_size": 200, "workers": 4, "lease": timedelta(seconds=60)}
    )
    assert claim_size(settings) == 200  # no limit: as configured
    limited = settings.model_copy(
        update={"rate_limits": {"mail": RateLimit(per_second=1), "sms": RateLimit(per_second=50)}}
    )
    # 1 message/s for 30 s (half the lease), plus the burst of 1, over 4 workers: 7 each,
    # so the 28 in flight on that channel all go out before any lease runs out.
    assert claim_size(limited) == 7
    crawling = settings.model_copy(update={"rate_limits": {"mail": RateLimit(per_second=0.01)}})
    assert claim_size(crawling) == 1
    fast = settings.model_copy(update={"rate_limits": {"mail": RateLimit(per_second=1000)}})
    assert claim_size(fast) == 200
    # Two dispatch processes share the account's rate: 0.5 message/s each, 15 in half the
    # lease, plus the burst of 1 (at least 1 each), over 4 workers: 4 each.
    assert claim_size(limited.model_copy(update={"processes": 2})) == 4


def test_dispatch_processes_split_a_rate_limit_between_them() -> None:
    limits = {"sms": RateLimit(per_second=90, burst=10), "mail": RateLimit(per_second=1)}
    assert per_process(limits, 1) == limits
    shares = per_process(limits, 3)
    assert shares["sms"] == RateLimit(per_second=30, burst=3)
    assert shares["mail"].per_second == pytest.approx(1 / 3) and shares["mail"].burst == 1


async def test_the_daemons_dispatcher_claims_batches_of_its_claim_size(
    database: Database,
) -> None:
    clock = FakeClock(START)
    settings = make_settings()  # batch_size 4
    settings.delivery.workers = 1
    channels = {"mail": MemoryChannel(name="mail")}
    settings.delivery.rate_limits = {"mail": RateLimit(per_second=0.4)}
    roomy = await Engine.create(settings, database, clock, channels, owner="a")
    # Half the default 30 s lease: 0.4/s × 15 s + 1 = 7; the configured 4 wins.
    assert roomy.dispatcher.batch_size == 4
    settings.delivery.rate_limits = {"mail": RateLimit(per_second=0.1)}
    slow = await Engine.create(settings, database, clock, channels, owner="b")
    assert slow.dispatcher.batch_size == 2  # 0.1/s × 15 s + 1 = 2.5


def test_a_daemon_that_runs_no_extra_process_keeps_the_whole_rate() -> None:
    """Given its own channels (tests, benchmarks), a daemon dispatches in its own process
    only: its dispatcher takes the whole of each rate limit, not a share of processes that
    never start."""
    settings = make_settings()
    settings.delivery.workers = 1
    settings.delivery.processes = 3
    settings.delivery.rate_limits = {"mail": RateLimit(per_second=0.1)}
    daemon = Daemon(settings, clock=FakeClock(START), channels={"mail": MemoryChannel("mail")})
    assert daemon.settings.delivery.processes == 1
    assert settings.delivery.processes == 3  # the caller's settings are left alone
    assert claim_size(daemon.settings.delivery) == 2  # 0.1/s × 15 s + 1 = 2.5
    assert claim_size(settings.delivery) == 1  # a third of the rate: 0.5 + 1


async def history(database: Database) -> list[tuple[int, str, str | None, str | None]]:
    async with database.session() as session:
        rows = await session.execute(
            select(
                DeliveryEvent.delivery_id,
                DeliveryEvent.state,
                DeliveryEvent.provider_message_id,
                DeliveryEvent.detail,
            ).order_by(DeliveryEvent.id)
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]


async def test_the_history_names_each_attempt_and_every_reclaim(database: Database) -> None:
    clock = FakeClock(START)
    await add_customers(database, clock, [(f"C{i}", ["component:rail"]) for i in range(3)])
    mail = MemoryChannel(name="mail")
    engine = await Engine.create(make_settings(), database, clock, {"mail": mail}, owner="a")
    await service.declare(
        database, clock, service.Declaration("t", "minor", "m", components=["rail"])
    )
    await engine.process_due_rounds()
    dying = await Engine.create(make_settings(), database, clock, {"mail": mail}, owner="b")
    held = await dying.dispatcher.claim(1)  # "b" dies holding one delivery
    assert len(held) == 1
    reclaimed = held[0].customer_id
    busy = min({"C0", "C1", "C2"} - {reclaimed})
    calls: list[str] = []

    def once_busy(target: Target, _message: Message) -> DeliveryError | None:
        calls.append(target.customer_id)
        if target.customer_id == busy and calls.count(busy) == 1:
            return DeliveryError("421 busy", retryable=True, retry_after=5)
        return None

    mail.fail = once_busy
    await engine.dispatch_all()  # the busy one fails once (retry in 5 s); the free one is sent
    clock.advance(timedelta(seconds=61))  # b's lease expired, the retry is due
    await engine.dispatch_all()

    events = await history(database)
    async with database.session() as session:
        ids = {
            cid: did
            for did, cid in await session.execute(select(Delivery.id, Delivery.customer_id))
        }
    by = {cid: [(s, d) for did, s, _p, d in events if did == ids[cid]] for cid in ids}
    assert by[busy] == [("retry", "attempt 1: 421 busy"), ("sent", "attempt 2")]
    assert by[reclaimed] == [
        ("sending", "attempt 2 (lease expired: may repeat)"),
        ("sent", "attempt 2"),
    ]
    others = set(ids) - {busy, reclaimed}
    assert all(by[cid] == [("sent", "attempt 1")] for cid in others)
    # Each sent row carries the channel's provider id into the history and the delivery.
    async with database.session() as session:
        sent = dict(
            (await session.execute(select(Delivery.id, Delivery.provider_message_id))).all()
        )
    assert {did: p for did, s, p, _d in events if s == "sent"} == sent


async def test_outcomes_only_touch_deliveries_still_under_our_lease(database: Database) -> None:
    """A batch's set-based "sent" write leaves alone a delivery another worker took over
    and one a provider's callback already moved on (``delivered``)."""
    clock = FakeClock(START)
    await add_customers(database, clock, [(f"C{i}", ["component:rail"]) for i in range(4)])
    engine = await Engine.create(
        make_settings(), database, clock, {"mail": MemoryChannel(name="mail")}, owner="a"
    )
    await service.declare(
        database, clock, service.Declaration("t", "minor", "m", components=["rail"])
    )
    await engine.process_due_rounds()
    jobs = await engine.dispatcher.claim(4)
    taken, delivered = jobs[0].delivery_id, jobs[1].delivery_id
    async with database.session() as session, session.begin():
        await session.execute(update(Delivery).where(Delivery.id == taken).values(lease_owner="b"))
        await session.execute(
            update(Delivery).where(Delivery.id == delivered).values(state="delivered")
        )
    outcomes = [
        Outcome(job, receipt=Receipt(provider_message_id=f"p{job.delivery_id}")) for job in jobs
    ]
    recorded = await record_outcomes(
        database, "a", outcomes, clock.now(), failover=[], contact_kinds={}
    )
    assert recorded.sent == 4
    async with database.session() as session:
        rows = {
            r[0]: (r[1], r[2], r[3])
            for r in await session.execute(
                select(
                    Delivery.id, Delivery.state, Delivery.lease_owner, Delivery.provider_message_id
                )
            )
        }
    assert rows[taken] == ("sending", "b", None)
    assert rows[delivered] == ("delivered", "a", None)
    for job in jobs[2:]:
        assert rows[job.delivery_id] == ("sent", None, f"p{job.delivery_id}")


@pytest.mark.postgres
async def test_between_full_looks_a_claim_starts_after_its_last_and_nothing_is_left_behind(
    postgres_url: str,
) -> None:
    """On PostgreSQL a claim starts after the last delivery its dispatcher took; what is
    given back behind that floor is taken at the next full look (a second later)."""
    from broadcaster.store.migrate import upgrade_async

    await upgrade_async(postgres_url)
    database = Database(postgres_url)
    try:
        clock = FakeClock(START)
        dispatcher = (await _one_round(database, clock, 8)).dispatcher
        first = await dispatcher.claim(2)  # a full look: from the start of the index
        assert await dispatcher.release() == 2  # given back, behind the floor
        second = await dispatcher.claim(3)  # same second: from the floor
        assert {job.delivery_id for job in second}.isdisjoint(job.delivery_id for job in first)
        assert min(job.delivery_id for job in second) > max(job.delivery_id for job in first)
        clock.advance(timedelta(seconds=1))  # the next full look
        rest = await dispatcher.claim(10)
        assert {job.delivery_id for job in first} <= {job.delivery_id for job in rest}
        assert len(rest) == 8 - 3
        async with database.session() as session:
            states = (await session.execute(select(Delivery.state))).scalars().all()
        assert sorted(states) == ["sending"] * 8
    finally:
        await database.dispose()


async def test_a_claim_brings_the_earliest_open_follow_up_of_each_customer(
    database: Database,
) -> None:
    """The follow-up a message announces comes with its delivery's claim: the customer's
    open or claimed one for that incident with the earliest deadline still ahead; one that
    is done, overdue, or for another incident, is not announced."""
    clock = FakeClock(START)
    engine = await _one_round(database, clock, 3)
    other = await service.declare(
        database, clock, service.Declaration("u", "minor", "m", components=["elsewhere"])
    )
    async with database.session() as session:
        incident_id = (await session.execute(select(Delivery.incident_id).limit(1))).scalar_one()

    def followup(incident: int, customer: str, rule: str, state: str, hours: int) -> Followup:
        return Followup(
            incident_id=incident,
            customer_id=customer,
            rule=rule,
            kind="call",
            owner=rule,
            state=state,
            deadline_at=START + timedelta(hours=hours),
            created_at=START,
        )

    async with database.session() as session, session.begin():
        session.add_all(
            [
                followup(incident_id, "C0", "late", "open", 3),
                followup(incident_id, "C0", "early", "claimed", 1),
                followup(incident_id, "C0", "done", "done", 0),
                followup(other.id, "C1", "elsewhere", "open", 1),
                followup(incident_id, "C2", "only", "open", 2),
                followup(incident_id, "C2", "overdue", "open", -1),  # being escalated
            ]
        )
    jobs, announced = await engine.dispatcher._claim(10)
    customers = {job.customer_id for job in jobs}
    assert customers == {"C0", "C1", "C2"}
    assert announced == {
        (incident_id, "C0"): ("early", "call", START + timedelta(hours=1)),
        (incident_id, "C2"): ("only", "call", START + timedelta(hours=2)),
    }
