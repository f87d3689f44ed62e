"""The deliveries' key to their round and incident (migrations 0014 and 0015): one foreign
key, (round_id, incident_id) to the round's (id, incident_id), checks both, holds that a
delivery's incident is its round's, and still deletes a round's deliveries with it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from broadcaster.store import Database, Delivery, Incident, Round
from tests.integration.test_retention import NOW, _customers, _incident, queued_sms


async def test_a_delivery_cannot_name_another_incident_than_its_rounds(
    database: Database,
) -> None:
    await _customers(database, 4)
    first = await _incident(
        database, declared=NOW - timedelta(days=2), closed=None, status="monitoring"
    )
    other = await _incident(
        database, declared=NOW - timedelta(days=1), closed=None, status="monitoring"
    )
    async with database.session() as session:
        round_id = (
            await session.execute(select(Round.id).where(Round.incident_id == first).limit(1))
        ).scalar_one()
    with pytest.raises(IntegrityError):
        async with database.session() as session, session.begin():
            session.add(queued_sms(round_id, other))


async def test_deleting_an_incident_deletes_its_deliveries(database: Database) -> None:
    await _customers(database, 4)
    gone = await _incident(
        database, declared=NOW - timedelta(days=2), closed=None, status="monitoring"
    )
    kept = await _incident(
        database, declared=NOW - timedelta(days=1), closed=None, status="monitoring"
    )
    async with database.session() as session, session.begin():
        await session.execute(delete(Incident).where(Incident.id == gone))
    async with database.session() as session:
        left = dict(
            (
                await session.execute(
                    select(Delivery.incident_id, func.count()).group_by(Delivery.incident_id)
                )
            ).all()
        )
    assert left == {kept: 8}
