"""Shared by the fault tests: customers written straight to the store, a fake-clock loop."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import func, insert, select

from broadcaster.clock import FakeClock
from broadcaster.engine import Engine
from broadcaster.store import ContactPoint, Customer, Database, Delivery, Subscription
from broadcaster.store.models import table_of

START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def address(kind: str, n: int) -> str:
    """The address customer ``n`` has on a contact-point ``kind``."""
    if kind == "sms":
        return f"+3161{n:07d}"
    if kind == "email":
        return f"cust{n:05d}@example.org"
    return f"acct-{n:05d}"


async def add_customers(
    db: Database, now: datetime, count: int, kinds: Sequence[str], component: str = "payments"
) -> list[str]:
    """``count`` customers subscribed to ``component``, each with one contact point per kind;
    written in bulk. Returns their ids."""
    ids = [f"C{n:05d}" for n in range(count)]
    async with db.session() as session, session.begin():
        await session.execute(
            insert(table_of(Customer)),
            [
                {
                    "id": cid,
                    "name": f"Customer {n}",
                    "language": "en",
                    "timezone": "Europe/Amsterdam",
                    "created_at": now,
                    "updated_at": now,
                }
                for n, cid in enumerate(ids)
            ],
        )
        await session.execute(
            insert(table_of(ContactPoint)),
            [
                {
                    "customer_id": cid,
                    "kind": kind,
                    "address": address(kind, n),
                    "opted_out": False,
                    "disabled": False,
                    "updated_at": now,
                }
                for n, cid in enumerate(ids)
                for kind in kinds
            ],
        )
        await session.execute(
            insert(table_of(Subscription)),
            [{"customer_id": cid, "kind": "component", "value": component} for cid in ids],
        )
    return ids


async def delivery_states(db: Database) -> dict[str, int]:
    async with db.session() as session:
        rows = await session.execute(select(Delivery.state, func.count()).group_by(Delivery.state))
        return {str(state): int(count) for state, count in rows.all()}


async def next_retry(db: Database) -> datetime | None:
    """The earliest time a pending delivery may be tried again."""
    async with db.session() as session:
        value = (
            await session.execute(
                select(func.min(Delivery.next_attempt_at)).where(Delivery.state == "pending")
            )
        ).scalar_one_or_none()
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


async def drain(engine: Engine, clock: FakeClock, db: Database, *, max_steps: int = 500) -> None:
    """Run rounds and dispatch, moving the fake clock to each retry, until nothing is left
    to send now or later (rounds due later are left alone)."""
    for _ in range(max_steps):
        await engine.process_due_rounds()
        await engine.dispatch_all()
        retry = await next_retry(db)
        if retry is None:
            return
        clock.set(max(retry, clock.now()))
    raise AssertionError(
        f"deliveries still pending after {max_steps} steps: {await delivery_states(db)}"
    )
