"""The daemon's HTTP endpoints: Twilio callbacks and inbound SMS, unsubscribe, health."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from xml.sax.saxutils import unescape

import httpx
import pytest
from sqlalchemy import insert, select, update

from broadcaster.clock import FakeClock
from broadcaster.compose.links import make_token
from broadcaster.config.settings import Settings
from broadcaster.incidents import service
from broadcaster.store import (
    ContactPoint,
    Customer,
    Database,
    Delivery,
    DeliveryEvent,
    InboundMessage,
    Round,
)
from broadcaster.store.migrate import upgrade_async
from broadcaster.web import public
from broadcaster.web.app import create_app
from broadcaster.web.state import WebState
from channels.sms_segments import segments
from tests.fakes.twilio import twilio_signature

START = datetime(2026, 1, 6, 8, 0, tzinfo=UTC)
TOKEN = "a" * 32
SID = "AC" + "1" * 32
PUBLIC = "https://status.example.org"
SECRET = "link-secret-for-tests"


def settings() -> Settings:
    return Settings.model_validate(
        {
            "delivery": {"channels": ["sms"]},
            "channels": {
                "sms": {
                    "type": "twilio",
                    "account_sid": SID,
                    "auth_token": TOKEN,
                    "from_number": "+15005550006",
                }
            },
            "messages": {"public_url": PUBLIC, "organisation": "Example Transit"},
        }
    )


@pytest.fixture
async def client(database: Database) -> AsyncIterator[tuple[httpx.AsyncClient, WebState]]:
    state = WebState(settings(), database, FakeClock(START), SECRET, scheduler_running=True)
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://daemon") as http:
        yield http, state


async def seed_sent_sms(
    db: Database, channel: str = "sms", message_sid: str = "SM" + "f" * 32
) -> int:
    """Customer c1 with one SMS number, a minor incident, and one delivery of its first round
    on ``channel``, sent as ``message_sid``; returns the delivery's id."""
    async with db.session() as session, session.begin():
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
        point = await session.execute(
            insert(ContactPoint)
            .values(
                customer_id="c1",
                kind="sms",
                address="+31612345678",
                opted_out=False,
                disabled=False,
                updated_at=START,
            )
            .returning(ContactPoint.id)
        )
        point_id = point.scalar_one()

    incident = await service.declare(
        db, FakeClock(START), service.Declaration("t", "minor", "m", components=["x"])
    )
    async with db.session() as session, session.begin():
        round_id = (await session.execute(select(Round.id))).scalar_one()
        created = await session.execute(
            insert(Delivery)
            .values(
                round_id=round_id,
                incident_id=incident.id,
                customer_id="c1",
                channel=channel,
                contact_point_id=point_id,
                address="+31612345678",
                state="sent",
                attempts=1,
                next_attempt_at=START,
                created_at=START,
                provider_message_id=message_sid,
            )
            .returning(Delivery.id)
        )
        return int(created.scalar_one())


def _signed(path: str, params: dict[str, str]) -> dict[str, str]:
    return {"X-Twilio-Signature": twilio_signature(TOKEN, PUBLIC + path, params)}


async def _status(http: httpx.AsyncClient, status: str, **extra: str) -> httpx.Response:
    params = {"AccountSid": SID, "MessageSid": "SM" + "f" * 32, "MessageStatus": status, **extra}
    path = "/hooks/twilio/status"
    return await http.post(path, data=params, headers=_signed(path, params))


async def test_status_callbacks_move_forward_only_and_are_recorded(
    client: tuple[httpx.AsyncClient, WebState], database: Database
) -> None:
    http, _ = client
    delivery_id = await seed_sent_sms(database)
    assert (await _status(http, "delivered")).status_code == 204
    assert (await _status(http, "sent")).status_code == 204  # late, out of order
    async with database.session() as session:
        row = await session.get(Delivery, delivery_id)
        events = (await session.execute(select(DeliveryEvent.state))).scalars().all()
    assert row is not None and row.state == "delivered"
    assert list(events) == ["delivered"]  # the late "sent" moved nothing: no history


async def test_undelivered_with_opt_out_code_marks_the_number(
    client: tuple[httpx.AsyncClient, WebState], database: Database
) -> None:
    http, _ = client
    delivery_id = await seed_sent_sms(database)
    assert (await _status(http, "undelivered", ErrorCode="21610")).status_code == 204
    async with database.session() as session:
        row = await session.get(Delivery, delivery_id)
        point = (await session.execute(select(ContactPoint))).scalar_one()
    assert row is not None and row.state == "undelivered" and "21610" in (row.last_error or "")
    assert point.opted_out


@pytest.mark.parametrize(
    ("channel", "state", "sid"),
    [
        ("email", "pending", None),  # not Twilio's
        ("email", "sent", None),
        ("sms", "pending", None),  # never handed to Twilio
        ("sms", "sent", "SM" + "0" * 32),  # Twilio's, under another message
    ],
)
async def test_a_signed_callback_changes_only_the_twilio_delivery_it_reports_on(
    client: tuple[httpx.AsyncClient, WebState],
    database: Database,
    channel: str,
    state: str,
    sid: str | None,
) -> None:
    """The ``delivery`` in the callback URL finds the delivery only when it is a Twilio
    channel's, handed over, with no other message SID: a callback cannot mark an email
    delivered, or opt an address out, by naming another delivery."""
    http, _ = client
    delivery_id = await seed_sent_sms(database, channel=channel)
    async with database.session() as session, session.begin():
        row = await session.get(Delivery, delivery_id)
        assert row is not None
        row.state, row.provider_message_id = state, sid
    params = {
        "AccountSid": SID,
        "MessageSid": "SM" + "f" * 32,
        "MessageStatus": "undelivered",
        "ErrorCode": "21610",
    }
    path = f"/hooks/twilio/status?delivery=delivery-{delivery_id}"
    answer = await http.post(path, data=params, headers=_signed(path, params))
    assert answer.status_code == 204
    async with database.session() as session:
        after = await session.get(Delivery, delivery_id)
        point = (await session.execute(select(ContactPoint))).scalar_one()
    assert after is not None and (after.state, after.provider_message_id) == (state, sid)
    assert not point.opted_out


async def test_a_callback_before_its_sid_is_recorded_finds_the_delivery_by_its_url(
    client: tuple[httpx.AsyncClient, WebState], database: Database
) -> None:
    http, _ = client
    delivery_id = await seed_sent_sms(database)
    async with database.session() as session, session.begin():
        row = await session.get(Delivery, delivery_id)
        assert row is not None
        row.state, row.provider_message_id = "sending", None  # its outcome not yet written
    params = {"AccountSid": SID, "MessageSid": "SM" + "f" * 32, "MessageStatus": "delivered"}
    path = f"/hooks/twilio/status?delivery=delivery-{delivery_id}"
    assert (await http.post(path, data=params, headers=_signed(path, params))).status_code == 204
    async with database.session() as session:
        after = await session.get(Delivery, delivery_id)
    assert after is not None and (after.state, after.provider_message_id) == (
        "delivered",
        "SM" + "f" * 32,
    )


@pytest.mark.parametrize("signature", [None, "forged", "AAAA"])
async def test_forged_or_missing_signature_is_refused_and_changes_nothing(
    client: tuple[httpx.AsyncClient, WebState], database: Database, signature: str | None
) -> None:
    http, _ = client
    delivery_id = await seed_sent_sms(database)
    params = {"AccountSid": SID, "MessageSid": "SM" + "f" * 32, "MessageStatus": "failed"}
    headers = {"X-Twilio-Signature": signature} if signature else {}
    response = await http.post("/hooks/twilio/status", data=params, headers=headers)
    assert response.status_code == 403
    async with database.session() as session:
        row = await session.get(Delivery, delivery_id)
        events = (await session.execute(select(DeliveryEvent))).scalars().all()
    assert row is not None and row.state == "sent" and events == []


async def test_signature_over_other_params_is_refused(
    client: tuple[httpx.AsyncClient, WebState], database: Database
) -> None:
    http, _ = client
    await seed_sent_sms(database)
    params = {"AccountSid": SID, "MessageSid": "SM" + "f" * 32, "MessageStatus": "delivered"}
    headers = _signed("/hooks/twilio/status", params)
    tampered = {**params, "MessageStatus": "failed"}
    response = await http.post("/hooks/twilio/status", data=tampered, headers=headers)
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("body", "opted_out"),
    [
        ("STOP", True),
        ("stopall", True),
        (" Unsubscribe ", True),
        ("cancel", True),
        ("END", True),
        ("quit", True),
    ],
)
async def test_inbound_stop_words_opt_the_number_out(
    client: tuple[httpx.AsyncClient, WebState], database: Database, body: str, opted_out: bool
) -> None:
    http, _ = client
    await seed_sent_sms(database)
    params = {"AccountSid": SID, "From": "+31612345678", "Body": body, "MessageSid": _sms_sid(1)}
    path = "/hooks/twilio/inbound"
    response = await http.post(path, data=params, headers=_signed(path, params))
    assert response.status_code == 200
    async with database.session() as session:
        point = (await session.execute(select(ContactPoint))).scalar_one()
    assert point.opted_out is opted_out


async def test_inbound_start_opts_back_in_and_help_answers(
    client: tuple[httpx.AsyncClient, WebState], database: Database
) -> None:
    http, _ = client
    await seed_sent_sms(database)
    path = "/hooks/twilio/inbound"
    for n, body in enumerate(("STOP", "UNSTOP")):
        params = {
            "AccountSid": SID,
            "From": "+31612345678",
            "Body": body,
            "MessageSid": _sms_sid(n),
        }
        await http.post(path, data=params, headers=_signed(path, params))
    async with database.session() as session:
        point = (await session.execute(select(ContactPoint))).scalar_one()
    assert not point.opted_out
    params = {"AccountSid": SID, "From": "+31612345678", "Body": "HELP"}
    answer = await http.post(path, data=params, headers=_signed(path, params))
    assert "<Message>Example Transit" in answer.text and "STOP" in answer.text


def _sms_sid(n: int) -> str:
    return f"SM{n:032x}"


async def _seed_number_owners(db: Database, phone: str, languages: dict[str, str]) -> None:
    """Customers (id → language) who all have ``phone`` as their SMS number."""
    async with db.session() as session, session.begin():
        for customer_id, language in languages.items():
            await session.execute(
                insert(Customer).values(
                    id=customer_id,
                    name=customer_id,
                    language=language,
                    timezone="UTC",
                    created_at=START,
                    updated_at=START,
                )
            )
            await session.execute(
                insert(ContactPoint).values(
                    customer_id=customer_id,
                    kind="sms",
                    address=phone,
                    opted_out=False,
                    disabled=False,
                    updated_at=START,
                )
            )


async def _help_answer(
    http: httpx.AsyncClient, phone: str, body: str = "HELP", public: str = PUBLIC
) -> str:
    """The text of the one SMS the TwiML answer to ``body`` from ``phone`` sends."""
    params = {"AccountSid": SID, "From": phone, "Body": body, "MessageSid": _sms_sid(99)}
    path = "/hooks/twilio/inbound"
    signature = twilio_signature(TOKEN, public + path, params)
    answer = await http.post(path, data=params, headers={"X-Twilio-Signature": signature})
    assert answer.status_code == 200
    found = re.fullmatch(
        r'<\?xml version="1.0" encoding="UTF-8"\?><Response><Message>([^<]*)</Message></Response>',
        answer.text,
    )
    assert found is not None, answer.text
    return unescape(found.group(1))


ENGLISH_HELP = (
    "Example Transit: updates about disruptions that affect you. Reply STOP to stop them, "
    f"START to resume. {PUBLIC}"
)
DUTCH_HELP = (
    "Example Transit: updates over storingen die u raken. Stuur STOP om te stoppen, START om "
    f"te hervatten. {PUBLIC}"
)


@pytest.mark.parametrize(
    ("languages", "expected"),
    [
        ({"c1": "nl"}, DUTCH_HELP),
        ({"c1": "nl-BE"}, DUTCH_HELP),
        ({"c1": "en"}, ENGLISH_HELP),
        ({"c1": "de"}, ENGLISH_HELP),  # no words in German: the default language
        ({"c2": "en", "c1": "nl"}, DUTCH_HELP),  # a shared number: the first customer by id
        ({"c1": "en", "c2": "nl"}, ENGLISH_HELP),
    ],
)
async def test_help_is_answered_in_the_language_of_the_number_s_customer(
    client: tuple[httpx.AsyncClient, WebState],
    database: Database,
    languages: dict[str, str],
    expected: str,
) -> None:
    http, _ = client
    await _seed_number_owners(database, "+31611111111", languages)
    assert await _help_answer(http, "+31611111111") == expected
    assert await _help_answer(http, "+31611111111", " info ") == expected


async def test_help_from_a_number_of_no_customer_is_in_the_default_language(
    database: Database,
) -> None:
    config = settings()
    config.messages.default_language = "nl"
    state = WebState(config, database, FakeClock(START), SECRET, scheduler_running=True)
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://daemon") as http:
        await _seed_number_owners(database, "+31611111111", {"c1": "en"})
        assert await _help_answer(http, "+31622222222") == DUTCH_HELP
        # A customer's own language wins over the default.
        assert await _help_answer(http, "+31611111111") == ENGLISH_HELP


@pytest.mark.parametrize("language", ["en", "nl"])
async def test_the_help_answer_is_one_gsm7_sms_even_with_letters_outside_the_alphabet(
    database: Database, language: str
) -> None:
    """An organisation name with a letter the GSM alphabet lacks is written without its
    accent, as every SMS of ours is: one such letter would make the answer UCS-2 (70
    characters a part) and two SMS."""
    config = settings()
    config.messages.organisation = "Zoë’s Stadsvervoer"
    config.messages.public_url = "https://status.stadsvervoer-example.nl"
    state = WebState(config, database, FakeClock(START), SECRET, scheduler_running=True)
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://daemon") as http:
        await _seed_number_owners(database, "+31611111111", {"c1": language})
        text = await _help_answer(http, "+31611111111", public=config.messages.public_url)
    assert text.startswith("Zoe's Stadsvervoer: ")
    assert text.endswith(" https://status.stadsvervoer-example.nl")
    assert (segments(text).encoding, segments(text).segments) == ("GSM-7", 1)


async def test_an_inbound_start_sent_again_after_a_stop_changes_nothing(
    client: tuple[httpx.AsyncClient, WebState], database: Database
) -> None:
    """A signed request carries no time: a START captured and sent again after the
    customer's STOP must not subscribe them again."""
    http, state = client
    await seed_sent_sms(database)
    path = "/hooks/twilio/inbound"
    start = {"AccountSid": SID, "From": "+31612345678", "Body": "START", "MessageSid": _sms_sid(7)}
    stop = {**start, "Body": "STOP", "MessageSid": _sms_sid(8)}
    for params in (start, stop, start, stop):
        answer = await http.post(path, data=params, headers=_signed(path, params))
        assert answer.status_code == 200
    async with database.session() as session:
        point = (await session.execute(select(ContactPoint))).scalar_one()
        seen = (await session.execute(select(InboundMessage))).scalars().all()
    assert point.opted_out
    assert sorted((row.provider_message_id, row.keyword) for row in seen) == [
        (_sms_sid(7), "start"),
        (_sms_sid(8), "stop"),
    ]
    assert state.counters["twilio_inbound_repeated"] == 2


@pytest.mark.parametrize("sid", [None, "", "SM123", "XX" + "0" * 32])
async def test_an_inbound_keyword_without_a_message_id_is_refused(
    client: tuple[httpx.AsyncClient, WebState], database: Database, sid: str | None
) -> None:
    http, _ = client
    await seed_sent_sms(database)
    path = "/hooks/twilio/inbound"
    params = {"AccountSid": SID, "From": "+31612345678", "Body": "STOP"}
    if sid is not None:
        params["MessageSid"] = sid
    answer = await http.post(path, data=params, headers=_signed(path, params))
    assert answer.status_code == 400 and "MessageSid" in answer.text
    async with database.session() as session:
        assert not (await session.execute(select(ContactPoint))).scalar_one().opted_out


async def test_one_click_unsubscribe(
    client: tuple[httpx.AsyncClient, WebState], database: Database
) -> None:
    http, _ = client
    await seed_sent_sms(database)
    token = make_token(SECRET, "c1", "unsubscribe", START + timedelta(days=1))
    page = await http.get(f"/u/{token}")
    assert page.status_code == 200 and "<form" in page.text
    async with database.session() as session:
        assert not (await session.execute(select(ContactPoint))).scalar_one().opted_out
    done = await http.post(
        f"/u/{token}",
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert done.status_code == 200
    async with database.session() as session:
        assert (await session.execute(select(ContactPoint))).scalar_one().opted_out


@pytest.mark.parametrize("mutate", ["forge", "expire", "purpose"])
async def test_bad_unsubscribe_links_are_refused(
    client: tuple[httpx.AsyncClient, WebState], database: Database, mutate: str
) -> None:
    http, _ = client
    await seed_sent_sms(database)
    if mutate == "forge":
        token = make_token("another-secret", "c1", "unsubscribe", START + timedelta(days=1))
    elif mutate == "expire":
        token = make_token(SECRET, "c1", "unsubscribe", START - timedelta(seconds=1))
    else:
        token = make_token(SECRET, "c1", "preferences", START + timedelta(days=1))
    assert (await http.post(f"/u/{token}")).status_code == 400
    async with database.session() as session:
        assert not (await session.execute(select(ContactPoint))).scalar_one().opted_out


async def test_an_unsubscribe_link_older_than_its_lifetime_still_unsubscribes(
    client: tuple[httpx.AsyncClient, WebState], database: Database
) -> None:
    """An email read (or one-click unsubscribed by the mail client, RFC 8058) after
    messages.link_lifetime got 400 "the link has expired": every channel stayed subscribed
    and the customer had no way forward. Unsubscribing is always safe to honour."""
    http, state = client
    await seed_sent_sms(database)  # c1, created at START
    issued = START + timedelta(hours=1)
    token = make_token(SECRET, "c1", "unsubscribe", issued + timedelta(days=30), issued=issued)
    assert isinstance(state.clock, FakeClock)
    state.clock.advance(timedelta(days=400))
    confirm = await http.get(f"/u/{token}")  # the page's own button
    assert confirm.status_code == 200 and "<form" in confirm.text
    async with database.session() as session:
        assert not (await session.execute(select(ContactPoint))).scalar_one().opted_out
    done = await http.post(
        f"/u/{token}",
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert done.status_code == 200 and "You are unsubscribed" in done.text
    async with database.session() as session:
        assert (await session.execute(select(ContactPoint))).scalar_one().opted_out


async def test_an_expired_link_that_cannot_be_honoured_says_how_to_stop(
    client: tuple[httpx.AsyncClient, WebState], database: Database
) -> None:
    """An old unsubscribe link of a customer erased and created again under the same id is
    still not theirs; an earlier build's link (no issue time) past its expiry cannot be told
    from one, so it is refused, with the ways to stop that remain."""
    http, state = client
    await seed_sent_sms(database)  # c1, created at START
    before = START - timedelta(days=60)
    recycled = make_token(SECRET, "c1", "unsubscribe", before + timedelta(days=30), issued=before)
    legacy = make_token(SECRET, "c1", "unsubscribe", START + timedelta(days=30))
    assert isinstance(state.clock, FakeClock)
    state.clock.advance(timedelta(days=31))
    for method in ("GET", "POST"):
        assert (await http.request(method, f"/u/{recycled}")).status_code == 404
        answer = await http.request(method, f"/u/{legacy}")
        assert answer.status_code == 400 and "This link has expired" in answer.text
        assert "unsubscribe link in our most recent email" in answer.text
        assert "reply STOP" in answer.text and "unsubscribed" not in answer.text
    async with database.session() as session:
        assert not (await session.execute(select(ContactPoint))).scalar_one().opted_out


async def test_links_of_an_erased_customer_do_not_reach_one_created_later_with_its_id(
    client: tuple[httpx.AsyncClient, WebState], database: Database
) -> None:
    """An account number given again: the old customer's messages still hold signed links
    for that id, valid for their lifetime."""
    http, _ = client
    await seed_sent_sms(database)  # c1, created at START
    expires = START + timedelta(days=30)
    old_unsubscribe = make_token(SECRET, "c1", "unsubscribe", expires, issued=START)
    old_preferences = make_token(SECRET, "c1", "preferences", expires, issued=START)
    async with database.session() as session, session.begin():
        await session.execute(
            update(Customer).where(Customer.id == "c1").values(created_at=START + timedelta(days=3))
        )
    assert (await http.get(f"/u/{old_unsubscribe}")).status_code == 404
    assert (await http.post(f"/u/{old_unsubscribe}")).status_code == 404
    assert (await http.get(f"/preferences/{old_preferences}")).status_code == 404
    saved = await http.post(f"/preferences/{old_preferences}", data={"action": "unsubscribe"})
    assert saved.status_code == 404
    async with database.session() as session:
        assert not (await session.execute(select(ContactPoint))).scalar_one().opted_out
    # The new customer's own links work.
    issued = START + timedelta(days=3, minutes=1)
    theirs = make_token(SECRET, "c1", "preferences", expires, issued=issued)
    assert (await http.get(f"/preferences/{theirs}")).status_code == 200


async def test_healthz(client: tuple[httpx.AsyncClient, WebState], database: Database) -> None:
    http, state = client
    assert (await http.get("/healthz")).json() == {
        "status": "ok",
        "store": "ok",
        "scheduler": "running",
        "leader": False,
        "rounds_overdue": 0,
    }
    # A first round nobody wrote out (the leader frozen): said, on every daemon.
    await seed_sent_sms(database)
    state.clock = FakeClock(START + timedelta(minutes=5))
    state.leading = lambda: True
    said = (await http.get("/healthz")).json()
    assert (said["status"], said["leader"], said["rounds_overdue"]) == ("ok", True, 1)
    state.scheduler_running = False
    assert (await http.get("/healthz")).status_code == 503


async def test_healthz_answers_503_when_the_store_does_not_answer(
    client: tuple[httpx.AsyncClient, WebState], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that holds the check (a paused pooler) gives the probe its 503 in time."""
    http, state = client
    monkeypatch.setattr(public, "STORE_CHECK_SECONDS", 0.2)
    real = state.database.ping

    async def stalled() -> None:
        await asyncio.sleep(30)
        await real()

    monkeypatch.setattr(state.database, "ping", stalled)
    started = time.monotonic()
    answer = await http.get("/healthz")
    assert answer.status_code == 503 and answer.json()["store"] == "unreachable"
    assert time.monotonic() - started < 5


async def test_healthz_says_ok_while_a_long_transaction_holds_the_store(
    client: tuple[httpx.AsyncClient, WebState], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round of many customers being written holds a SQLite daemon's one connection for
    seconds: the store is busy, not down, and a probe that restarts the daemon on a 503
    would cut the round short."""
    http, state = client
    monkeypatch.setattr(public, "STORE_CHECK_SECONDS", 1.0)
    async with state.database.session() as session, session.begin():
        await session.execute(
            insert(Customer).values(id="busy", name="Busy", created_at=START, updated_at=START)
        )
        started = time.monotonic()
        answer = await http.get("/healthz")
        assert answer.status_code == 200, answer.text
        assert answer.json()["store"] == "ok"
        assert time.monotonic() - started < 1.0


async def test_healthz_answers_503_when_the_sqlite_file_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/gone.db"
    await upgrade_async(url)
    database = Database(url)
    try:
        state = WebState(settings(), database, FakeClock(START), SECRET, scheduler_running=True)
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://daemon") as http:
            assert (await http.get("/healthz")).status_code == 200
            (tmp_path / "gone.db").unlink()
            answer = await http.get("/healthz")
            assert answer.status_code == 503 and answer.json()["store"] == "unreachable"
    finally:
        await database.dispose()


async def test_the_public_incident_page_shows_the_timeline_and_no_customer_data(
    client: tuple[httpx.AsyncClient, WebState], database: Database
) -> None:
    http, _ = client
    await seed_sent_sms(database)  # customer "Ann", +31612345678; incident 1, "t"
    clock = FakeClock(START + timedelta(minutes=5))
    await service.post_update(
        database,
        clock,
        1,
        service.UpdateRequest(
            "We found it <b>now</b>.",
            status="identified",
            cause_kind="known",
            cause="A broken switch.",
            workaround="Take the bus.",
        ),
    )
    page = await http.get("/incidents/1")
    assert page.status_code == 200
    text = page.text
    assert "Cause identified" in text and "A broken switch." in text and "Take the bus." in text
    assert "We found it &lt;b&gt;now&lt;/b&gt;." in text
    assert "Ann" not in text and "+31612345678" not in text
    assert (await http.get("/incidents/999")).status_code == 404


@pytest.mark.parametrize("delivery", ["delivery-%C2%B2", "delivery-" + "9" * 30])
async def test_a_signed_callback_with_odd_values_is_answered_not_a_crash(
    client: tuple[httpx.AsyncClient, WebState], database: Database, delivery: str
) -> None:
    http, _ = client
    delivery_id = await seed_sent_sms(database)
    path = f"/hooks/twilio/status?delivery={delivery}"
    params = {"AccountSid": SID, "MessageSid": "SM\x00x", "MessageStatus": "failed"}
    response = await http.post(path, data=params, headers=_signed(path, params))
    assert response.status_code == 204
    async with database.session() as session:
        row = await session.get(Delivery, delivery_id)
    assert row is not None and row.state == "sent"  # it matched nothing


async def _with_email_to_fail_over_to(database: Database) -> tuple[WebState, int]:
    """The seeded SMS delivery, its customer's e-mail address, and a web state whose
    failover order goes from SMS to e-mail."""
    config = settings()
    config.channels["mail"] = Settings.model_validate(
        {"channels": {"mail": {"type": "console", "contact": "email"}}}
    ).channels["mail"]
    config.delivery.failover = ["sms", "mail"]
    state = WebState(config, database, FakeClock(START), SECRET, scheduler_running=True)
    delivery_id = await seed_sent_sms(database)
    async with database.session() as session, session.begin():
        await session.execute(
            insert(ContactPoint).values(
                customer_id="c1",
                kind="email",
                address="ann@example.org",
                opted_out=False,
                disabled=False,
                updated_at=START,
            )
        )
    return state, delivery_id


async def test_an_undelivered_sms_fails_over_to_the_customer_s_next_channel(
    database: Database,
) -> None:
    """The carrier could not deliver it (30003: unreachable handset): the round goes to the
    customer's e-mail, as a permanent failure at the send would; a repeated report makes no
    second copy."""
    state, delivery_id = await _with_email_to_fail_over_to(database)
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://daemon") as http:
        assert (await _status(http, "undelivered", ErrorCode="30003")).status_code == 204
        assert (await _status(http, "undelivered", ErrorCode="30003")).status_code == 204
    async with database.session() as session:
        rows = (
            await session.execute(
                select(
                    Delivery.id,
                    Delivery.channel,
                    Delivery.state,
                    Delivery.address,
                    Delivery.failover_from_id,
                    Delivery.failover_to,
                ).order_by(Delivery.id)
            )
        ).all()
    follow_id = rows[1][0]
    assert [tuple(r) for r in rows] == [
        (delivery_id, "sms", "undelivered", "+31612345678", None, "mail"),
        (follow_id, "mail", "pending", "ann@example.org", delivery_id, None),
    ]


async def test_a_late_failure_report_does_not_send_a_stale_round(database: Database) -> None:
    """Twilio reports the SMS undelivered after a later round (here the resolution) already
    reached the customer: it is recorded, and nothing older goes out by e-mail."""
    state, delivery_id = await _with_email_to_fail_over_to(database)
    async with database.session() as session, session.begin():
        old = await session.get(Delivery, delivery_id)
        assert old is not None
        await session.execute(
            insert(Round).values(
                incident_id=old.incident_id,
                number=2,
                kind="resolution",
                state="dispatched",
                due_at=START,
            )
        )
        newer = (await session.execute(select(Round.id).where(Round.number == 2))).scalar_one()
        await session.execute(
            insert(Delivery).values(
                round_id=newer,
                incident_id=old.incident_id,
                customer_id="c1",
                channel="sms",
                address="+31612345678",
                state="sent",
                attempts=1,
                next_attempt_at=START,
                created_at=START,
            )
        )
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://daemon") as http:
        assert (await _status(http, "undelivered", ErrorCode="30003")).status_code == 204
    async with database.session() as session:
        channels = (await session.execute(select(Delivery.channel, Delivery.state))).all()
    assert sorted(tuple(c) for c in channels) == [("sms", "sent"), ("sms", "undelivered")]
