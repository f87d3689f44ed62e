"""A provider's "too many requests" for the sender as a whole pauses the channel.

Which answers say so, per channel (``DeliveryError.throttled``, from each provider's own
error shape, through the fakes of the channels' tests), and how long a pause lasts
(:class:`~broadcaster.dispatch.pause.ChannelPauses`, on a fake monotonic clock); the
dispatcher's side is in tests/integration/test_dispatch_throttle.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.core import Metric

from broadcaster.dispatch.pause import (
    DEFAULT_PAUSE,
    LONGEST_PAUSE,
    PAUSE_GROWTH,
    STREAK_RESET,
    ChannelPauses,
    PauseBoard,
)
from broadcaster.web import metrics
from channels import webpush
from channels.apns import apns_error
from channels.base import DeliveryError, Message, Target
from channels.fcm_errors import fcm_error, token_error
from channels.ntfy import NtfyChannel, NtfySettings
from channels.twilio_sms import twilio_error
from channels.webhook import WebhookChannel, WebhookSettings
from channels.webpush import WebPushChannel, WebPushSettings
from tests.fakes.control import Scripted
from tests.fakes.fcm import error_body as fcm_body
from tests.fakes.ntfy import NtfyServer
from tests.fakes.twilio import error_body as twilio_body
from tests.fakes.webhook import WebhookReceiver
from tests.fakes.webpush import PushService

T0 = 1_767_225_600.0
NOW = datetime(2026, 1, 6, 8, 0, tzinfo=UTC)
SECRET = "a-webhook-secret-of-some-length"
MESSAGE = Message(
    subject="Line 4 stopped", text="Trains on line 4 are stopped.", idempotency_key="delivery-1"
)


# --- DeliveryError ----------------------------------------------------------------------------


def test_a_delivery_error_is_about_one_message_unless_it_says_otherwise() -> None:
    plain = DeliveryError("HTTP 503", retryable=True, retry_after=2.0)
    assert plain.throttled is False
    throttled = DeliveryError("HTTP 429", retryable=True, throttled=True)
    assert throttled.throttled is True
    assert "throttled=True" in repr(throttled)
    assert "throttled=False" in repr(plain)


def test_throttled_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="throttled must be a bool"):
        DeliveryError("HTTP 429", retryable=True, throttled="yes")  # type: ignore[arg-type]


# --- Which answers throttle the sender --------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "throttled"),
    [
        (429, 20429, True),  # the account's concurrency at Twilio's REST API
        (429, None, True),
        (400, 21611, True),  # the sender's queue is full
        (503, None, False),  # Twilio down: nothing about our rate
        (400, 21211, False),  # an invalid number: the recipient's
        (400, 21610, False),
    ],
)
def test_twilio(status: int, code: int | None, throttled: bool) -> None:
    body = twilio_body(status, code)
    error = twilio_error(status, body["code"], body["message"], {"retry-after": "3"})
    assert error.throttled is throttled
    if throttled:
        assert error.retryable


def test_fcm_project_quota_throttles_the_channel() -> None:
    error = fcm_error(429, fcm_body(429), retry_after=None)
    assert error.throttled and error.retryable
    assert error.retry_after == 60.0  # FCM's minute when it gives no Retry-After


def test_fcm_quota_of_one_device_does_not() -> None:
    body = fcm_body(429, fcm_code="QUOTA_EXCEEDED", message="Device message rate exceeded.")
    error = fcm_error(429, body, retry_after=5.0)
    assert error.retryable and not error.throttled
    assert error.retry_after == 5.0


@pytest.mark.parametrize("status", [500, 503])
def test_fcm_overload_does_not(status: int) -> None:
    assert not fcm_error(status, fcm_body(status)).throttled


def test_fcm_token_endpoint_429_throttles_every_send() -> None:
    body = json.dumps({"error": "rate_limit_exceeded"}).encode()
    assert token_error(httpx.Response(429, content=body), 10.0, secrets=()).throttled
    assert not token_error(httpx.Response(503, content=body), 10.0, secrets=()).throttled


@pytest.mark.parametrize(
    ("reason", "throttled"),
    [
        ("TooManyRequests", False),  # too many to one device token
        ("TooManyProviderTokenUpdates", True),  # our provider token: every send
    ],
)
def test_apns(reason: str, throttled: bool) -> None:
    error = apns_error(429, reason, 30.0)
    assert error.retryable and error.retry_after == 30.0
    assert error.throttled is throttled


@pytest.fixture
async def ntfy() -> AsyncIterator[tuple[NtfyServer, NtfyChannel]]:
    server = NtfyServer(clock=lambda: T0)
    settings = NtfySettings(base_url="http://ntfy.test", timeout=5.0)
    channel = NtfyChannel(
        "ntfy", settings, transport=httpx.ASGITransport(app=server.app), clock=lambda: T0
    )
    yield server, channel
    await channel.aclose()


async def test_ntfy_429_is_the_visitors_rate(ntfy: tuple[NtfyServer, NtfyChannel]) -> None:
    server, channel = ntfy
    server.faults.push(Scripted(429, headers={"Retry-After": "7"}))
    with pytest.raises(DeliveryError) as caught:
        await channel.send(Target(address="alerts-7f3k"), MESSAGE)
    assert caught.value.throttled and caught.value.retry_after == 7.0
    server.faults.push(Scripted(503))
    with pytest.raises(DeliveryError) as caught:
        await channel.send(Target(address="alerts-7f3k"), MESSAGE)
    assert caught.value.retryable and not caught.value.throttled


async def _webhook_error(url: str | None, status: int) -> DeliveryError:
    receiver = WebhookReceiver(SECRET, clock=lambda: T0)
    receiver.faults.push(Scripted(status, headers={"Retry-After": "4"}))
    settings = WebhookSettings(url=url, secret=SECRET, timeout=5.0)
    channel = WebhookChannel(
        "hook", settings, transport=httpx.ASGITransport(app=receiver.app), clock=lambda: T0
    )
    try:
        await channel.send(Target(address="http://hooks.test/customer/1"), MESSAGE)
    except DeliveryError as error:
        return error
    finally:
        await channel.aclose()
    raise AssertionError("the scripted answer was not an error")


async def test_webhook_429_of_the_one_fixed_receiver_throttles() -> None:
    error = await _webhook_error("http://hooks.test/in", 429)
    assert error.throttled and error.retry_after == 4.0


async def test_webhook_429_of_one_customers_host_does_not() -> None:
    error = await _webhook_error(None, 429)
    assert error.retryable and not error.throttled and error.retry_after == 4.0


async def test_webhook_5xx_does_not() -> None:
    assert not (await _webhook_error("http://hooks.test/in", 503)).throttled


async def test_webpush_429_is_one_push_services_and_does_not() -> None:
    vapid = ec.generate_private_key(ec.SECP256R1())
    service = PushService(clock=lambda: T0)
    service.faults.push(Scripted(429, headers={"Retry-After": "9"}))
    subscriber = service.subscribe("http://127.0.0.1:9", webpush.application_server_key(vapid))
    pem = vapid.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    settings = WebPushSettings(
        vapid_private_key=pem,
        vapid_subject="mailto:ops@example.com",
        push_hosts=["127.0.0.1"],
        allow_http=True,
        timeout=5.0,
    )
    channel = WebPushChannel(
        "webpush", settings, transport=httpx.ASGITransport(app=service.app), clock=lambda: T0
    )
    try:
        with pytest.raises(DeliveryError) as caught:
            await channel.send(Target(address=subscriber.address), MESSAGE)
    finally:
        await channel.aclose()
    assert caught.value.retryable and caught.value.retry_after == 9.0
    assert not caught.value.throttled


# --- How long a pause lasts -------------------------------------------------------------------


class Monotonic:
    """A monotonic clock the test moves; its ``sleep`` moves it too (no real waiting)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> Monotonic:
    return Monotonic()


@pytest.fixture
def pauses(clock: Monotonic) -> ChannelPauses:
    return ChannelPauses(monotonic=clock, sleep=clock.sleep, board=PauseBoard())


def test_no_pause_leaves_nothing_to_look_at(pauses: ChannelPauses) -> None:
    assert not pauses.active
    assert pauses.remaining("sms") == 0.0
    assert pauses.until_at("sms") is None
    assert pauses.paused() == {}


def test_a_retry_after_sets_the_pause(pauses: ChannelPauses, clock: Monotonic) -> None:
    pause = pauses.throttled("sms", 30.0, "HTTP 429", NOW)
    assert pause is not None
    assert (pause.seconds, pause.streak, pause.reason) == (30.0, 1, "HTTP 429")
    assert pauses.remaining("sms") == 30.0
    assert pauses.remaining("mail") == 0.0
    assert pauses.paused() == {"sms": NOW + timedelta(seconds=30)}
    clock.now += 29.5
    assert pauses.remaining("sms") == pytest.approx(0.5)
    clock.now += 0.5
    assert pauses.remaining("sms") == 0.0
    assert not pauses.active  # the check is back to one attribute read


def test_without_retry_after_the_pause_grows_and_is_capped(
    pauses: ChannelPauses, clock: Monotonic
) -> None:
    seen = []
    for _ in range(12):
        pause = pauses.throttled("sms", None, "HTTP 429", NOW)
        assert pause is not None
        seen.append(pause.seconds)
        clock.now += pause.seconds  # the pause ends; the provider refuses the next send again
    assert seen[:4] == [DEFAULT_PAUSE * PAUSE_GROWTH**n for n in range(4)]
    assert max(seen) == seen[-1] == LONGEST_PAUSE


def test_a_throttle_long_after_the_last_pause_starts_again(
    pauses: ChannelPauses, clock: Monotonic
) -> None:
    for _ in range(3):
        pause = pauses.throttled("sms", None, "429", NOW)
        assert pause is not None
        clock.now += pause.seconds
    clock.now += STREAK_RESET + 1
    again = pauses.throttled("sms", None, "429", NOW)
    assert again is not None and (again.streak, again.seconds) == (1, DEFAULT_PAUSE)


def test_the_answers_of_sends_already_on_the_wire_make_one_pause(
    pauses: ChannelPauses, clock: Monotonic
) -> None:
    board = pauses.board
    first = pauses.throttled("push", 10.0, "429", NOW)
    assert first is not None
    clock.now += 1
    # Hundreds of sends were on the wire: their 429s begin no pause of their own.
    assert pauses.throttled("push", None, "429", NOW) is None
    assert pauses.throttled("push", 5.0, "429", NOW) is None  # asks for less: no change
    assert pauses.remaining("push") == 9.0
    assert pauses.throttled("push", 20.0, "429", NOW + timedelta(seconds=1)) is None
    assert pauses.remaining("push") == 20.0  # asks for more: longer
    assert pauses.until_at("push") == NOW + timedelta(seconds=21)
    assert first.streak == 1
    assert board.pauses == {"push": 1}
    assert board.until == {"push": NOW + timedelta(seconds=21)}


def test_channels_pause_apart(pauses: ChannelPauses) -> None:
    pauses.throttled("sms", 30.0, "429", NOW)
    pauses.throttled("ntfy", 5.0, "429", NOW)
    assert pauses.paused() == {
        "sms": NOW + timedelta(seconds=30),
        "ntfy": NOW + timedelta(seconds=5),
    }
    assert pauses.board.pauses == {"sms": 1, "ntfy": 1}


@pytest.mark.parametrize("said", [0.0, -3.0, math.nan])
def test_an_unusable_retry_after_is_as_none(pauses: ChannelPauses, said: float) -> None:
    pause = pauses.throttled("sms", said, "429", NOW)
    assert pause is not None and pause.seconds == DEFAULT_PAUSE


@pytest.mark.parametrize("said", [86_400.0, math.inf])
def test_a_provider_cannot_pause_a_channel_for_hours(pauses: ChannelPauses, said: float) -> None:
    pause = pauses.throttled("sms", said, "429", NOW)
    assert pause is not None and pause.seconds == LONGEST_PAUSE


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"default": 0.0}, "default must be a positive"),
        ({"default": math.nan}, "default must be a positive"),
        ({"growth": 0.5}, "growth must be at least 1"),
        ({"longest": 1.0}, "must be finite and at least the default"),
        ({"longest": math.inf}, "must be finite and at least the default"),
        ({"reset": -1.0}, "reset must be"),
    ],
)
def test_bad_settings_are_refused_clearly(settings: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ChannelPauses(**settings)  # type: ignore[arg-type]


def test_bad_calls_are_refused_clearly(pauses: ChannelPauses) -> None:
    with pytest.raises(ValueError, match="a channel name is required"):
        pauses.throttled("", 1.0, "429", NOW)
    with pytest.raises(ValueError, match="streak counts from 1"):
        pauses.length(None, 0)


# --- /metrics ---------------------------------------------------------------------------------


def test_metrics_show_the_pauses(
    monkeypatch: pytest.MonkeyPatch, pauses: ChannelPauses, clock: Monotonic
) -> None:
    monkeypatch.setattr(metrics, "BOARD", pauses.board)
    pauses.throttled("sms", 30.0, "429", NOW)
    pauses.board.held_back("sms", 7)
    families: dict[str, Metric] = {family.name: family for family in metrics._pauses()}
    samples = {
        (sample.name, tuple(sample.labels.items())): sample.value
        for family in families.values()
        for sample in family.samples
    }
    assert samples[("broadcaster_channel_pauses_total", (("channel", "sms"),))] == 1
    assert samples[("broadcaster_channel_pause_deferred_total", (("channel", "sms"),))] == 7
    until = ("broadcaster_channel_paused_until_timestamp_seconds", (("channel", "sms"),))
    assert samples[until] == (NOW + timedelta(seconds=30)).timestamp()
