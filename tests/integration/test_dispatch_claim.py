"""Claiming deliveries: expired leases first, then due pending ones, never more than asked."""

from __future__ import annotations

from datetime import timedelta

from broadcaster.clock import FakeClock
from broadcaster.config.settings import RateLimit
from broadcaster.dispatch.worker import claim_size
from broadcaster.engine import Engine
from broadcaster.incidents import service
from broadcaster.store import Database
from channels.memory import MemoryChannel
from tests.integration.test_broadcast_loop import START, add_customers, make_settings


async def test_claim_takes_expired_leases_then_due_pending_up_to_the_limit(
    database: Database,
) -> None:
    clock = FakeClock(START)
    await add_customers(database, clock, [(f"C{i}", ["component:rail"]) for i in range(6)])
    engine = await Engine.create(
        make_settings(), database, clock, {"mail": MemoryChannel(name="mail")}, owner="a"
    )
    await service.declare(
        database, clock, service.Declaration("t", "minor", "m", components=["rail"])
    )
    await engine.process_due_rounds()
    dispatcher = engine.dispatcher

    first = await dispatcher.claim(2)  # then this worker "dies" holding them
    assert [job.reclaimed for job in first] == [False, False]
    clock.advance(timedelta(seconds=30))
    held = await dispatcher.claim(1)  # a live worker's, until 08:01:30
    assert len(held) == 1

    clock.advance(timedelta(seconds=40))  # 08:01:10: the first two leases (60 s) expired
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


async def test_the_daemons_dispatcher_claims_batches_of_its_claim_size(
    database: Database,
) -> None:
    clock = FakeClock(START)
    settings = make_settings()  # batch_size 4
    settings.delivery.workers = 1
    channels = {"mail": MemoryChannel(name="mail")}
    settings.delivery.rate_limits = {"mail": RateLimit(per_second=0.2)}
    roomy = await Engine.create(settings, database, clock, channels, owner="a")
    assert roomy.dispatcher.batch_size == 4  # 0.2/s × 30 s + 1 = 7: the configured 4 wins
    settings.delivery.rate_limits = {"mail": RateLimit(per_second=0.05)}
    slow = await Engine.create(settings, database, clock, channels, owner="b")
    assert slow.dispatcher.batch_size == 2  # 0.05/s × 30 s + 1 = 2.5
