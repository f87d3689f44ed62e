"""The Twilio SMS channel against a fake Twilio REST API served over real HTTP.

The channel runs the real ``twilio`` library and our httpx client; only the server is a
fake (tests/fakes/twilio.py), speaking Twilio's paths, auth, form fields and JSON bodies.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

import httpx
import pytest
from pydantic import ValidationError

from channels.base import ContactPointState, DeliveryError, Message, Receipt, Target
from channels.redact import REDACTED
from channels.sms_segments import segments
from channels.twilio_sms import (
    LINK_HEADER,
    STATUS_MAP,
    TwilioSettings,
    TwilioSmsChannel,
    parse_inbound_keyword,
    twilio_error,
    verify_twilio_signature,
)
from tests.fakes.control import ResettingServer, Scripted
from tests.fakes.http import free_port, serve
from tests.fakes.twilio import FakeTwilio, error_body, new_sid, twilio_signature

SERVICE = new_sid("MG")
TO = "+15005550006"
LINK = "https://status.example.com/incidents/42"
MESSAGE = Message(
    subject="",
    text="Line 4 is stopped between Central and North. Next update by 14:30.",
    idempotency_key="d-1234",
    headers={LINK_HEADER: LINK},
)


class ChannelFactory(Protocol):
    def __call__(self, **settings: Any) -> TwilioSmsChannel: ...


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[FakeTwilio, str]]:
    """One fake Twilio for the module; each test gets it reset."""
    fake = FakeTwilio()
    with serve(fake.app) as url:
        yield fake, url


@pytest.fixture
def fake(served: tuple[FakeTwilio, str]) -> FakeTwilio:
    served[0].reset()
    return served[0]


@pytest.fixture
async def make_channel(
    fake: FakeTwilio, served: tuple[FakeTwilio, str]
) -> AsyncIterator[ChannelFactory]:
    """Channels with the fake's credentials and URL (and a Messaging Service unless a
    from_number is given); closed after the test."""
    channels: list[TwilioSmsChannel] = []

    def make(**settings: Any) -> TwilioSmsChannel:
        sender = {} if "from_number" in settings else {"messaging_service_sid": SERVICE}
        values: dict[str, Any] = {"account_sid": fake.account_sid, "auth_token": fake.auth_token}
        values |= {"base_url": served[1], "timeout": 5.0, **sender, **settings}
        channel = TwilioSmsChannel("sms", TwilioSettings.model_validate(values))
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        await channel.aclose()


async def _fails(channel: TwilioSmsChannel, to: str = TO) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        await channel.send(Target(to), MESSAGE)
    return info.value


# Sending -----------------------------------------------------------------------------------


async def test_sends_through_a_messaging_service(
    fake: FakeTwilio, make_channel: ChannelFactory
) -> None:
    channel = make_channel(status_callback_url="https://bc.example.com/hooks/twilio/status")
    receipt = await channel.send(Target(TO, name="Ada"), MESSAGE)

    assert re.fullmatch(r"SM[0-9a-f]{32}", receipt.provider_message_id or "")
    assert receipt.detail == "accepted, 1 segment(s)"
    [request] = fake.received()
    assert request.authorised
    assert request.account_sid == fake.account_sid
    assert request.form == {
        "To": TO,
        "Body": f"{MESSAGE.text}\n{LINK}",
        "MessagingServiceSid": SERVICE,
        "StatusCallback": "https://bc.example.com/hooks/twilio/status?delivery=d-1234",
    }
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["user-agent"].startswith("twilio-python/9.")


async def test_sends_from_a_number(fake: FakeTwilio, make_channel: ChannelFactory) -> None:
    channel = make_channel(from_number="+15005550006")
    receipt = await channel.send(Target("+15551230000"), MESSAGE)

    assert receipt.detail == "queued, 1 segment(s)"
    [request] = fake.received()
    assert request.form == {
        "To": "+15551230000",
        "From": "+15005550006",
        "Body": f"{MESSAGE.text}\n{LINK}",
    }


async def test_long_text_is_cut_at_a_sentence_and_keeps_the_link(
    fake: FakeTwilio, make_channel: ChannelFactory
) -> None:
    channel = make_channel(max_segments=2)
    text = " ".join(f"Update {n}: the line is still stopped." for n in range(30))
    await channel.send(Target(TO), Message(subject="", text=text, headers={LINK_HEADER: LINK}))

    body = fake.received()[0].form["Body"]
    assert body.endswith("stopped.\n" + LINK)
    assert body.count(LINK) == 1
    assert segments(body).segments == 2


async def test_without_a_link_header_the_text_goes_alone(
    fake: FakeTwilio, make_channel: ChannelFactory
) -> None:
    await make_channel().send(Target(TO), Message(subject="", text="Resolved. Sorry."))
    assert fake.received()[0].form["Body"] == "Resolved. Sorry."


# Error mapping ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "code", "state"),
    [
        ("invalid", 21211, ContactPointState.DISABLED),
        ("landlines", 21614, ContactPointState.DISABLED),
        ("opted_out", 21610, ContactPointState.OPTED_OUT),
    ],
)
async def test_errors_that_condemn_the_number(
    fake: FakeTwilio, make_channel: ChannelFactory, kind: str, code: int, state: ContactPointState
) -> None:
    getattr(fake, kind).add(TO)
    error = await _fails(make_channel())
    assert error.retryable is False
    assert error.contact_point is state
    assert f"error {code}" in error.reason


async def test_a_landline_refused_at_the_api_disables_the_number(
    fake: FakeTwilio, make_channel: ChannelFactory
) -> None:
    """Outside the US, Canada and the UK Twilio refuses a landline with 21635, not 21614:
    the same verdict on the number."""
    body = error_body(400, 21635, "'To' number cannot be a landline")
    fake.plan.push(Scripted(400, body=json.dumps(body).encode()))
    error = await _fails(make_channel())
    assert (error.retryable, error.contact_point) == (False, ContactPointState.DISABLED)
    assert "error 21635: 'To' number cannot be a landline" in error.reason


async def test_429_is_retried_after_what_twilio_asked(
    fake: FakeTwilio, make_channel: ChannelFactory
) -> None:
    fake.plan.push(Scripted(429, headers={"Retry-After": "7"}), Scripted(429))
    channel = make_channel()
    first = await _fails(channel)
    assert (first.retryable, first.retry_after, first.contact_point) == (True, 7.0, None)
    assert "error 20429: Too Many Requests" in first.reason
    second = await _fails(channel)
    assert (second.retryable, second.retry_after) == (True, None)


async def test_retry_after_belongs_to_its_own_send(
    fake: FakeTwilio, make_channel: ChannelFactory
) -> None:
    """Concurrent sends share one client; response headers travel per send (a context
    variable), so only the send that got the 429 sees its Retry-After."""
    fake.plan.push(Scripted(429, headers={"Retry-After": "30"}))
    channel = make_channel()
    results = await asyncio.gather(
        *(channel.send(Target(TO), MESSAGE) for _ in range(10)), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, DeliveryError)]
    assert [e.retry_after for e in errors] == [30.0]
    receipts = {r.provider_message_id for r in results if isinstance(r, Receipt)}
    assert len(receipts) == 9
    assert len(fake.received()) == 10


QUEUE_FULL = json.dumps(
    error_body(400, 21611, "This 'From' number has exceeded the maximum number of queued messages")
).encode()


async def test_a_full_sender_queue_is_retried_minutes_later_without_blaming_the_number(
    fake: FakeTwilio, make_channel: ChannelFactory
) -> None:
    """Error 21611 comes with HTTP 400, but the sender's queue at Twilio drains at its
    throughput and then takes messages again: a burst of a big incident must not fail
    its SMS for good. Retried, not sooner than five minutes unless Twilio says when."""
    fake.plan.push(Scripted(400, body=QUEUE_FULL), Scripted(400, {"Retry-After": "42"}, QUEUE_FULL))
    channel = make_channel(from_number="+15005550006")
    first = await _fails(channel)
    assert (first.retryable, first.retry_after, first.contact_point) == (True, 300.0, None)
    assert "HTTP 400, error 21611: This 'From' number has exceeded" in first.reason
    assert "queue at Twilio is full" in first.reason
    second = await _fails(channel)
    assert (second.retryable, second.retry_after, second.contact_point) == (True, 42.0, None)
    await channel.send(Target(TO), MESSAGE)  # drained: it goes
    assert len(fake.received()) == 3


NO_PERMISSION = b'{"code": 21408, "message": "Permission to send an SMS has not been enabled"}'
TOO_LONG = b'{"code": 21617, "message": "The concatenated message body exceeds the limit"}'


@pytest.mark.parametrize(
    ("answer", "retryable", "fragment"),
    [
        (Scripted(500), True, "HTTP 500, error 20500: Internal Server Error"),
        (Scripted(502), True, "HTTP 502, error 20502"),
        (Scripted(503), True, "HTTP 503, error 20503: Service Unavailable"),
        (Scripted(504), True, "HTTP 504"),
        (Scripted(502, body=b"<html>Bad gateway</html>"), True, "HTTP 502: untyped body, 24 b"),
        (
            Scripted(200, body=b"<html>Captive portal</html>"),
            True,
            "unreadable answer from Twilio: untyped",
        ),
        # Not Twilio's JSON object: nested past the parser's depth, a list, nothing at all.
        (Scripted(201, body=b"[" * 100_000), True, "unreadable answer from Twilio"),
        (Scripted(201, body=b"[1, 2]"), True, "unreadable answer from Twilio"),
        (Scripted(204, body=b""), True, "no message SID"),
        (Scripted(408), True, "HTTP 408, error 20408"),
        (Scripted(403), False, "credentials or permissions"),
        (Scripted(404), False, "HTTP 404, error 20404"),
        (Scripted(400, body=NO_PERMISSION), False, "HTTP 400, error 21408: Permission"),
        (Scripted(400, body=TOO_LONG), False, "HTTP 400, error 21617"),
    ],
)
async def test_retry_decision_per_answer(
    fake: FakeTwilio, make_channel: ChannelFactory, answer: Scripted, retryable: bool, fragment: str
) -> None:
    """408 and 5xx retried; other 4xx but 429 permanent for the message, never blaming the
    number. A body that is not Twilio's JSON is described, never quoted."""
    fake.plan.push(answer)
    error = await _fails(make_channel())
    assert (error.retryable, error.contact_point, error.retry_after) == (retryable, None, None)
    assert fragment in error.reason
    assert "<html>" not in error.reason and "portal" not in error.reason


async def test_bad_credentials_fail_without_blaming_the_number(
    fake: FakeTwilio, make_channel: ChannelFactory
) -> None:
    wrong = "0123456789abcdef0123456789abcdef"
    error = await _fails(make_channel(auth_token=wrong))
    assert (error.retryable, error.contact_point) == (False, None)
    assert "HTTP 401, error 20003" in error.reason
    assert "credentials" in error.reason
    assert not fake.received()[0].authorised
    for text in (str(error), repr(error), error.reason, repr(error.__cause__)):
        assert wrong not in text
        assert fake.auth_token not in text


async def test_a_timeout_is_retried(fake: FakeTwilio, make_channel: ChannelFactory) -> None:
    fake.plan.push(Scripted(201, hang=1.0))
    error = await _fails(make_channel(timeout=0.2))
    assert error.retryable is True
    assert "did not answer within 0.2s" in error.reason


async def test_a_connection_reset_is_retried(make_channel: ChannelFactory) -> None:
    with ResettingServer() as server:
        error = await _fails(make_channel(base_url=server.url))
    assert error.retryable is True
    assert "cannot reach Twilio" in error.reason


async def test_a_refused_connection_is_retried(make_channel: ChannelFactory) -> None:
    error = await _fails(make_channel(base_url=f"http://127.0.0.1:{free_port()}"))
    assert error.retryable is True
    assert "ConnectError" in error.reason


async def test_an_empty_number_is_disabled_without_asking_twilio(
    fake: FakeTwilio, make_channel: ChannelFactory
) -> None:
    error = await _fails(make_channel(), to="  ")
    assert (error.retryable, error.contact_point) == (False, ContactPointState.DISABLED)
    assert fake.received() == []


async def test_a_closed_channel_refuses_to_send(make_channel: ChannelFactory) -> None:
    channel = make_channel()
    await channel.aclose()
    error = await _fails(channel)
    assert error.retryable is True


# Pure mapping -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "retryable", "state"),
    [
        (400, 21610, False, ContactPointState.OPTED_OUT),
        (400, 21211, False, ContactPointState.DISABLED),
        (400, 21614, False, ContactPointState.DISABLED),
        (400, 21635, False, ContactPointState.DISABLED),  # a landline
        (429, None, True, None),
        (400, 20429, True, None),  # the code alone says "slow down"
        (400, 21611, True, None),  # the sender's queue is full: it drains
        (408, 20408, True, None),
        (503, None, True, None),
        (401, 20003, False, None),
        (409, None, False, None),
    ],
)
def test_retry_table(
    status: int, code: int | None, retryable: bool, state: ContactPointState | None
) -> None:
    error = twilio_error(status, code, "detail")
    assert (error.retryable, error.contact_point) == (retryable, state)
    waited = twilio_error(status, code, "detail", httpx.Headers({"Retry-After": "3"}))
    assert waited.retry_after == (3.0 if retryable else None)


def test_twilio_error_redacts_its_secrets() -> None:
    token = "0123456789abcdef0123456789abcdef"
    error = twilio_error(500, None, f"echo: {token}", secrets=(token,))
    assert token not in error.reason
    assert error.reason == f"Twilio HTTP 500: echo: {REDACTED}"


# Signatures, statuses, keywords ----------------------------------------------------------------

CALLBACK = "https://bc.example.com/hooks/twilio/status?delivery=d-1234"
PARAMS = {"MessageSid": new_sid("SM"), "MessageStatus": "delivered", "To": TO}


def test_a_correctly_signed_callback_verifies(fake: FakeTwilio) -> None:
    signature = twilio_signature(fake.auth_token, CALLBACK, PARAMS)
    assert verify_twilio_signature(fake.auth_token, CALLBACK, PARAMS, signature)


@pytest.mark.parametrize("tamper", ["token", "url", "params", "missing", "empty", "garbage"])
def test_a_forged_or_missing_signature_does_not(fake: FakeTwilio, tamper: str) -> None:
    token, url, params = fake.auth_token, CALLBACK, dict(PARAMS)
    signature: str | None = twilio_signature(token, url, params)
    if tamper == "token":
        signature = twilio_signature("f" * 32, url, params)
    elif tamper == "url":
        url = CALLBACK.replace("d-1234", "d-9999")
    elif tamper == "params":
        params["MessageStatus"] = "failed"
    elif tamper == "missing":
        signature = None
    elif tamper == "empty":
        signature = ""
    else:
        signature = "bm90IGEgc2lnbmF0dXJl"
    assert not verify_twilio_signature(token, url, params, signature)


def test_status_map() -> None:
    listed = "accepted scheduled queued sending sent delivered read undelivered failed canceled"
    assert set(STATUS_MAP) == {*listed.split(), "partially_delivered"}
    assert set(STATUS_MAP.values()) == {"queued", "sent", "delivered", "undelivered", "failed"}
    got = [STATUS_MAP[s] for s in ("accepted", "sending", "sent", "read", "canceled")]
    assert got == ["queued", "queued", "sent", "delivered", "failed"]


def test_inbound_keywords() -> None:
    cases = {
        "stop": [
            *("STOP", "stop", " Stop\n", "STOPALL", "unsubscribe", "CANCEL", "end", "Quit"),
            *("REVOKE", "optout", " OptOut "),  # Twilio's since May 2025
        ],
        "start": ["START", "unstop", "Yes "],
        "help": ["HELP", "info"],
        None: ["", "stop please", "STOP.", "yes!", "ſtop", "S T O P", "hello", "OPT OUT"],
    }
    for keyword, bodies in cases.items():
        assert [parse_inbound_keyword(body) for body in bodies] == [keyword] * len(bodies)


# Settings and secrets -------------------------------------------------------------------------


def _settings(**values: Any) -> TwilioSettings:
    base: dict[str, Any] = {"account_sid": new_sid("AC"), "auth_token": "s3cr3t-token-value"}
    return TwilioSettings.model_validate({**base, **values})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "got neither"),
        ({"from_number": "+15005550006", "messaging_service_sid": SERVICE}, "got both"),
        ({"from_number": "", "messaging_service_sid": " "}, "got neither"),
        ({"from_number": "+1", "account_sid": "AC123"}, "account_sid must be 'AC'"),
        ({"messaging_service_sid": "PN" + "0" * 32}, "messaging_service_sid must be 'MG'"),
        ({"from_number": "+1", "status_callback_url": "bc.example.com"}, "http"),
        ({"from_number": "+1", "max_segments": 0}, "max_segments"),
        ({"from_number": "+1", "region": "ie1"}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_settings_say_why(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _settings(**values)


async def test_the_auth_token_never_shows(fake: FakeTwilio, make_channel: ChannelFactory) -> None:
    settings = _settings(messaging_service_sid=SERVICE, status_callback_url="https://x.example")
    assert (settings.type, settings.contact) == ("twilio", "sms")
    for text in (str(settings), repr(settings), settings.model_dump_json()):
        assert "s3cr3t-token-value" not in text
    channel = make_channel()
    assert channel.contact == "sms"
    assert fake.auth_token not in repr(channel)
    assert fake.auth_token not in str(channel)


async def test_text_that_is_not_unicode_fails_for_good_and_sends_nothing(
    fake: FakeTwilio, make_channel: ChannelFactory
) -> None:
    broken = Message(subject="", text="Line 4 \ud800 stopped", idempotency_key="d-1")
    with pytest.raises(DeliveryError) as refused:
        await make_channel().send(Target(TO), broken)
    assert not refused.value.retryable and refused.value.contact_point is None
    assert "lone surrogate" in refused.value.reason
    assert fake.received() == []
