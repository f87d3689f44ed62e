"""The webhook channel against a real local receiver that checks the v1 signature.

The receiver (``tests.fakes.webhook``) runs uvicorn on its own thread; the channel speaks
HTTP to it. The signing functions are also pinned on their own: known vectors, tampering,
replay, and hypothesis properties over any body, secret and timestamp.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Protocol

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from channels.base import ContactPointState, DeliveryError, Message, Target
from channels.redact import REDACTED
from channels.webhook import WebhookChannel, WebhookSettings, sign, verify
from tests.fakes.control import ResettingServer, Scripted
from tests.fakes.http import free_port, serve
from tests.fakes.webhook import WebhookReceiver

SECRET = "whsec-test-0123456789abcdef"
T0 = 1_767_225_600.0


class FakeClock:
    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class ChannelFactory(Protocol):
    def __call__(self, **settings: Any) -> WebhookChannel: ...


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def receiver(clock: FakeClock) -> WebhookReceiver:
    return WebhookReceiver(SECRET, clock=clock)


@pytest.fixture
def base_url(receiver: WebhookReceiver) -> Iterator[str]:
    with serve(receiver.app) as url:
        yield url


@pytest.fixture
async def make_channel(clock: FakeClock) -> AsyncIterator[ChannelFactory]:
    channels: list[WebhookChannel] = []

    def make(**settings: Any) -> WebhookChannel:
        settings.setdefault("secret", SECRET)
        settings.setdefault("timeout", 5.0)
        channel = WebhookChannel("hook", WebhookSettings(**settings), clock=clock)
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        await channel.aclose()


def message(**overrides: Any) -> Message:
    fields: dict[str, Any] = {
        "subject": "Line 4 stopped",
        "text": "Trains on line 4 are stopped. Next update by 14:30.",
        "html": "<p>Trains on line 4 are stopped.</p>",
        "idempotency_key": "delivery-42",
        "headers": {"X-Broadcaster-Round": "7/2"},
        "created_at": datetime(2026, 1, 1, 12, 0, tzinfo=UTC),
    }
    fields.update(overrides)
    return Message(**fields)


TARGET = Target(address="acct-1", name="Ada Lovelace", customer_id="c-1")


async def test_signed_post_reaches_the_receiver(
    make_channel: ChannelFactory, receiver: WebhookReceiver, base_url: str
) -> None:
    channel = make_channel(url=f"{base_url}/hooks/broadcaster")
    receipt = await channel.send(TARGET, message())
    assert receipt.provider_message_id == "delivery-42"
    [got] = receiver.accepted
    assert got.path == "/hooks/broadcaster"
    assert got.headers["idempotency-key"] == "delivery-42"
    assert got.headers["x-broadcaster-timestamp"] == str(int(T0))
    assert got.headers["content-type"].startswith("application/json")
    assert verify(
        SECRET,
        got.headers["x-broadcaster-timestamp"],
        got.body,
        got.headers["x-broadcaster-signature"],
        now=T0,
    )
    assert got.json() == {
        "delivery": "delivery-42",
        "customer": "c-1",
        "name": "Ada Lovelace",
        "address": "acct-1",
        "subject": "Line 4 stopped",
        "text": "Trains on line 4 are stopped. Next update by 14:30.",
        "html": "<p>Trains on line 4 are stopped.</p>",
        "headers": {"X-Broadcaster-Round": "7/2"},
        "created_at": "2026-01-01T12:00:00+00:00",
    }


async def test_a_message_that_is_not_unicode_fails_for_good_without_a_request(
    make_channel: ChannelFactory, receiver: WebhookReceiver, base_url: str
) -> None:
    """A lone surrogate (JSON input can carry one as an escape) cannot be sent as UTF-8."""
    channel = make_channel(url=f"{base_url}/hooks/broadcaster")
    with pytest.raises(DeliveryError, match="cannot be encoded as JSON") as caught:
        await channel.send(TARGET, message(text="Line 4 \ud83d stopped"))
    assert caught.value.retryable is False
    assert receiver.accepted == []


async def test_without_a_fixed_url_the_address_is_the_url(
    make_channel: ChannelFactory, receiver: WebhookReceiver, base_url: str
) -> None:
    channel = make_channel()
    await channel.send(Target(address=f"{base_url}/c/1?token=abc"), message(html=None))
    [got] = receiver.accepted
    assert got.path == "/c/1"
    assert "html" not in got.json()


@pytest.mark.parametrize("address", ["", "not a url", "ftp://example.com/x", "/relative"])
async def test_an_unusable_address_disables_the_contact_point(
    make_channel: ChannelFactory, address: str
) -> None:
    with pytest.raises(DeliveryError) as caught:
        await make_channel().send(Target(address=address), message())
    assert caught.value.retryable is False
    assert caught.value.contact_point is ContactPointState.DISABLED


async def test_a_retry_is_signed_afresh_with_the_same_idempotency_key(
    make_channel: ChannelFactory, receiver: WebhookReceiver, base_url: str, clock: FakeClock
) -> None:
    channel = make_channel(url=f"{base_url}/h")
    receiver.faults.push(Scripted(503))
    with pytest.raises(DeliveryError) as caught:
        await channel.send(TARGET, message())
    assert caught.value.retryable is True
    clock.now += 30
    await channel.send(TARGET, message())
    first, second = receiver.requests
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"] == "delivery-42"
    assert int(second.headers["x-broadcaster-timestamp"]) == int(T0) + 30
    assert first.headers["x-broadcaster-signature"] != second.headers["x-broadcaster-signature"]
    # A second delivery of the same key is de-duplicated by the receiver, not by us.
    await channel.send(TARGET, message())
    assert receiver.duplicates == 1 and len(receiver.accepted) == 1


async def test_the_receiver_rejects_a_wrong_secret(
    make_channel: ChannelFactory, receiver: WebhookReceiver, base_url: str
) -> None:
    channel = make_channel(url=f"{base_url}/h", secret="another-secret-0123456789")
    with pytest.raises(DeliveryError) as caught:
        await channel.send(TARGET, message())
    assert "401" in caught.value.reason and caught.value.retryable is False
    assert receiver.accepted == []


RETRY_TABLE: list[tuple[int, bool, ContactPointState | None]] = [
    (408, True, None),
    (429, True, None),
    (500, True, None),
    (502, True, None),
    (503, True, None),
    (504, True, None),
    (410, False, None),  # a fixed url: the endpoint is gone, not the customer
    (400, False, None),
    (401, False, None),
    (403, False, None),
    (404, False, None),
    (413, False, None),
    (422, False, None),
    (301, False, None),
]


@pytest.mark.parametrize(("status", "retryable", "contact_point"), RETRY_TABLE)
async def test_status_table(
    make_channel: ChannelFactory,
    receiver: WebhookReceiver,
    base_url: str,
    status: int,
    retryable: bool,
    contact_point: ContactPointState | None,
) -> None:
    receiver.faults.push(Scripted(status))
    with pytest.raises(DeliveryError) as caught:
        await make_channel(url=f"{base_url}/h").send(TARGET, message())
    assert caught.value.retryable is retryable
    assert caught.value.contact_point is contact_point
    assert str(status) in caught.value.reason


async def test_a_410_disables_the_customer_s_own_hook_but_never_for_a_fixed_url(
    make_channel: ChannelFactory, receiver: WebhookReceiver, base_url: str
) -> None:
    receiver.faults.push(Scripted(410))
    with pytest.raises(DeliveryError) as own:
        await make_channel().send(Target(address=f"{base_url}/c/1"), message())
    assert own.value.contact_point is ContactPointState.DISABLED
    receiver.faults.push(Scripted(410))
    with pytest.raises(DeliveryError) as fixed:
        await make_channel(url=f"{base_url}/h").send(TARGET, message())
    assert fixed.value.contact_point is None and fixed.value.retryable is False
    assert fixed.value.reason.endswith("(check url)")


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b'{"error": "Service Unavailable"}', ": Service Unavailable"),
        (b'{"code": "E42", "message": "maintenance"}', ": (E42) maintenance"),
        (b'{"type": "about:blank", "title": "Busy", "status": 503}', ": Busy"),  # RFC 9457
        (b'{"unrelated": "fields"}', ""),
        (b"<html>maintenance</html>", ": untyped body, 24 bytes, not shown"),
        (b"", ": empty body"),
    ],
)
async def test_reasons_quote_error_fields_never_bodies(
    make_channel: ChannelFactory, receiver: WebhookReceiver, base_url: str, body: bytes, said: str
) -> None:
    receiver.faults.push(Scripted(503, body=body))
    with pytest.raises(DeliveryError) as caught:
        await make_channel(url=f"{base_url}/h").send(TARGET, message())
    assert caught.value.reason == f"webhook {base_url} answered 503{said}"


async def test_a_url_without_a_path_is_still_named_by_its_origin(
    make_channel: ChannelFactory, receiver: WebhookReceiver, base_url: str
) -> None:
    """The URL's path is redacted from reasons; the origin, which reasons name, is not."""
    receiver.faults.push(Scripted(503, body=b'{"error": "busy at /h/acct-1-token"}'))
    with pytest.raises(DeliveryError) as caught:
        await make_channel(url=base_url).send(TARGET, message())
    assert caught.value.reason == f"webhook {base_url} answered 503: busy at /h/acct-1-token"
    receiver.faults.push(Scripted(503, body=b'{"error": "busy at /h/acct-1-token"}'))
    with pytest.raises(DeliveryError) as caught:
        await make_channel(url=f"{base_url}/h/acct-1-token").send(TARGET, message())
    assert caught.value.reason == f"webhook {base_url} answered 503: busy at {REDACTED}"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        ("2.5", 2.5),
        (format_datetime(datetime.fromtimestamp(T0 + 90, UTC), usegmt=True), 90.0),
        (format_datetime(datetime.fromtimestamp(T0 - 90, UTC), usegmt=True), 0.0),
        ("soon", None),
    ],
)
async def test_retry_after(
    make_channel: ChannelFactory,
    receiver: WebhookReceiver,
    base_url: str,
    header: str,
    expected: float | None,
) -> None:
    receiver.faults.push(Scripted(429, headers={"Retry-After": header}))
    with pytest.raises(DeliveryError) as caught:
        await make_channel(url=f"{base_url}/h").send(TARGET, message())
    assert caught.value.retryable is True
    assert caught.value.retry_after == expected


async def test_timeout_is_retryable(
    make_channel: ChannelFactory, receiver: WebhookReceiver, base_url: str
) -> None:
    receiver.faults.push(Scripted(200, hang=10.0))
    with pytest.raises(DeliveryError) as caught:
        await make_channel(url=f"{base_url}/h", timeout=0.2).send(TARGET, message())
    assert caught.value.retryable is True
    assert "timed out" in caught.value.reason


async def test_reset_and_refused_connections_are_retryable(make_channel: ChannelFactory) -> None:
    with ResettingServer() as resetting, pytest.raises(DeliveryError) as reset:
        await make_channel(url=f"{resetting.url}/h").send(TARGET, message())
    assert reset.value.retryable is True
    with pytest.raises(DeliveryError) as refused:
        await make_channel(url=f"http://127.0.0.1:{free_port()}/h").send(TARGET, message())
    assert refused.value.retryable is True


async def test_closed_channel_refuses_retryably(make_channel: ChannelFactory) -> None:
    channel = make_channel(url="http://127.0.0.1:9/h")
    await channel.aclose()
    with pytest.raises(DeliveryError) as caught:
        await channel.send(TARGET, message())
    assert caught.value.retryable is True


async def test_secrets_stay_out_of_errors_and_settings(
    make_channel: ChannelFactory, receiver: WebhookReceiver, base_url: str
) -> None:
    settings = WebhookSettings(url=f"{base_url}/h?token=url-token", secret=SECRET)
    for text in (str(settings), repr(settings), settings.model_dump_json()):
        assert SECRET not in text
    errors: list[DeliveryError] = []
    for answer in (Scripted(500), Scripted(401), Scripted(200, hang=10.0)):
        receiver.faults.push(answer)
        with pytest.raises(DeliveryError) as caught:
            await make_channel(url=f"{base_url}/h?token=url-token", timeout=0.2).send(
                TARGET, message()
            )
        errors.append(caught.value)
    for error in errors:
        for text in (str(error), repr(error), error.reason):
            assert SECRET not in text
            assert "url-token" not in text


def test_settings_validation() -> None:
    with pytest.raises(ValidationError):
        WebhookSettings(secret="short")
    with pytest.raises(ValidationError):
        WebhookSettings(secret=SECRET, url="ftp://example.com")
    with pytest.raises(ValidationError):
        WebhookSettings(secret=SECRET, signature_header="Bad Header")


# --- the signing scheme as pure functions -------------------------------------------------


def test_sign_matches_the_documented_scheme() -> None:
    body = b'{"delivery":"d-1"}'
    expected = hmac.new(b"k" * 16, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("k" * 16, 1700000000, body) == f"v1={expected}"


def test_verify_rejects_tampering_replay_and_junk() -> None:
    body = b'{"delivery":"d-1","text":"hello"}'
    good = sign(SECRET, 1700000000, body)
    assert verify(SECRET, "1700000000", body, good, now=1700000000)
    assert verify(SECRET, 1700000000, body, good, now=1700000000 + 300)
    assert not verify(SECRET, "1700000000", body + b" ", good, now=1700000000)
    assert not verify(SECRET, "1700000000", body, good, now=1700000000 + 301)  # replay
    assert not verify(SECRET, "1700000000", body, good, now=1700000000 - 301)  # from the future
    assert not verify(SECRET, "1700000001", body, good, now=1700000000)
    assert not verify(SECRET, "01700000000", body, good, now=1700000000)
    assert not verify(SECRET, "", body, good, now=1700000000)
    assert not verify(SECRET, "17e8", body, good, now=1700000000)
    assert not verify(SECRET, "1700000000", body, good.upper(), now=1700000000)
    assert not verify(SECRET, "1700000000", body, "", now=1700000000)
    assert not verify("another-secret", "1700000000", body, good, now=1700000000)
    rotating = f"{sign('old-secret', 1700000000, body)}, {good}"
    assert verify(SECRET, "1700000000", body, rotating, now=1700000000)


secrets = st.one_of(st.text(min_size=1, max_size=64), st.binary(min_size=1, max_size=64))
timestamps = st.integers(min_value=0, max_value=10**12)


@given(secret=secrets, timestamp=timestamps, body=st.binary(max_size=2048))
def test_property_a_signature_verifies(secret: str | bytes, timestamp: int, body: bytes) -> None:
    assert verify(secret, timestamp, body, sign(secret, timestamp, body), now=timestamp)


@given(
    secret=secrets,
    timestamp=timestamps,
    body=st.binary(min_size=1, max_size=2048),
    data=st.data(),
)
def test_property_any_single_byte_change_fails(
    secret: str | bytes, timestamp: int, body: bytes, data: st.DataObject
) -> None:
    signature = sign(secret, timestamp, body)
    where = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    byte = data.draw(st.integers(min_value=0, max_value=255).filter(lambda b: b != body[where]))
    tampered = body[:where] + bytes([byte]) + body[where + 1 :]
    assert not verify(secret, timestamp, tampered, signature, now=timestamp)

    stamp = str(timestamp)
    at = data.draw(st.integers(min_value=0, max_value=len(stamp) - 1))
    digit = data.draw(st.sampled_from("0123456789").filter(lambda d: d != stamp[at]))
    assert not verify(secret, stamp[:at] + digit + stamp[at + 1 :], body, signature, now=timestamp)

    at = data.draw(st.integers(min_value=0, max_value=len(signature) - 1))
    char = data.draw(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E).filter(lambda c: c != signature[at])
    )
    changed = signature[:at] + char + signature[at + 1 :]
    assert not verify(secret, timestamp, body, changed, now=timestamp)
