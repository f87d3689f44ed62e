"""The FCM HTTP v1 channel against a fake FCM + OAuth2 token endpoint served over real HTTP.

The fake verifies the service-account JWT with the public key and checks the bearer token
and the message like FCM; a manual clock shared by channel and fake drives token expiry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import traceback
from collections.abc import AsyncIterator, Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any, Protocol

import pytest
from pydantic import SecretStr

from channels.base import Channel, ContactPointState, DeliveryError, Message, Target
from channels.fcm import FCM_SCOPE, FcmChannel, FcmSettings
from tests.fakes.control import ResettingServer, Scripted
from tests.fakes.fcm import FakeFcm, error_body
from tests.fakes.http import serve
from tests.fakes.mobile_push import ManualClock, ServiceAccountKey, make_service_account

TOKEN = "dXNlcjE6APA91bHfake-registration-token_1"
MESSAGE = Message(
    subject="Line 4 stopped", text="Trains on line 4 are stopped.", idempotency_key="d-1"
)


class ChannelFactory(Protocol):
    def __call__(self, **settings: Any) -> FcmChannel: ...


@pytest.fixture(scope="module")
def account() -> ServiceAccountKey:
    return make_service_account("p")


@pytest.fixture(scope="module")
def resetting() -> Iterator[ResettingServer]:
    """One per module: its shutdown waits out a blocked accept() (about 5 s)."""
    with ResettingServer() as server:
        yield server


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fake(account: ServiceAccountKey, clock: ManualClock) -> FakeFcm:
    return FakeFcm(
        account.public_key,
        client_email=account.client_email,
        private_key_id=account.private_key_id,
        now=clock,
    )


@pytest.fixture
def url(fake: FakeFcm) -> Iterator[str]:
    with serve(fake.app) as base:
        yield base


@pytest.fixture
async def make_channel(
    account: ServiceAccountKey, url: str, clock: ManualClock, tmp_path: Path
) -> AsyncIterator[ChannelFactory]:
    channels: list[FcmChannel] = []
    key_file = account.write(tmp_path / "service-account.json", f"{url}/token")

    def make(**overrides: Any) -> FcmChannel:
        values: dict[str, Any] = {"service_account_file": key_file, "base_url": url, "timeout": 5.0}
        values.update(overrides)
        channel = FcmChannel("push", FcmSettings(**values), now=clock)
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        await channel.aclose()


async def failure(channel: FcmChannel, token: str = TOKEN) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        await channel.send(Target(token), MESSAGE)
    return info.value


# --- success ----------------------------------------------------------------------------------


async def test_send_posts_the_v1_message_and_returns_its_name(
    make_channel: ChannelFactory, fake: FakeFcm, url: str, account: ServiceAccountKey
) -> None:
    channel = make_channel()
    assert isinstance(channel, Channel)
    receipt = await channel.send(Target(TOKEN, name="Ann"), MESSAGE)

    assert receipt.provider_message_id is not None
    assert receipt.provider_message_id.startswith("projects/p/messages/0:1%")
    [request] = fake.requests
    assert request.project == "p"
    assert request.headers["authorization"] == f"Bearer {fake.issued[0]}"
    assert request.headers["content-type"] == "application/json"
    assert request.body == {
        "message": {
            "token": TOKEN,
            "notification": {"title": "Line 4 stopped", "body": "Trains on line 4 are stopped."},
            "data": {"delivery": "d-1"},
            "android": {"priority": "high", "ttl": "3600s"},
            "apns": {
                "headers": {"apns-priority": "10", "apns-expiration": str(1_700_000_000 + 3600)}
            },
            "webpush": {"headers": {"TTL": "3600", "Urgency": "high"}},
        }
    }
    [exchange] = fake.exchanges
    assert exchange.header == {"alg": "RS256", "typ": "JWT", "kid": account.private_key_id}
    assert exchange.claims == {
        "iss": account.client_email,
        "scope": FCM_SCOPE,
        "aud": f"{url}/token",
        "iat": 1_700_000_000,
        "exp": 1_700_003_600,
    }


async def test_json_secret_with_project_and_token_uri_overrides(
    make_channel: ChannelFactory, fake: FakeFcm, account: ServiceAccountKey, url: str
) -> None:
    fake.project_id = "other"
    secret = SecretStr(account.json("https://oauth2.invalid/token"))
    channel = make_channel(
        service_account_file=None,
        service_account_json=secret,
        project_id="other",
        token_uri=f"{url}/token",
    )
    await channel.send(Target(TOKEN), MESSAGE)
    assert [r.project for r in fake.delivered] == ["other"]


@pytest.mark.parametrize(
    ("ttl", "android", "expiration"),
    [(0, "0s", "0"), (900, "900s", "1700000900"), (2_419_200, "2419200s", "1702419200")],
)
async def test_ttl_bounds_how_long_fcm_keeps_the_message_on_every_platform(
    make_channel: ChannelFactory, fake: FakeFcm, ttl: int, android: str, expiration: str
) -> None:
    """Without a lifetime FCM keeps a message four weeks (30 days for APNs) for a device
    that is off: a disruption notice would arrive long after the incident is over. A token
    may be an Android app's, an iOS app's or a web page's, and FCM applies each platform's
    block to its own only: each says the lifetime in its own terms, by the channel's clock."""
    await make_channel(ttl=ttl).send(Target(TOKEN), MESSAGE)
    sent = fake.delivered[0].body["message"]
    assert sent["android"] == {"priority": "high", "ttl": android}
    assert sent["apns"]["headers"]["apns-expiration"] == expiration
    assert sent["webpush"]["headers"]["TTL"] == str(ttl)


async def test_a_step_of_low_urgency_goes_at_normal_priority_on_every_platform(
    make_channel: ChannelFactory, fake: FakeFcm
) -> None:
    channel = make_channel()
    for urgency in ("low", "normal", "high"):
        message = dataclasses.replace(MESSAGE, headers={"X-Broadcaster-Urgency": urgency})
        await channel.send(Target(TOKEN), message)
    sent = [request.body["message"] for request in fake.delivered]
    assert [m["android"]["priority"] for m in sent] == ["normal", "high", "high"]
    assert [m["apns"]["headers"]["apns-priority"] for m in sent] == ["5", "10", "10"]
    assert [m["webpush"]["headers"]["Urgency"] for m in sent] == ["normal", "high", "high"]


def incident(kind: str, key: str, **headers: str) -> Message:
    """A round's message as the dispatcher hands it over."""
    return dataclasses.replace(
        MESSAGE,
        idempotency_key=key,
        thread="incident-7",
        headers={
            "X-Broadcaster-Link": "https://status.example.org/incidents/7",
            "X-Broadcaster-Kind": kind,
            **headers,
        },
    )


async def test_an_incidents_notifications_carry_its_link_and_thread(
    make_channel: ChannelFactory, fake: FakeFcm
) -> None:
    """The app opens the incident page; iOS shows the incident's notifications as one group;
    a web page's click opens the page (FCM's web SDK)."""
    await make_channel().send(Target(TOKEN), incident("first", "delivery-1"))

    sent = fake.delivered[0].body["message"]
    assert sent["data"] == {
        "delivery": "delivery-1",
        "url": "https://status.example.org/incidents/7",
        "thread": "incident-7",
    }
    assert sent["apns"]["payload"] == {"aps": {"thread-id": "incident-7"}}
    assert sent["webpush"]["fcm_options"] == {"link": "https://status.example.org/incidents/7"}


async def test_no_news_and_the_resolution_replace_the_last_no_news_but_nothing_else(
    make_channel: ChannelFactory, fake: FakeFcm
) -> None:
    """A critical incident at a 10-minute cadence must not stack dozens of "still working
    on it": each replaces the last, and the resolution replaces the last of them. The first
    notice and an operator's update stand on their own: they may tell a workaround the
    customer has not read yet, and the apology is never replaced by a "no news yet"."""
    channel = make_channel()
    kinds = ["first", "no_news", "no_news", "update", "no_news", "resolution"]
    for n, kind in enumerate(kinds):
        await channel.send(Target(TOKEN), incident(kind, f"delivery-{n}"))

    sent = [request.body["message"] for request in fake.delivered]
    tags = [m["android"].get("notification", {}).get("tag") for m in sent]
    collapse = [m["apns"]["headers"].get("apns-collapse-id") for m in sent]
    topics = [m["webpush"]["headers"].get("Topic") for m in sent]
    web_tags = [m["webpush"].get("notification", {}).get("tag") for m in sent]
    slot = "incident-7-wait"
    expected = [None, slot, slot, None, slot, slot]
    assert tags == collapse == topics == web_tags == expected
    assert all(
        m["webpush"]["notification"]["renotify"] for m in sent if "notification" in m["webpush"]
    )
    assert {m["apns"]["payload"]["aps"]["thread-id"] for m in sent} == {"incident-7"}
    assert "collapse_key" not in str(sent)  # FCM keeps four collapse keys a device at most


async def test_a_link_fcm_would_refuse_for_the_web_stays_in_the_data_only(
    make_channel: ChannelFactory, fake: FakeFcm
) -> None:
    """FCM takes HTTPS links only in ``webpush.fcm_options`` (an http: one fails the message)."""
    message = incident("first", "delivery-1", **{"X-Broadcaster-Link": "http://localhost/i/7"})
    await make_channel().send(Target(TOKEN), message)

    sent = fake.delivered[0].body["message"]
    assert sent["data"]["url"] == "http://localhost/i/7"
    assert "fcm_options" not in sent["webpush"]


async def test_long_text_is_cut_at_a_sentence(make_channel: ChannelFactory, fake: FakeFcm) -> None:
    text = "First sentence here. " * 60
    await make_channel().send(Target(TOKEN), Message(subject="s", text=text, idempotency_key="k"))
    body = fake.delivered[0].body["message"]["notification"]["body"]
    assert len(body) <= 1000
    assert body.endswith("First sentence here.")


# --- the access token cache -------------------------------------------------------------------


async def test_one_token_exchange_serves_many_concurrent_sends(
    make_channel: ChannelFactory, fake: FakeFcm
) -> None:
    channel = make_channel()
    await asyncio.gather(*(channel.send(Target(f"{TOKEN}{i}"), MESSAGE) for i in range(25)))
    assert len(fake.exchanges) == 1
    assert {r.access_token for r in fake.delivered} == {fake.issued[0]}
    assert len(fake.delivered) == 25


async def test_a_cancelled_send_does_not_cancel_the_shared_exchange(
    make_channel: ChannelFactory, fake: FakeFcm
) -> None:
    channel = make_channel()
    fake.token_faults.push(Scripted(200, hang=0.5))
    first = asyncio.ensure_future(channel.send(Target(TOKEN), MESSAGE))
    second = asyncio.ensure_future(channel.send(Target(TOKEN), MESSAGE))
    await asyncio.sleep(0)  # both are now waiting on the one exchange
    first.cancel()
    await second
    assert first.cancelled()
    assert (fake.token_calls, len(fake.delivered)) == (1, 1)


async def test_cancelling_aclose_while_it_stops_an_exchange_is_not_swallowed(
    make_channel: ChannelFactory, fake: FakeFcm
) -> None:
    channel = make_channel()
    fake.token_faults.push(Scripted(200, hang=2))
    sending = asyncio.ensure_future(channel.send(Target(TOKEN), MESSAGE))
    await asyncio.sleep(0.2)  # the exchange is on the wire
    closing = asyncio.ensure_future(channel.aclose())
    await asyncio.sleep(0)  # aclose has cancelled the exchange and waits for it to end
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert closing.cancelled()
    await asyncio.gather(sending, return_exceptions=True)


async def test_token_is_replaced_shortly_before_it_expires(
    make_channel: ChannelFactory, fake: FakeFcm, clock: ManualClock
) -> None:
    channel = make_channel()
    await channel.send(Target(TOKEN), MESSAGE)
    clock.advance(3600 - 300 - 1)
    await channel.send(Target(TOKEN), MESSAGE)
    assert len(fake.exchanges) == 1
    clock.advance(2)
    await channel.send(Target(TOKEN), MESSAGE)
    assert len(fake.exchanges) == 2
    assert fake.exchanges[1].claims["iat"] == 1_700_000_000 + 3600 - 300 + 1
    assert [r.access_token for r in fake.delivered] == [fake.issued[0]] * 2 + [fake.issued[1]]


async def test_a_refused_access_token_is_refreshed_once(
    make_channel: ChannelFactory, fake: FakeFcm
) -> None:
    channel = make_channel()
    await channel.send(Target(TOKEN), MESSAGE)
    fake.revoke_access_tokens()
    await channel.send(Target(TOKEN), MESSAGE)
    assert len(fake.exchanges) == 2
    assert [r.access_token for r in fake.requests] == [fake.issued[0]] * 2 + [fake.issued[1]]
    assert len(fake.delivered) == 2


async def test_a_second_401_is_a_permanent_configuration_error(
    make_channel: ChannelFactory, fake: FakeFcm
) -> None:
    fake.faults.push(Scripted(401), Scripted(401))
    error = await failure(make_channel())
    assert (error.retryable, error.contact_point) == (False, None)
    assert "UNAUTHENTICATED" in error.reason
    assert len(fake.exchanges) == 2
    assert len(fake.requests) == 2


async def test_third_party_auth_error_does_not_refresh(
    make_channel: ChannelFactory, fake: FakeFcm
) -> None:
    fake.token_errors[TOKEN] = "THIRD_PARTY_AUTH_ERROR"
    error = await failure(make_channel())
    assert (error.retryable, error.contact_point) == (False, None)
    assert "THIRD_PARTY_AUTH_ERROR" in error.reason
    assert (len(fake.exchanges), len(fake.requests)) == (1, 1)


# --- error mapping ----------------------------------------------------------------------------

DISABLED = ContactPointState.DISABLED


@pytest.mark.parametrize(
    ("state", "contact_point"),
    [
        ("UNREGISTERED", DISABLED),
        ("INVALID_ARGUMENT", DISABLED),
        ("SENDER_ID_MISMATCH", None),
    ],
)
async def test_token_states(
    make_channel: ChannelFactory, fake: FakeFcm, state: str, contact_point: ContactPointState | None
) -> None:
    fake.token_errors[TOKEN] = state
    error = await failure(make_channel())
    assert (error.retryable, error.contact_point) == (False, contact_point)
    assert state in error.reason


@pytest.mark.parametrize(
    ("scripted", "retryable", "contact_point", "retry_after"),
    [
        (Scripted(400), False, None, None),
        (Scripted(403), False, None, None),
        (Scripted(404), False, DISABLED, None),  # NOT_FOUND with errorCode UNREGISTERED
        (Scripted(404, body=error_body(404, fcm_code="")), False, None, None),  # bad project
        (Scripted(404, body=b"<html>Not Found</html>"), False, None, None),
        (Scripted(408, body=b""), True, None, None),
        (Scripted(408), True, None, None),
        (Scripted(409), False, None, None),
        (Scripted(429), True, None, 60.0),
        (Scripted(429, headers={"Retry-After": "7"}), True, None, 7.0),
        (Scripted(500), True, None, None),
        (Scripted(502, body=b"<html>bad gateway</html>"), True, None, None),
        (Scripted(503, headers={"Retry-After": "17"}), True, None, 17.0),
        (Scripted(504), True, None, None),
        (Scripted(500, body=b"[" * 100_000), True, None, None),  # past the parser's depth
    ],
)
async def test_status_mapping(
    make_channel: ChannelFactory,
    fake: FakeFcm,
    scripted: Scripted,
    retryable: bool,
    contact_point: ContactPointState | None,
    retry_after: float | None,
) -> None:
    fake.faults.push(scripted)
    error = await failure(make_channel())
    got = (error.retryable, error.contact_point, error.retry_after)
    assert got == (retryable, contact_point, retry_after)
    assert f"FCM {scripted.status}" in error.reason


async def test_retry_after_as_an_http_date(
    make_channel: ChannelFactory, fake: FakeFcm, clock: ManualClock
) -> None:
    fake.faults.push(Scripted(503, headers={"Retry-After": formatdate(clock() + 120, usegmt=True)}))
    error = await failure(make_channel())
    assert error.retryable
    assert error.retry_after == 120.0


async def test_an_empty_address_is_disabled_without_a_request(
    make_channel: ChannelFactory, fake: FakeFcm
) -> None:
    error = await failure(make_channel(), token="  ")
    assert (error.retryable, error.contact_point) == (False, DISABLED)
    assert fake.requests == [] and fake.exchanges == []


# --- token endpoint failures ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scripted", "retryable", "retry_after"),
    [
        (Scripted(400), False, None),
        (Scripted(401), False, None),
        (Scripted(429, headers={"Retry-After": "30"}), True, 30.0),
        (Scripted(500), True, None),
        (Scripted(503), True, None),
        (Scripted(200, body=b"{}"), True, None),
    ],
)
async def test_token_endpoint_failures(
    make_channel: ChannelFactory,
    fake: FakeFcm,
    scripted: Scripted,
    retryable: bool,
    retry_after: float | None,
) -> None:
    """Concurrent sends share one exchange, and so its failure."""
    fake.token_faults.push(scripted)
    channel = make_channel()
    sends = (channel.send(Target(TOKEN), MESSAGE) for _ in range(5))
    for error in await asyncio.gather(*sends, return_exceptions=True):
        assert isinstance(error, DeliveryError)
        assert (error.retryable, error.contact_point) == (retryable, None)
        assert error.retry_after == retry_after
    assert (fake.token_calls, fake.requests) == (1, [])


async def test_a_foreign_key_is_refused_by_the_token_endpoint(
    make_channel: ChannelFactory, fake: FakeFcm, url: str
) -> None:
    impostor = make_service_account("p")
    secret = SecretStr(
        impostor.json(f"{url}/token").replace(impostor.client_email, fake.client_email)
    )
    error = await failure(make_channel(service_account_file=None, service_account_json=secret))
    assert (error.retryable, error.contact_point) == (False, None)
    assert "invalid_grant" in error.reason
    assert fake.requests == []


# --- network trouble --------------------------------------------------------------------------


@pytest.mark.parametrize("plan", ["faults", "token_faults"])
async def test_timeout_is_retryable_and_the_channel_recovers(
    make_channel: ChannelFactory, fake: FakeFcm, plan: str
) -> None:
    channel = make_channel(timeout=0.3)
    getattr(fake, plan).push(Scripted(200, hang=30))
    error = await failure(channel)
    assert (error.retryable, error.contact_point) == (True, None)
    assert "timed out" in error.reason
    await channel.send(Target(TOKEN), MESSAGE)
    assert len(fake.delivered) == 1


@pytest.mark.parametrize("setting", ["base_url", "token_uri"])
async def test_connection_reset_is_retryable(
    make_channel: ChannelFactory, resetting: ResettingServer, setting: str
) -> None:
    error = await failure(make_channel(**{setting: f"{resetting.url}/token"}))
    assert (error.retryable, error.contact_point) == (True, None)
    assert "failed" in error.reason


async def test_secrets_never_show_in_errors_settings_or_reprs(
    make_channel: ChannelFactory,
    fake: FakeFcm,
    account: ServiceAccountKey,
    url: str,
    resetting: ResettingServer,
) -> None:
    secret = SecretStr(account.json(f"{url}/token"))
    inline: dict[str, Any] = {"service_account_file": None, "service_account_json": secret}
    channel = make_channel(**inline)
    fake.faults.push(Scripted(401), Scripted(401), Scripted(500), Scripted(200, hang=30))
    fake.token_errors["gone"] = "UNREGISTERED"
    errors = [await failure(channel), await failure(channel)]
    errors.append(await failure(make_channel(**inline, timeout=0.3)))
    errors.append(await failure(channel, token="gone"))
    fake.token_faults.push(Scripted(400))
    errors.append(await failure(make_channel(**inline)))
    errors.append(await failure(make_channel(base_url=resetting.url)))

    secrets = [line for line in account.private_pem.splitlines() if "-----" not in line]
    secrets += fake.issued + [exchange.assertion for exchange in fake.exchanges]
    assert len(fake.issued) >= 2
    settings = FcmSettings(service_account_json=secret)
    shown = [str(settings), repr(settings), repr(channel), str(settings.model_dump())]
    for error in errors:
        shown += [str(error), repr(error), "".join(traceback.format_exception(error))]
    for text in shown:
        for value in secrets:
            assert value not in text


@pytest.mark.parametrize(
    "body", [b"<html>Welcome to the proxy</html>", b"", b"[" * 100_000, b'{"name": 7}']
)
async def test_a_2xx_that_names_no_message_is_not_recorded_as_sent(
    make_channel: ChannelFactory, fake: FakeFcm, body: bytes
) -> None:
    """FCM names every message it accepts: a 2xx without a name is someone else's answer
    (a proxy, a wrong base URL), and the message is tried again, not marked sent."""
    fake.faults.push(Scripted(200, body=body))
    error = await failure(make_channel())
    assert error.retryable and error.contact_point is None
    assert error.reason.startswith("unreadable answer from FCM (")
    assert "proxy" not in error.reason


async def test_text_that_is_not_unicode_fails_for_good_and_sends_nothing(
    make_channel: ChannelFactory, fake: FakeFcm
) -> None:
    broken = Message(subject="Line 4", text="Trains \ud800 stopped", idempotency_key="d-1")
    with pytest.raises(DeliveryError) as refused:
        await make_channel().send(Target(TOKEN), broken)
    assert not refused.value.retryable and refused.value.contact_point is None
    assert fake.requests == []
