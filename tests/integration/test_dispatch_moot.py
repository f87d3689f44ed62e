"""Queued deliveries that must not go out any more: the customer unsubscribed (or the address
was disabled) after the round was written (RFC 8058: an unsubscription takes effect)."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from broadcaster.clock import FakeClock
from broadcaster.engine import Engine
from broadcaster.incidents import service
from broadcaster.store import ContactPoint, Database, Delivery, DeliveryEvent
from channels.memory import MemoryChannel
from tests.integration.test_broadcast_loop import START, add_customers, make_settings
from tests.integration.test_dispatch_routing import customer, declare, settings


async def _queued(database: Database, clock: FakeClock) -> tuple[Engine, MemoryChannel]:
    """Three customers, one round materialised and nothing sent yet."""
    await add_customers(database, clock, [(f"C{i}", ["component:rail"]) for i in range(3)])
    channel = MemoryChannel(name="mail")
    engine = await Engine.create(make_settings(), database, clock, {"mail": channel}, owner="a")
    await service.declare(
        database, clock, service.Declaration("t", "minor", "m", components=["rail"])
    )
    await engine.process_due_rounds()
    return engine, channel


@pytest.mark.parametrize(
    ("flag", "reason"),
    [
        ("opted_out", "the customer opted out of this address"),
        ("disabled", "this address was disabled"),
    ],
)
async def test_a_queued_message_to_an_address_opted_out_since_is_cancelled(
    database: Database, flag: str, reason: str
) -> None:
    clock = FakeClock(START)
    engine, channel = await _queued(database, clock)
    async with database.session() as session, session.begin():
        await session.execute(
            update(ContactPoint).where(ContactPoint.customer_id == "C1").values({flag: True})
        )

    await engine.dispatch_all()

    assert sorted(m.target.customer_id for m in channel.sent) == ["C0", "C2"]
    async with database.session() as session:
        rows = (
            await session.execute(
                select(
                    Delivery.customer_id, Delivery.state, Delivery.last_error, Delivery.attempts
                ).order_by(Delivery.customer_id)
            )
        ).all()
        events = (
            await session.execute(
                select(DeliveryEvent.state, DeliveryEvent.detail)
                .join(Delivery, Delivery.id == DeliveryEvent.delivery_id)
                .where(Delivery.customer_id == "C1")
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("C0", "sent", None, 1),
        ("C1", "cancelled", reason, 0),
        ("C2", "sent", None, 1),
    ]
    assert [tuple(e) for e in events] == [("cancelled", reason)]
    assert engine.dispatcher.stats.cancelled == 1


async def test_a_batch_of_nothing_but_opted_out_deliveries_does_not_stall_the_rest(
    database: Database,
) -> None:
    clock = FakeClock(START)
    engine, channel = await _queued(database, clock)
    engine.dispatcher.batch_size = 1
    async with database.session() as session, session.begin():
        await session.execute(
            update(ContactPoint)
            .where(ContactPoint.customer_id.in_(["C0", "C1"]))
            .values(opted_out=True)
        )

    await engine.dispatch_all()  # the first two claims find only cancelled ones

    assert [m.target.customer_id for m in channel.sent] == ["C2"]


async def test_a_cancelled_delivery_fails_over_to_the_customer_s_next_channel(
    database: Database,
) -> None:
    """The customer's phone was disabled after the round was written (a carrier report on
    an earlier message): the queued SMS is cancelled, and the round goes by e-mail, as a
    permanent failure at the send would have sent it."""
    clock = FakeClock(START)
    await customer(database, "c0042")
    sms = MemoryChannel(name="sms", contact="sms")
    mail = MemoryChannel(name="mail", contact="email")
    engine = await Engine.create(settings(), database, clock, {"sms": sms, "mail": mail})
    await declare(database, clock)
    await engine.process_due_rounds()
    async with database.session() as session, session.begin():
        await session.execute(
            update(ContactPoint).where(ContactPoint.kind == "sms").values(disabled=True)
        )

    await engine.dispatch_all()

    assert sms.sent == [] and [m.target.address for m in mail.sent] == ["c0042@example.org"]
    async with database.session() as session:
        rows = (
            await session.execute(
                select(Delivery.channel, Delivery.state, Delivery.failover_to).order_by(Delivery.id)
            )
        ).all()
    assert [tuple(r) for r in rows] == [("sms", "cancelled", "mail"), ("mail", "sent", None)]
