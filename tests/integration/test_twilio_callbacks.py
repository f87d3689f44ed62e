"""Twilio's status callbacks and inbound keywords at the daemon's endpoints, on a real store.

A send Twilio took but answered too late (past ``timeout``) waits for its retry; Twilio's
signed status callback for it (``?delivery=<id>``) records it as handed over and calls the
retry off. The sends go through the real channel to the fake Twilio; the callbacks are
signed as Twilio signs them. Also: error 21635 (a landline) reported by a callback, and
Twilio's newer opt-out keywords.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import insert, select

from broadcaster.clock import FakeClock
from broadcaster.config.settings import Settings
from broadcaster.dispatch.channels import build_channels
from broadcaster.engine import Engine
from broadcaster.incidents import service
from broadcaster.store import (
    ContactPoint,
    Customer,
    Database,
    Delivery,
    DeliveryEvent,
    Subscription,
)
from broadcaster.web.app import create_app
from broadcaster.web.state import WebState
from tests.fakes.control import Scripted
from tests.fakes.http import serve
from tests.fakes.twilio import FakeTwilio, twilio_signature
from tests.integration.test_web_hooks import PUBLIC, SECRET, SID, START, TOKEN, seed_sent_sms
from tests.integration.test_web_hooks import settings as hook_settings

PHONE = "+31612345678"
FIRST_SID = "SM" + "e" * 32
TIMEOUT = 1.0
"""The channel's timeout: attempt 1 hangs past it, a retry in flight answers within it."""


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[FakeTwilio, str]]:
    fake = FakeTwilio()
    with serve(fake.app) as url:
        yield fake, url


@dataclass
class Rig:
    fake: FakeTwilio
    database: Database
    clock: FakeClock
    engine: Engine
    http: httpx.AsyncClient

    def callback_url(self) -> str:
        """The StatusCallback the channel gave Twilio with its first send."""
        return self.fake.received()[0].form["StatusCallback"]

    async def report(self, status: str, sid: str = FIRST_SID, **extra: str) -> None:
        """Twilio calls the first send's StatusCallback, signed, reporting ``status``."""
        url = self.callback_url()
        params = {
            "AccountSid": self.fake.account_sid,
            "MessageSid": sid,
            "MessageStatus": status,
            "To": PHONE,
            **extra,
        }
        signature = twilio_signature(self.fake.auth_token, url, params)
        answer = await self.http.post(
            url.removeprefix(PUBLIC), data=params, headers={"X-Twilio-Signature": signature}
        )
        assert answer.status_code == 204

    async def delivery(self) -> Delivery:
        async with self.database.session() as session:
            return (await session.execute(select(Delivery))).scalar_one()

    async def history(self) -> list[str]:
        async with self.database.session() as session:
            query = select(DeliveryEvent.state).order_by(DeliveryEvent.id)
            return list((await session.execute(query)).scalars())


@pytest.fixture
async def rig(served: tuple[FakeTwilio, str], database: Database) -> AsyncIterator[Rig]:
    """Customer c1 with an SMS number and the first round of an incident that hits them,
    its one SMS delivery due; a web app and an engine on the same store and clock."""
    fake, base = served
    fake.reset()
    settings = Settings.model_validate(
        {
            "delivery": {
                "channels": ["sms"],
                "max_attempts": 5,
                "backoff": {"initial": "30s", "maximum": "5m", "jitter": 0},
            },
            "channels": {
                "sms": {
                    "type": "twilio",
                    "account_sid": fake.account_sid,
                    "auth_token": fake.auth_token,
                    "from_number": "+15005550006",
                    "base_url": base,
                    "timeout": TIMEOUT,
                }
            },
            "messages": {"public_url": PUBLIC, "organisation": "Example Transit"},
        }
    )
    clock = FakeClock(START)
    async with database.session() as session, session.begin():
        await session.execute(
            insert(Customer).values(
                id="c1",
                name="Ann",
                language="en",
                timezone="UTC",
                created_at=START,
                updated_at=START,
            )
        )
        await session.execute(
            insert(ContactPoint).values(
                customer_id="c1",
                kind="sms",
                address=PHONE,
                opted_out=False,
                disabled=False,
                updated_at=START,
            )
        )
        await session.execute(
            insert(Subscription).values(customer_id="c1", kind="component", value="rail")
        )
    engine = await Engine.create(settings, database, clock, build_channels(settings, clock))
    await service.declare(
        database, clock, service.Declaration("t", "minor", "m", components=["rail"])
    )
    await engine.process_due_rounds()
    state = WebState(settings, database, clock, SECRET, scheduler_running=True)
    transport = httpx.ASGITransport(app=create_app(state))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://daemon") as http:
            yield Rig(fake, database, clock, engine, http)
    finally:
        await engine.aclose()


async def _first_send_times_out(rig: Rig) -> None:
    """Attempt 1: Twilio takes the message but answers after the channel's timeout."""
    rig.fake.plan.push(Scripted(201, hang=TIMEOUT + 0.5))
    await rig.engine.dispatcher.run_once()
    row = await rig.delivery()
    assert (row.state, row.attempts, row.provider_message_id) == ("pending", 1, None)
    assert "did not answer within" in (row.last_error or "")


@pytest.mark.parametrize(
    ("reports", "state", "history"),
    [
        (["sent", "delivered"], "delivered", ["retry", "sent", "delivered"]),
        (["delivered", "sent"], "delivered", ["retry", "sent", "delivered"]),
        (["queued"], "sent", ["retry", "sent"]),  # Messaging Service: Twilio has it
        (["undelivered"], "undelivered", ["retry", "sent", "undelivered"]),
    ],
)
async def test_a_report_on_a_send_twilio_answered_too_late_records_it_and_calls_off_the_retry(
    rig: Rig, reports: list[str], state: str, history: list[str]
) -> None:
    await _first_send_times_out(rig)
    rig.clock.advance(timedelta(seconds=5))  # Twilio reports before the retry is due
    reported_at = rig.clock.now()
    for status in reports:
        await rig.report(status)

    row = await rig.delivery()
    assert (row.state, row.provider_message_id) == (state, FIRST_SID)
    assert row.sent_at == reported_at  # handed over, as a send Twilio answered is
    assert row.lease_owner is None
    assert row.last_error == (None if state != "undelivered" else "Twilio undelivered")
    assert await rig.history() == history

    rig.clock.advance(timedelta(minutes=10))  # long past the retry's time
    await rig.engine.dispatcher.run_once()
    assert len(rig.fake.received()) == 1  # no second SMS
    assert (await rig.delivery()).attempts == 1


async def test_a_report_while_the_retry_is_being_sent_never_moves_it_back(rig: Rig) -> None:
    """The retry is claimed and on its way to Twilio when attempt 1's report comes: the
    report is recorded as for any delivery being sent; neither a ``queued`` report nor
    the retry's own outcome (answered in time, with another SID) undoes it."""
    await _first_send_times_out(rig)
    rig.clock.advance(timedelta(minutes=1))
    rig.fake.plan.push(Scripted(201, hang=TIMEOUT * 0.8))  # attempt 2 answers in time
    retry = asyncio.create_task(rig.engine.dispatcher.run_once())
    deadline = time.monotonic() + 10
    while len(rig.fake.received()) < 2:
        assert time.monotonic() < deadline, "the retry never reached Twilio"
        await asyncio.sleep(0.01)
    assert (await rig.delivery()).state == "sending"

    await rig.report("queued")
    assert (await rig.delivery()).state == "sending"  # says nothing new: no change
    await rig.report("delivered")
    await retry

    row = await rig.delivery()
    assert (row.state, row.provider_message_id, row.attempts) == ("delivered", FIRST_SID, 2)
    assert row.sent_at is not None
    assert "delivered" in await rig.history()
    rig.clock.advance(timedelta(minutes=10))
    await rig.engine.dispatcher.run_once()
    assert len(rig.fake.received()) == 2


async def test_a_report_for_a_delivery_never_tried_changes_nothing(rig: Rig) -> None:
    """The id in a callback URL finds a delivery waiting for its retry only once an attempt
    failed: one not yet tried cannot have reached Twilio."""
    url = f"{PUBLIC}/hooks/twilio/status?delivery=delivery-{(await rig.delivery()).id}"
    params = {"AccountSid": rig.fake.account_sid, "MessageSid": FIRST_SID}
    params["MessageStatus"] = "delivered"
    signature = twilio_signature(rig.fake.auth_token, url, params)
    answer = await rig.http.post(
        url.removeprefix(PUBLIC), data=params, headers={"X-Twilio-Signature": signature}
    )
    assert answer.status_code == 204
    row = await rig.delivery()
    assert (row.state, row.attempts, row.provider_message_id) == ("pending", 0, None)
    assert await rig.history() == []


# Without a send: the endpoints of test_web_hooks' settings -----------------------------------


@pytest.fixture
async def hooks(database: Database) -> AsyncIterator[httpx.AsyncClient]:
    state = WebState(hook_settings(), database, FakeClock(START), SECRET, scheduler_running=True)
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://daemon") as http:
        yield http


def _signed(path: str, params: dict[str, str]) -> dict[str, str]:
    return {"X-Twilio-Signature": twilio_signature(TOKEN, PUBLIC + path, params)}


async def test_a_landline_reported_by_a_callback_disables_the_number(
    hooks: httpx.AsyncClient, database: Database
) -> None:
    """Error 21635 ('To' number cannot be a landline) condemns the number as 21614 does."""
    await seed_sent_sms(database, message_sid=FIRST_SID)
    params = {"AccountSid": SID, "MessageSid": FIRST_SID, "MessageStatus": "failed"}
    params["ErrorCode"] = "21635"
    path = "/hooks/twilio/status"
    assert (await hooks.post(path, data=params, headers=_signed(path, params))).status_code == 204
    async with database.session() as session:
        point = (await session.execute(select(ContactPoint))).scalar_one()
    assert (point.disabled, point.opted_out) == (True, False)
    assert point.disabled_reason == "Twilio error 21635"


@pytest.mark.parametrize("body", ["REVOKE", "optout", " OptOut "])
async def test_twilio_s_newer_opt_out_keywords_opt_the_number_out(
    hooks: httpx.AsyncClient, database: Database, body: str
) -> None:
    await seed_sent_sms(database)
    params = {"AccountSid": SID, "From": PHONE, "Body": body, "MessageSid": "SM" + "1" * 32}
    path = "/hooks/twilio/inbound"
    assert (await hooks.post(path, data=params, headers=_signed(path, params))).status_code == 200
    async with database.session() as session:
        assert (await session.execute(select(ContactPoint))).scalar_one().opted_out
