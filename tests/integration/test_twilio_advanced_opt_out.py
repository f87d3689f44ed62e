"""Inbound SMS from a Messaging Service with Twilio's Advanced Opt-Out: Twilio answers the
keywords itself (its own and those configured in its console) and says which one a message
was in ``OptOutType``. Consent follows it, whatever the text; we answer nothing (an answer
of ours would be the customer's second); a value we do not know changes nothing. Requests
are signed as Twilio signs them; replays are told by MessageSid as on the keyword path."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import select

from broadcaster.clock import FakeClock
from broadcaster.store import ContactPoint, Database, InboundMessage
from broadcaster.web.app import create_app
from broadcaster.web.state import WebState
from tests.fakes.twilio import twilio_signature
from tests.integration.test_web_hooks import PUBLIC, SECRET, SID, START, TOKEN, seed_sent_sms
from tests.integration.test_web_hooks import settings as hook_settings

PATH = "/hooks/twilio/inbound"
PHONE = "+31612345678"
EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
"""TwiML that sends nothing."""


@pytest.fixture
async def hooks(database: Database) -> AsyncIterator[tuple[httpx.AsyncClient, WebState]]:
    state = WebState(hook_settings(), database, FakeClock(START), SECRET, scheduler_running=True)
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://daemon") as http:
        yield http, state


def _sid(n: int) -> str:
    return f"SM{n:032x}"


def _inbound(body: str, n: int, opt_out_type: str | None = None) -> dict[str, str]:
    params = {"AccountSid": SID, "From": PHONE, "To": "+15005550006", "Body": body}
    params["MessageSid"] = _sid(n)
    if opt_out_type is not None:
        params["OptOutType"] = opt_out_type
    return params


async def _post(http: httpx.AsyncClient, params: dict[str, str]) -> httpx.Response:
    signature = twilio_signature(TOKEN, PUBLIC + PATH, params)
    return await http.post(PATH, data=params, headers={"X-Twilio-Signature": signature})


async def _opted_out(database: Database) -> bool:
    async with database.session() as session:
        return (await session.execute(select(ContactPoint))).scalar_one().opted_out


@pytest.mark.parametrize(
    ("body", "opt_out_type"),
    [
        ("ARRET", "STOP"),  # a keyword configured in Twilio's console: not one of ours
        ("Afmelden", "STOP"),
        ("STOP", "STOP"),
        ("stop", "stop"),  # the value read in any case
    ],
)
async def test_stop_by_twilio_opts_the_number_out_and_we_answer_nothing(
    hooks: tuple[httpx.AsyncClient, WebState], database: Database, body: str, opt_out_type: str
) -> None:
    http, state = hooks
    await seed_sent_sms(database)
    answer = await _post(http, _inbound(body, 1, opt_out_type))
    assert answer.status_code == 200
    assert answer.text == EMPTY
    assert answer.headers["content-type"].startswith("application/xml")
    assert await _opted_out(database)
    assert state.counters["twilio_inbound_stop"] == 1


async def test_start_by_twilio_opts_the_number_back_in_whatever_the_text(
    hooks: tuple[httpx.AsyncClient, WebState], database: Database
) -> None:
    http, state = hooks
    await seed_sent_sms(database)
    assert (await _post(http, _inbound("ARRET", 1, "STOP"))).text == EMPTY
    assert await _opted_out(database)
    answer = await _post(http, _inbound("AANMELDEN", 2, "START"))
    assert answer.status_code == 200 and answer.text == EMPTY
    assert not await _opted_out(database)
    assert state.counters["twilio_inbound_start"] == 1
    async with database.session() as session:
        seen = (await session.execute(select(InboundMessage))).scalars().all()
    assert sorted((row.provider_message_id, row.keyword) for row in seen) == [
        (_sid(1), "stop"),
        (_sid(2), "start"),
    ]


async def test_help_by_twilio_gets_no_second_answer_and_changes_nothing(
    hooks: tuple[httpx.AsyncClient, WebState], database: Database
) -> None:
    http, state = hooks
    await seed_sent_sms(database)
    # Without Advanced Opt-Out we answer HELP ourselves ...
    ours = await _post(http, _inbound("HELP", 1))
    assert "<Message>Example Transit" in ours.text
    # ... with it, Twilio has already answered: ours would be a second SMS.
    for n, body in enumerate(("HELP", "INFO", "HULP"), start=2):
        answer = await _post(http, _inbound(body, n, "HELP"))
        assert answer.status_code == 200 and answer.text == EMPTY
    assert not await _opted_out(database)
    assert state.counters["twilio_inbound_help_by_twilio"] == 3
    async with database.session() as session:
        assert (await session.execute(select(InboundMessage))).scalars().all() == []


async def test_the_opt_out_type_wins_over_the_text(
    hooks: tuple[httpx.AsyncClient, WebState], database: Database
) -> None:
    """Twilio's word on what a message was is the one consent follows: a body that reads
    as one of our keywords does not undo it."""
    http, _ = hooks
    await seed_sent_sms(database)
    await _post(http, _inbound("START", 1, "STOP"))
    assert await _opted_out(database)
    answer = await _post(http, _inbound("HELP", 2, "START"))
    assert answer.text == EMPTY
    assert not await _opted_out(database)


@pytest.mark.parametrize("value", ["", "UNSUBSCRIBE", "OPTOUT", "STOPP", "ＳＴＯＰ", "x" * 500])
async def test_an_opt_out_type_we_do_not_know_is_counted_and_changes_nothing(
    hooks: tuple[httpx.AsyncClient, WebState],
    database: Database,
    caplog: pytest.LogCaptureFixture,
    value: str,
) -> None:
    http, state = hooks
    await seed_sent_sms(database)
    caplog.set_level(logging.WARNING, logger="broadcaster.web")
    answer = await _post(http, _inbound("STOP", 1, value))
    assert answer.status_code == 200 and answer.text == EMPTY
    assert not await _opted_out(database)
    assert state.counters["twilio_inbound_opt_out_type_unknown"] == 1
    assert "twilio_inbound_stop" not in state.counters
    [logged] = [r for r in caplog.records if "OptOutType" in r.getMessage()]
    assert logged.__dict__["opt_out_type"] == value[:32]
    async with database.session() as session:
        assert (await session.execute(select(InboundMessage))).scalars().all() == []


async def test_a_replayed_start_after_the_stop_changes_nothing(
    hooks: tuple[httpx.AsyncClient, WebState], database: Database
) -> None:
    """A signed request carries no time: a START captured and sent again after the
    customer's STOP must not subscribe them again."""
    http, state = hooks
    await seed_sent_sms(database)
    start, stop = _inbound("JA", 7, "START"), _inbound("NEE", 8, "STOP")
    for params in (start, stop, start, stop):
        answer = await _post(http, params)
        assert answer.status_code == 200 and answer.text == EMPTY
    assert await _opted_out(database)
    assert state.counters["twilio_inbound_repeated"] == 2
    assert state.counters["twilio_inbound_start"] == state.counters["twilio_inbound_stop"] == 1


@pytest.mark.parametrize("sid", [None, "", "SM123", "XX" + "0" * 32])
async def test_an_opt_out_type_without_a_message_id_is_refused(
    hooks: tuple[httpx.AsyncClient, WebState], database: Database, sid: str | None
) -> None:
    http, state = hooks
    await seed_sent_sms(database)
    params = _inbound("ARRET", 1, "STOP")
    del params["MessageSid"]
    if sid is not None:
        params["MessageSid"] = sid
    answer = await _post(http, params)
    assert answer.status_code == 400 and "MessageSid" in answer.text
    assert not await _opted_out(database)
    assert state.counters["twilio_inbound_refused"] == 1


async def test_an_opt_out_type_added_to_a_signed_request_is_refused(
    hooks: tuple[httpx.AsyncClient, WebState], database: Database
) -> None:
    """The parameter is signed with the rest: one added or changed afterwards is a forgery."""
    http, _ = hooks
    await seed_sent_sms(database)
    signed = _inbound("Hallo", 1)
    headers = {"X-Twilio-Signature": twilio_signature(TOKEN, PUBLIC + PATH, signed)}
    for forged in ({**signed, "OptOutType": "STOP"}, {**_inbound("x", 1, "START")}):
        answer = await http.post(PATH, data=forged, headers=headers)
        assert answer.status_code == 403
    assert not await _opted_out(database)


async def test_without_an_opt_out_type_the_text_is_read_as_before(
    hooks: tuple[httpx.AsyncClient, WebState], database: Database
) -> None:
    """Services without Advanced Opt-Out: our own keywords, and nothing else, count."""
    http, _ = hooks
    await seed_sent_sms(database)
    assert (await _post(http, _inbound("ARRET", 1))).text == EMPTY
    assert not await _opted_out(database)
    assert (await _post(http, _inbound(" stop ", 2))).text == EMPTY
    assert await _opted_out(database)
