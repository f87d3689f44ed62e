"""The SMTP server goes away for a while, then comes back: every mail is queued and sent.

The outage is measured on the fake clock the engine runs on, so the daemon's default retry
budget (``delivery.max_attempts`` 8, backoff from 5 s doubling, ±20% jitter: about ten
minutes) is what is put to the test, not a budget tuned for the test. Two outages: the
issue's "down for a minute" (``BROADCASTER_TEST_SMTP_OUTAGE`` seconds of fake time, 60 by
default) and five minutes, which the former default of 5 tries (60 to 90 s) lost. A real SMTP
sink (``broadcaster.devsmtp``) is stopped and started again on the same port, so the email
channel's pooled connections die under it too.
"""

from __future__ import annotations

import os
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from broadcaster.clock import FakeClock
from broadcaster.config.settings import Settings
from broadcaster.devsmtp import ReceivedMail, SmtpSink
from broadcaster.dispatch.channels import build_channels
from broadcaster.engine import Engine
from broadcaster.incidents import service
from broadcaster.store import Database, Delivery
from tests.reliability.common import START, add_customers, delivery_states, drain, next_retry

CUSTOMERS = 25
MINUTE = float(os.environ.get("BROADCASTER_TEST_SMTP_OUTAGE", "60"))


def settings(port: int) -> Settings:
    return Settings.model_validate(
        {
            "schedule": {"cadence": {"critical": "15m"}, "audience_batch": 10},
            "delivery": {"channels": ["email"], "batch_size": 10},  # default retry budget
            "channels": {
                "email": {
                    "type": "email",
                    "host": "127.0.0.1",
                    "port": port,
                    "security": "none",
                    "from": "Test Transit <service@example.org>",
                    "pool_size": 2,
                    "timeout": 2,
                }
            },
        }
    )


def rounds_received(mails: list[ReceivedMail]) -> Counter[tuple[str, str]]:
    return Counter(
        (rcpt, str(mail.message["X-Broadcaster-Round"]))
        for mail in mails
        for rcpt in mail.recipients
    )


@pytest.mark.parametrize("seconds", [MINUTE, 300.0], ids=["a-minute", "five-minutes"])
async def test_mail_sent_during_an_outage_arrives_when_the_server_is_back(
    database: Database, seconds: float
) -> None:
    outage = timedelta(seconds=seconds)
    clock = FakeClock(START)
    ids = await add_customers(database, clock.now(), CUSTOMERS, ["email"])
    sink = SmtpSink().start()
    port = sink.port
    received: list[ReceivedMail] = []
    engine = await Engine.create(
        settings(port), database, clock, build_channels(settings(port), clock), owner="smtp"
    )
    try:
        incident = await service.declare(
            database,
            clock,
            service.Declaration(
                title="Card payments failing",
                severity="critical",
                message="Card payments fail.",
                components=["payments"],
            ),
        )
        await drain(engine, clock, database)
        assert len(sink.messages) == CUSTOMERS  # round 1; the channel now pools connections

        sink.stop()
        received += sink.messages
        clock.set(START + timedelta(minutes=15))  # round 2 falls due during the outage
        down_at = clock.now()
        failed_tries = 0
        back = False
        while True:
            await engine.process_due_rounds()
            if not back and clock.now() >= down_at + outage:
                sink = SmtpSink(port=port).start()
                back = True
            handled = await engine.dispatch_all()
            if not back:
                failed_tries += handled
            retry = await next_retry(database)
            if retry is None:
                break
            clock.set(max(retry, clock.now()))
        assert back, "the outage ended before it began: every mail went out at once?"
        assert failed_tries >= 2 * CUSTOMERS, "the mail was not retried during the outage"

        await service.resolve(database, clock, incident.id, service.UpdateRequest("Fixed."))
        await drain(engine, clock, database)
    finally:
        await engine.aclose()
        sink.stop()
    received += sink.messages

    assert await delivery_states(database) == {"sent": 3 * CUSTOMERS}
    counts = rounds_received(received)
    expected = {
        (f"cust{n:05d}@example.org", f"{incident.id}/{r}")
        for n in range(len(ids))
        for r in (1, 2, 3)
    }
    assert set(counts) == expected
    assert max(counts.values()) == 1, "a mail arrived twice"
    async with database.session() as session:
        tries = (await session.execute(select(func.max(Delivery.attempts)))).scalar_one()
    print(
        f"\n[{database.dialect}] SMTP down {seconds:.0f}s (fake clock): "
        f"{failed_tries} failed tries, at most {tries} attempts for one mail, "
        f"{len(received)} mails received, 0 lost"
    )
