"""The APNs channel against a fake APNs served over real HTTP/2 and TLS (hypercorn, trustme).

The fake verifies the ES256 provider token with the key's public half, the ``apns-*``
headers and that every request came over HTTP/2; a manual clock shared by channel and fake
drives the provider token's age.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import jwt
import pytest
import trustme
from pydantic import SecretStr

from channels.apns import ApnsChannel, ApnsSettings, apns_id_for
from channels.base import Channel, ContactPointState, DeliveryError, Message, Target
from tests.fakes.apns import FakeApns, serve_http2
from tests.fakes.control import ResettingServer, Scripted
from tests.fakes.mobile_push import ManualClock, P8Key, make_p8_key

DEVICE = "a" * 64
TOPIC = "com.example.broadcaster"
MESSAGE = Message(
    subject="Line 4 stopped", text="Trains on line 4 are stopped.", idempotency_key="d-1"
)
DISABLED = ContactPointState.DISABLED
START = 1_700_000_000.0


class ChannelFactory(Protocol):
    def __call__(self, **settings: Any) -> ApnsChannel: ...


@pytest.fixture(scope="module")
def key() -> P8Key:
    return make_p8_key()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    """Server certificate chain, server key and the CA file clients trust."""
    directory = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(directory / "cert.pem"), append=True)
    cert.private_key_pem.write_to_path(str(directory / "key.pem"))
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    return str(directory / "cert.pem"), str(directory / "key.pem"), directory / "ca.pem"


@pytest.fixture(scope="module")
def resetting() -> Iterator[ResettingServer]:
    """One per module: its shutdown waits out a blocked accept() (about 5 s)."""
    with ResettingServer() as server:
        yield server


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fake(key: P8Key, clock: ManualClock) -> FakeApns:
    return FakeApns(key.public_key, key_id=key.key_id, team_id=key.team_id, topic=TOPIC, now=clock)


@pytest.fixture
def url(fake: FakeApns, tls_files: tuple[str, str, Path]) -> Iterator[str]:
    certfile, keyfile, _ = tls_files
    with serve_http2(fake.app, certfile, keyfile) as base:
        yield base


@pytest.fixture
async def make_channel(
    key: P8Key, url: str, clock: ManualClock, tls_files: tuple[str, str, Path], tmp_path: Path
) -> AsyncIterator[ChannelFactory]:
    channels: list[ApnsChannel] = []
    key_file = key.write(tmp_path)

    def make(**overrides: Any) -> ApnsChannel:
        values: dict[str, Any] = {
            "team_id": key.team_id,
            "key_id": key.key_id,
            "private_key_file": key_file,
            "topic": TOPIC,
            "base_url": url,
            "ca_file": tls_files[2],
            "timeout": 5.0,
        }
        values.update(overrides)
        channel = ApnsChannel("apns", ApnsSettings(**values), now=clock)
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        await channel.aclose()


async def failure(channel: ApnsChannel, device: str = DEVICE) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        await channel.send(Target(device), MESSAGE)
    return info.value


# --- success ----------------------------------------------------------------------------------


async def test_send_over_http2_with_every_header(
    make_channel: ChannelFactory, fake: FakeApns, key: P8Key
) -> None:
    channel = make_channel()
    assert isinstance(channel, Channel)
    receipt = await channel.send(Target(DEVICE, name="Ann"), MESSAGE)

    [request] = fake.delivered
    assert request.http_version == "2"
    assert request.device == DEVICE
    apns_id = str(uuid.uuid5(uuid.UUID("6f1c3d2e-8a4b-5c6d-9e0f-a1b2c3d4e5f6"), "d-1"))
    assert receipt.provider_message_id == apns_id == request.headers["apns-id"]
    headers = request.headers
    assert headers["authorization"] == f"bearer {request.provider_token}"
    assert headers["apns-topic"] == TOPIC
    assert headers["apns-push-type"] == "alert"
    assert headers["apns-priority"] == "10"
    assert headers["apns-expiration"] == str(int(START) + 3600)
    assert request.payload == {
        "aps": {
            "alert": {"title": "Line 4 stopped", "body": "Trains on line 4 are stopped."},
            "sound": "default",
        },
        "delivery": "d-1",
    }
    header = jwt.get_unverified_header(request.provider_token)
    assert header == {"alg": "ES256", "typ": "JWT", "kid": key.key_id}
    claims = jwt.decode(
        request.provider_token, key.public_key, algorithms=["ES256"], options={"verify_iat": False}
    )
    assert claims == {"iss": key.team_id, "iat": int(START)}


async def test_inline_key_and_settings_variants(
    make_channel: ChannelFactory, fake: FakeApns, key: P8Key
) -> None:
    channel = make_channel(
        private_key_file=None,
        private_key=SecretStr(key.pem),
        priority=5,
        expiration=0,
        sound=None,
    )
    await channel.send(Target(DEVICE.upper()), Message(subject="s", text="t"))
    [request] = fake.delivered
    assert (request.headers["apns-priority"], request.headers["apns-expiration"]) == ("5", "0")
    assert request.payload == {"aps": {"alert": {"title": "s", "body": "t"}}, "delivery": ""}
    uuid.UUID(request.headers["apns-id"])  # a random UUID without a delivery id


async def test_a_step_of_low_urgency_goes_at_priority_5(
    make_channel: ChannelFactory, fake: FakeApns
) -> None:
    channel = make_channel()
    for urgency in ("low", "normal", "high"):
        headers = {"X-Broadcaster-Urgency": urgency}
        await channel.send(Target(DEVICE), Message(subject="s", text="t", headers=headers))
    assert [request.headers["apns-priority"] for request in fake.delivered] == ["5", "10", "10"]


def incident(kind: str, key: str, thread: str = "incident-7") -> Message:
    """A round's message as the dispatcher hands it over."""
    headers = {"X-Broadcaster-Link": "https://status.example.org/incidents/7"}
    return Message(
        subject="Line 4 stopped",
        text="Trains on line 4 are stopped.",
        idempotency_key=key,
        headers={**headers, "X-Broadcaster-Kind": kind},
        thread=thread,
    )


async def test_an_incidents_notifications_share_a_thread_and_carry_its_link(
    make_channel: ChannelFactory, fake: FakeApns
) -> None:
    """iOS shows an incident's notifications as one group (``thread-id``); the app opens
    the incident page (``url``)."""
    await make_channel().send(Target(DEVICE), incident("first", "delivery-1"))

    [request] = fake.delivered
    assert request.payload == {
        "aps": {
            "alert": {"title": "Line 4 stopped", "body": "Trains on line 4 are stopped."},
            "sound": "default",
            "thread-id": "incident-7",
        },
        "delivery": "delivery-1",
        "url": "https://status.example.org/incidents/7",
    }
    assert "apns-collapse-id" not in request.headers


async def test_no_news_and_the_resolution_replace_the_last_no_news_but_nothing_else(
    make_channel: ChannelFactory, fake: FakeApns
) -> None:
    """A critical incident at a 10-minute cadence must not stack dozens of "still working
    on it": each replaces the last (``apns-collapse-id``), and the resolution replaces the
    last of them. The first notice and an operator's update are never replaced."""
    channel = make_channel()
    kinds = ["first", "no_news", "no_news", "update", "no_news", "resolution"]
    for n, kind in enumerate(kinds):
        await channel.send(Target(DEVICE), incident(kind, f"delivery-{n}"))

    collapse = [request.headers.get("apns-collapse-id") for request in fake.delivered]
    slot = "incident-7-wait"
    assert collapse == [None, slot, slot, None, slot, slot]
    assert {request.payload["aps"]["thread-id"] for request in fake.delivered} == {"incident-7"}


async def test_a_long_thread_still_makes_a_collapse_id_apns_takes(
    make_channel: ChannelFactory, fake: FakeApns
) -> None:
    thread = "incident-" + "9" * 80
    await make_channel().send(Target(DEVICE), incident("no_news", "delivery-1", thread))

    [request] = fake.delivered
    assert len(request.headers["apns-collapse-id"].encode()) <= 64


async def test_many_concurrent_sends_share_one_connection_and_one_token(
    make_channel: ChannelFactory, fake: FakeApns
) -> None:
    channel = make_channel()
    messages = [Message(subject="s", text="t", idempotency_key=f"d-{i}") for i in range(30)]
    receipts = await asyncio.gather(*(channel.send(Target(DEVICE), m) for m in messages))
    assert len(fake.delivered) == 30
    assert len({r.client for r in fake.delivered}) == 1
    assert len(fake.provider_tokens) == 1
    assert [r.provider_message_id for r in receipts] == [
        apns_id_for(m.idempotency_key) for m in messages
    ]


async def test_long_text_is_shortened_to_fit_4kb(
    make_channel: ChannelFactory, fake: FakeApns
) -> None:
    text = "Беспорядок на линии. " * 400
    await make_channel().send(Target(DEVICE), Message(subject="Перерыв " * 100, text=text))
    [request] = fake.delivered
    alert = request.payload["aps"]["alert"]
    assert len(json.dumps(request.payload, ensure_ascii=False).encode()) <= 4096
    assert alert["body"].endswith("Беспорядок на линии.")
    assert len(alert["title"]) <= 200


# --- the provider token -----------------------------------------------------------------------


async def test_provider_token_is_reused_then_refreshed_after_50_minutes(
    make_channel: ChannelFactory, fake: FakeApns, clock: ManualClock
) -> None:
    channel = make_channel()
    await channel.send(Target(DEVICE), MESSAGE)
    clock.advance(49 * 60)
    await channel.send(Target(DEVICE), MESSAGE)
    assert len(fake.provider_tokens) == 1
    clock.advance(60)
    await channel.send(Target(DEVICE), MESSAGE)
    assert len(fake.provider_tokens) == 2
    claims = jwt.decode(fake.provider_tokens[1], options={"verify_signature": False})
    assert claims["iat"] == int(START) + 50 * 60


async def test_expired_provider_token_is_refreshed_and_retried_once(
    make_channel: ChannelFactory, fake: FakeApns
) -> None:
    fake.faults.push(Scripted(403, body=b'{"reason": "ExpiredProviderToken"}'))
    receipt = await make_channel().send(Target(DEVICE), MESSAGE)
    first, second = fake.requests
    assert first.provider_token != second.provider_token
    assert first.headers["apns-id"] == second.headers["apns-id"] == receipt.provider_message_id
    assert fake.delivered == [second]


async def test_expired_provider_token_twice_is_permanent(
    make_channel: ChannelFactory, fake: FakeApns
) -> None:
    expired = Scripted(403, body=b'{"reason": "ExpiredProviderToken"}')
    fake.faults.push(expired, expired)
    error = await failure(make_channel())
    assert (error.retryable, error.contact_point) == (False, None)
    assert len(fake.requests) == 2


async def test_a_foreign_key_is_an_invalid_provider_token(
    make_channel: ChannelFactory, fake: FakeApns
) -> None:
    error = await failure(
        make_channel(private_key_file=None, private_key=SecretStr(make_p8_key().pem))
    )
    assert (error.retryable, error.contact_point) == (False, None)
    assert "InvalidProviderToken" in error.reason
    assert len(fake.requests) == 1


async def test_a_topic_of_another_team_is_permanent(make_channel: ChannelFactory) -> None:
    error = await failure(make_channel(topic="com.other.app"))
    assert (error.retryable, error.contact_point) == (False, None)
    assert "TopicDisallowed" in error.reason


# --- error mapping ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "reason"),
    [("unregistered", "APNs 410 Unregistered"), ("wrong_topic", "APNs 400 DeviceTokenNotForTopic")],
)
async def test_dead_devices_are_disabled(
    make_channel: ChannelFactory, fake: FakeApns, state: str, reason: str
) -> None:
    getattr(fake, state).add(DEVICE)
    channel = make_channel()
    await channel.send(Target("ab" * 32), MESSAGE)  # another device: the settings are right
    error = await failure(channel)
    assert (error.retryable, error.contact_point, error.reason) == (False, DISABLED, reason)


@pytest.mark.parametrize(
    ("scripted", "reason"),
    [
        (Scripted(400, body=b'{"reason": "BadDeviceToken"}'), "BadDeviceToken"),
        (Scripted(400, body=b'{"reason": "DeviceTokenNotForTopic"}'), "DeviceTokenNotForTopic"),
    ],
)
async def test_a_channel_never_accepted_keeps_the_tokens_it_may_be_wrong_about(
    make_channel: ChannelFactory, fake: FakeApns, scripted: Scripted, reason: str
) -> None:
    # A wrong environment or topic draws these for every token: none is disabled until a
    # notification has gone through, and then the same answer disables.
    channel = make_channel()
    for device in ("01" * 32, "02" * 32):
        fake.faults.push(scripted)
        error = await failure(channel, device)
        assert (error.retryable, error.contact_point) == (False, None)
        assert reason in error.reason and "check topic and environment" in error.reason
    await channel.send(Target("03" * 32), MESSAGE)
    fake.faults.push(scripted)
    assert (await failure(channel, "04" * 32)).contact_point is DISABLED


@pytest.mark.parametrize("device", ["", "not-hex", "ab/cd" * 10, "a" * 7])
async def test_a_malformed_device_token_is_disabled_without_a_request(
    make_channel: ChannelFactory, fake: FakeApns, device: str
) -> None:
    error = await failure(make_channel(), device=device)
    assert (error.retryable, error.contact_point) == (False, DISABLED)
    assert fake.requests == []


def _reason(reason: str) -> bytes:
    return json.dumps({"reason": reason}).encode()


@pytest.mark.parametrize(
    ("scripted", "retryable", "contact_point", "retry_after"),
    [
        (Scripted(400, body=_reason("BadDeviceToken")), False, None, None),  # not yet proven
        (Scripted(400, body=_reason("DeviceTokenNotForTopic")), False, None, None),
        (Scripted(400), False, None, None),
        (Scripted(400, body=_reason("BadTopic")), False, None, None),
        (Scripted(403), False, None, None),
        (Scripted(403, body=_reason("InvalidProviderToken")), False, None, None),
        (Scripted(404), False, None, None),
        (Scripted(405), False, None, None),
        (Scripted(410), False, DISABLED, None),
        (Scripted(410, body=_reason("ExpiredToken")), False, DISABLED, None),
        (Scripted(413), False, None, None),
        (Scripted(429), True, None, None),
        (Scripted(429, body=_reason("TooManyProviderTokenUpdates")), True, None, None),
        (Scripted(429, headers={"retry-after": "42"}), True, None, 42.0),
        (Scripted(500), True, None, None),
        (Scripted(503, headers={"retry-after": "9"}), True, None, 9.0),
        (Scripted(503, body=_reason("Shutdown")), True, None, None),
        (Scripted(502, body=b"<html>bad gateway</html>"), True, None, None),
        (Scripted(500, body=b"[" * 100_000), True, None, None),  # past the parser's depth
    ],
)
async def test_status_mapping(
    make_channel: ChannelFactory,
    fake: FakeApns,
    scripted: Scripted,
    retryable: bool,
    contact_point: ContactPointState | None,
    retry_after: float | None,
) -> None:
    fake.faults.push(scripted)
    error = await failure(make_channel())
    assert (error.retryable, error.contact_point, error.retry_after) == (
        retryable,
        contact_point,
        retry_after,
    )
    assert error.reason.startswith(f"APNs {scripted.status}")
    assert len(fake.requests) == 1


# --- network trouble --------------------------------------------------------------------------


async def test_timeout_is_retryable_and_the_channel_recovers(
    make_channel: ChannelFactory, fake: FakeApns
) -> None:
    channel = make_channel(timeout=0.3)
    fake.faults.push(Scripted(200, hang=30))
    error = await failure(channel)
    assert (error.retryable, error.contact_point) == (True, None)
    assert "timed out" in error.reason
    await channel.send(Target(DEVICE), MESSAGE)
    assert len(fake.delivered) == 1


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_connection_reset_is_retryable(
    make_channel: ChannelFactory, resetting: ResettingServer, scheme: str
) -> None:
    error = await failure(make_channel(base_url=f"{scheme}://127.0.0.1:{resetting.port}"))
    assert (error.retryable, error.contact_point) == (True, None)
    assert "connection failed" in error.reason


async def test_an_untrusted_certificate_is_a_retryable_connection_failure(
    make_channel: ChannelFactory, fake: FakeApns
) -> None:
    error = await failure(make_channel(ca_file=None))
    assert (error.retryable, error.contact_point) == (True, None)
    assert fake.requests == []


async def test_the_fake_refuses_http1(
    url: str, fake: FakeApns, tls_files: tuple[str, str, Path]
) -> None:
    context = ssl.create_default_context(cafile=str(tls_files[2]))
    async with httpx.AsyncClient(verify=context) as client:
        response = await client.post(f"{url}/3/device/{DEVICE}", content=b"{}")
    assert response.status_code == 505
    assert [r.http_version for r in fake.requests] == ["1.1"]
    assert fake.delivered == []


# --- secrets ----------------------------------------------------------------------------------


async def test_secrets_never_show_in_errors_settings_or_reprs(
    make_channel: ChannelFactory, fake: FakeApns, key: P8Key, resetting: ResettingServer
) -> None:
    channel = make_channel(private_key_file=None, private_key=SecretStr(key.pem))
    await channel.send(Target(DEVICE), MESSAGE)
    fake.unregistered.add("b" * 64)
    expired = Scripted(403, body=b'{"reason": "ExpiredProviderToken"}')
    fake.faults.push(expired, expired, Scripted(500))
    errors = [await failure(channel), await failure(channel), await failure(channel, "b" * 64)]
    errors.append(await failure(make_channel(base_url=f"https://127.0.0.1:{resetting.port}")))
    errors.append(await failure(channel, "zz"))

    secrets = [line for line in key.pem.splitlines() if "-----" not in line]
    secrets += [r.provider_token for r in fake.requests]
    assert len(set(fake.provider_tokens)) >= 2
    settings = ApnsSettings(team_id="T", key_id="K", private_key=SecretStr(key.pem), topic="x")
    shown = [str(settings), repr(settings), repr(channel), str(settings.model_dump())]
    for error in errors:
        shown += [str(error), repr(error), "".join(traceback.format_exception(error))]
    for text in shown:
        for value in secrets:
            assert value not in text
