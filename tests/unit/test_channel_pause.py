"""A provider's "too many requests" for the sender as a whole pauses the channel; one
receiver's among several a channel reaches pauses that receiver's scope of it.

Which answers say so, per channel (``DeliveryError.throttled`` and ``throttled_scope``, from
each provider's own error shape, through the fakes of the channels' tests), what a scope is
(:func:`~channels.http_common.origin_of`), and how long a pause lasts and what it holds
(:class:`~broadcaster.dispatch.pause.ChannelPauses`, on a fake monotonic clock); the
dispatcher's side is in tests/integration/test_dispatch_throttle.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from ipaddress import IPv6Address

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.core import Metric

from broadcaster.dispatch.pause import (
    DEFAULT_PAUSE,
    LONGEST_PAUSE,
    OTHER_SCOPES,
    PAUSE_GROWTH,
    STREAK_RESET,
    WHOLE,
    ChannelPauses,
    PauseBoard,
)
from broadcaster.dispatch.reports import ProcessBoards
from broadcaster.web import metrics
from channels import webpush
from channels.apns import apns_error
from channels.base import DeliveryError, Message, Receipt, Target, scope_of
from channels.fcm_errors import fcm_error, token_error
from channels.http_common import origin_of
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


def test_a_throttle_is_the_whole_channels_unless_it_names_a_scope() -> None:
    whole = DeliveryError("HTTP 429", retryable=True, throttled=True)
    assert whole.throttled_scope is None
    assert "throttled_scope" not in repr(whole)
    part = DeliveryError(
        "HTTP 429", retryable=True, throttled=True, throttled_scope="https://fcm.googleapis.com"
    )
    assert part.throttled and part.throttled_scope == "https://fcm.googleapis.com"
    assert "throttled_scope='https://fcm.googleapis.com'" in repr(part)


@pytest.mark.parametrize(
    ("throttled", "scope", "error", "message"),
    [
        (False, "https://a.test", ValueError, "needs throttled=True"),
        (True, "", TypeError, "non-empty str"),
        (True, b"https://a.test", TypeError, "non-empty str"),
    ],
)
def test_a_scope_must_be_a_throttles_and_a_name(
    throttled: bool, scope: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        DeliveryError(
            "HTTP 429",
            retryable=True,
            throttled=throttled,
            throttled_scope=scope,  # type: ignore[arg-type]
        )


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


CUSTOMER_HOOK = "http://User:pw@Hooks.TEST:80/customer/1?token=abc"
"""A customer's own webhook URL, written as a customer may: its origin is http://hooks.test."""


async def _webhook_error(url: str | None, status: int) -> tuple[DeliveryError, WebhookChannel]:
    receiver = WebhookReceiver(SECRET, clock=lambda: T0)
    receiver.faults.push(Scripted(status, headers={"Retry-After": "4"}))
    settings = WebhookSettings(url=url, secret=SECRET, timeout=5.0)
    channel = WebhookChannel(
        "hook", settings, transport=httpx.ASGITransport(app=receiver.app), clock=lambda: T0
    )
    try:
        await channel.send(Target(address=f" {CUSTOMER_HOOK} "), MESSAGE)
    except DeliveryError as error:
        return error, channel
    finally:
        await channel.aclose()
    raise AssertionError("the scripted answer was not an error")


async def test_webhook_429_of_the_one_fixed_receiver_throttles_the_channel() -> None:
    error, channel = await _webhook_error("http://hooks.test/in", 429)
    assert error.throttled and error.retry_after == 4.0
    assert error.throttled_scope is None  # the whole channel
    assert channel.pause_scope(CUSTOMER_HOOK) is None


async def test_webhook_429_of_one_customers_host_throttles_that_host() -> None:
    error, channel = await _webhook_error(None, 429)
    assert error.retryable and error.throttled and error.retry_after == 4.0
    assert error.throttled_scope == "http://hooks.test"
    # What the dispatcher finds of each address, by the same function: the same scope.
    assert scope_of(channel, f" {CUSTOMER_HOOK} ") == error.throttled_scope
    assert scope_of(channel, "http://hooks.test/customer/2") == "http://hooks.test"
    assert scope_of(channel, "http://hooks.test:8080/customer/3") == "http://hooks.test:8080"
    assert scope_of(channel, "https://hooks.test/customer/4") == "https://hooks.test"
    assert scope_of(channel, "not a url") is None


@pytest.mark.parametrize("url", ["http://hooks.test/in", None])
async def test_webhook_5xx_does_not(url: str | None) -> None:
    error, _ = await _webhook_error(url, 503)
    assert error.retryable and not error.throttled and error.throttled_scope is None


async def _webpush_error(status: int, endpoint: str) -> tuple[DeliveryError, WebPushChannel, str]:
    vapid = ec.generate_private_key(ec.SECP256R1())
    service = PushService(clock=lambda: T0)
    service.faults.push(Scripted(status, headers={"Retry-After": "9"}))
    subscriber = service.subscribe(endpoint, webpush.application_server_key(vapid))
    pem = vapid.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    settings = WebPushSettings(
        vapid_private_key=pem,
        vapid_subject="mailto:ops@example.com",
        push_hosts=["127.0.0.1", "push.test"],
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
    return caught.value, channel, subscriber.address


async def test_webpush_429_throttles_its_push_service_only() -> None:
    error, channel, address = await _webpush_error(429, "http://127.0.0.1:9")
    assert error.retryable and error.retry_after == 9.0
    assert error.throttled and error.throttled_scope == "http://127.0.0.1:9"
    assert scope_of(channel, address) == error.throttled_scope
    other = json.dumps({"endpoint": "https://updates.push.services.mozilla.com/wpush/v2/x"})
    assert scope_of(channel, other) == "https://updates.push.services.mozilla.com"


async def test_webpush_scope_is_the_normalised_origin() -> None:
    """Written with a capital and the default port, the endpoint's scope is its origin."""
    error, channel, address = await _webpush_error(429, "http://Push.TEST:80")
    assert error.throttled_scope == "http://push.test"
    assert channel.pause_scope(address) == "http://push.test"


async def test_webpush_5xx_does_not() -> None:
    error, _, _ = await _webpush_error(503, "http://127.0.0.1:9")
    assert error.retryable and not error.throttled and error.throttled_scope is None


# --- What a scope is --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://fcm.googleapis.com/fcm/send/abc", "https://fcm.googleapis.com"),
        ("HTTPS://FCM.GoogleAPIs.com:443/fcm/send/abc", "https://fcm.googleapis.com"),
        ("http://hooks.example:80/in", "http://hooks.example"),
        ("http://hooks.example:8080/in", "http://hooks.example:8080"),
        ("http://hooks.example:443/in", "http://hooks.example:443"),  # not http's default
        ("https://hooks.example:80/in", "https://hooks.example:80"),
        ("https://user:secret@hooks.example/in", "https://hooks.example"),
        ("https://hooks.example?token=1#x", "https://hooks.example"),
        ("https://[::1]:8443/push", "https://[::1]:8443"),
        ("https://[2001:DB8:0:0:0:0:0:1]/push", "https://[2001:db8::1]"),
        ("https://[2001:db8::1]:443/push", "https://[2001:db8::1]"),
        # One spelling whatever the text: Python's own (which for an IPv4-mapped address
        # differs between versions).
        ("http://[::FFFF:127.0.0.1]/in", f"http://[{IPv6Address('::ffff:127.0.0.1')}]"),
        ("http://127.0.0.1:8000/in", "http://127.0.0.1:8000"),
        ("https://bücher.example/in", "https://xn--bcher-kva.example"),
        ("https://XN--BCHER-KVA.example/in", "https://xn--bcher-kva.example"),
    ],
)
def test_origin_of_normalises(url: str, origin: str) -> None:
    assert origin_of(url) == origin


@pytest.mark.parametrize(
    "url",
    ["", "not a url", "/relative/path", "ftp://files.example/x", "http:///x", "http://[zz::]/"],
)
def test_origin_of_something_else_is_none(url: str) -> None:
    assert origin_of(url) is None


@pytest.mark.parametrize(
    ("address", "scope"),
    [
        (
            '{"endpoint": "https://Web.Push.Apple.com:443/QGx", "keys": {}}',
            "https://web.push.apple.com",
        ),
        ('{"endpoint": "ftp://x.test/1"}', None),
        ('{"endpoint": 7}', None),
        ('{"keys": {}}', None),
        ("[1, 2]", None),
        ("not json", None),
    ],
)
def test_the_scope_of_a_subscription_is_its_push_services_origin(
    address: str, scope: str | None
) -> None:
    assert webpush.endpoint_origin(address) == scope


class _Scoped:
    name = "odd"
    contact = "email"

    def __init__(self, scope: object) -> None:
        self.scope = scope

    def pause_scope(self, address: str) -> object:
        return self.scope

    async def send(self, target: Target, message: Message) -> Receipt:
        return Receipt()

    async def aclose(self) -> None:
        return None


def test_scope_of_a_channel_without_scopes_is_none() -> None:
    assert scope_of(object(), "http://hooks.test/x") is None
    assert scope_of(_Scoped(""), "x") is None
    assert scope_of(_Scoped("https://a.test"), "x") == "https://a.test"
    with pytest.raises(ValueError, match="pause scope"):
        scope_of(_Scoped(7), "x")


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
    assert board.pauses == {("push", WHOLE): 1}
    assert board.until == {("push", WHOLE): NOW + timedelta(seconds=21)}


def test_channels_pause_apart(pauses: ChannelPauses) -> None:
    pauses.throttled("sms", 30.0, "429", NOW)
    pauses.throttled("ntfy", 5.0, "429", NOW)
    assert pauses.paused() == {
        "sms": NOW + timedelta(seconds=30),
        "ntfy": NOW + timedelta(seconds=5),
    }
    assert pauses.board.pauses == {("sms", WHOLE): 1, ("ntfy", WHOLE): 1}


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


# --- Scopes -----------------------------------------------------------------------------------

FCM = "https://fcm.googleapis.com"
MOZILLA = "https://updates.push.services.mozilla.com"


def test_a_scoped_pause_holds_its_scope_only(pauses: ChannelPauses, clock: Monotonic) -> None:
    pause = pauses.throttled("push", 30.0, "429", NOW, scope=MOZILLA)
    assert pause is not None and (pause.scope, pause.seconds, pause.streak) == (MOZILLA, 30, 1)
    assert pauses.active  # the send's one check sees it
    assert pauses.scoped("push") and not pauses.scoped("sms")
    assert pauses.remaining("push", MOZILLA) == 30.0
    assert pauses.until_at("push", MOZILLA) == NOW + timedelta(seconds=30)
    assert pauses.remaining("push", FCM) == 0.0  # another push service's: not held
    assert pauses.remaining("push") == 0.0  # the channel as a whole: not paused
    assert pauses.holding("push", FCM) is None
    assert pauses.paused() == {}  # claims leave nothing in the queue for a scope
    clock.now += 30
    assert pauses.remaining("push", MOZILLA) == 0.0
    assert not pauses.active


def test_a_message_is_held_by_the_longer_of_its_channels_and_its_scopes(
    pauses: ChannelPauses, clock: Monotonic
) -> None:
    scoped = pauses.throttled("push", 30.0, "429", NOW, scope=MOZILLA)
    whole = pauses.throttled("push", 10.0, "quota", NOW)  # a whole channel's pause besides
    assert scoped is not None and whole is not None and whole.scope == WHOLE
    assert pauses.holding("push", MOZILLA) is scoped
    assert pauses.holding("push", FCM) is whole
    assert pauses.holding("push") is whole
    assert pauses.paused() == {"push": NOW + timedelta(seconds=10)}
    assert pauses.scoped("push")
    clock.now += 10
    assert pauses.holding("push", FCM) is None and pauses.paused() == {}
    assert pauses.remaining("push", MOZILLA) == 20.0
    # The other way round: the whole channel's is the longer.
    pauses.throttled("push", 60.0, "quota", NOW)
    assert pauses.holding("push", MOZILLA) is not scoped
    assert pauses.remaining("push", MOZILLA) == 60.0


def test_streaks_and_lengths_are_per_scope(pauses: ChannelPauses, clock: Monotonic) -> None:
    lengths: dict[str, list[float]] = {FCM: [], MOZILLA: []}
    for _ in range(3):  # Mozilla's refuses again at each pause's end; FCM's once only
        pause = pauses.throttled("push", None, "429", NOW, scope=MOZILLA)
        assert pause is not None
        lengths[MOZILLA].append(pause.seconds)
        clock.now += pause.seconds
    pause = pauses.throttled("push", None, "429", NOW, scope=FCM)
    assert pause is not None
    lengths[FCM].append(pause.seconds)
    assert lengths == {MOZILLA: [5.0, 10.0, 20.0], FCM: [5.0]}
    whole = pauses.throttled("push", None, "quota", NOW)
    assert whole is not None and whole.streak == 1
    # The answers of sends on the wire to one service make its pause longer, no other's.
    assert pauses.throttled("push", 40.0, "429", NOW, scope=FCM) is None
    assert pauses.remaining("push", FCM) == 40.0
    assert pauses.remaining("push", MOZILLA) == 5.0  # the channel's whole pause
    board = pauses.board
    assert board.pauses == {("push", MOZILLA): 3, ("push", FCM): 1, ("push", WHOLE): 1}
    assert board.until[("push", FCM)] == NOW + timedelta(seconds=40)


def test_expired_scopes_are_dropped(clock: Monotonic) -> None:
    """100,000 customer hosts throttle over time: no more is kept than throttled lately."""
    pauses = ChannelPauses(monotonic=clock, sleep=clock.sleep, board=PauseBoard())
    for host in range(2000):
        pauses.throttled("hook", 1.0 + host % 7, "429", NOW, scope=f"https://h{host}.test")
    assert pauses.kept == 2000 and len(pauses.active["hook"]) == 2000
    clock.now += 8  # every pause ended: gone from active at the next look
    assert pauses.remaining("hook", "https://h1.test") == 0.0
    assert not pauses.active
    assert pauses.kept == 2000  # their streaks live on within STREAK_RESET
    again = pauses.throttled("hook", None, "429", NOW, scope="https://h1.test")
    assert again is not None and again.streak == 2
    clock.now += STREAK_RESET + 1
    assert pauses.paused() == {}
    assert pauses.kept == 1  # only h1's second pause is within its streak's time yet
    clock.now += again.seconds  # STREAK_RESET after the end of h1's second pause
    pauses.throttled("hook", 1.0, "429", NOW, scope="https://h2.test")
    assert pauses.kept == 1  # h2 afresh; h1 forgotten
    fresh = pauses.throttled("hook", None, "429", NOW, scope="https://h1.test")
    assert fresh is not None and fresh.streak == 1  # forgotten: a new streak, as it would be
    assert set(pauses.active["hook"]) == {"https://h1.test", "https://h2.test"}


def test_a_pause_made_longer_leaves_when_its_new_end_comes(
    pauses: ChannelPauses, clock: Monotonic
) -> None:
    pauses.throttled("hook", 5.0, "429", NOW, scope="https://a.test")
    pauses.throttled("hook", 20.0, "429", NOW, scope="https://a.test")  # on the wire: longer
    clock.now += 10
    assert pauses.remaining("hook", "https://a.test") == 10.0
    assert pauses.active == {"hook": {"https://a.test": 1020.0}}
    clock.now += 10
    assert pauses.remaining("hook", "https://a.test") == 0.0 and not pauses.active
    clock.now += STREAK_RESET + 1
    assert pauses.paused() == {} and pauses.kept == 0


def test_the_scopes_kept_are_bounded(clock: Monotonic) -> None:
    pauses = ChannelPauses(monotonic=clock, sleep=clock.sleep, board=PauseBoard(), max_scopes=2)
    assert pauses.throttled("hook", 10.0, "429", NOW, scope="https://a.test") is not None
    assert pauses.throttled("hook", 10.0, "429", NOW, scope="https://b.test") is not None
    assert pauses.throttled("hook", 10.0, "429", NOW, scope="https://c.test") is None
    assert pauses.crowded == 1 and pauses.remaining("hook", "https://c.test") == 0.0
    # A whole channel's pause is never refused; a scope kept may still be made longer.
    assert pauses.throttled("sms", 10.0, "429", NOW) is not None
    assert pauses.throttled("hook", 30.0, "429", NOW, scope="https://a.test") is None
    assert pauses.remaining("hook", "https://a.test") == 30.0
    clock.now += 10 + STREAK_RESET + 1  # b forgotten: room for one
    assert pauses.throttled("hook", 10.0, "429", NOW, scope="https://c.test") is not None
    assert pauses.kept == 2  # a (made longer: within its streak's time yet) and c


def test_the_board_names_a_few_scopes_of_a_channel(clock: Monotonic) -> None:
    board = PauseBoard(named=2)
    pauses = ChannelPauses(monotonic=clock, sleep=clock.sleep, board=board)
    for host, seconds in (("a", 5.0), ("b", 5.0), ("c", 50.0), ("d", 20.0)):
        pauses.throttled("hook", seconds, "429", NOW, scope=f"https://{host}.test")
    pauses.throttled("push", 5.0, "429", NOW, scope=FCM)  # another channel names its own
    board.held_back("hook", 3, scope="https://d.test")
    board.held_back("hook", 2)
    assert board.pauses == {
        ("hook", "https://a.test"): 1,
        ("hook", "https://b.test"): 1,
        ("hook", OTHER_SCOPES): 2,
        ("push", FCM): 1,
    }
    assert board.until[("hook", OTHER_SCOPES)] == NOW + timedelta(seconds=50)  # the latest
    assert board.deferred == {("hook", OTHER_SCOPES): 3, ("hook", WHOLE): 2}


# --- /metrics ---------------------------------------------------------------------------------


def test_metrics_show_the_pauses(
    monkeypatch: pytest.MonkeyPatch, pauses: ChannelPauses, clock: Monotonic
) -> None:
    monkeypatch.setattr(metrics, "BOARD", pauses.board)
    monkeypatch.setattr(metrics, "REPORTED", ProcessBoards())
    pauses.throttled("sms", 30.0, "429", NOW)
    pauses.board.held_back("sms", 7)
    pauses.throttled("push", 9.0, "429", NOW, scope=MOZILLA)
    pauses.board.held_back("push", 4, scope=MOZILLA)
    families: dict[str, Metric] = {family.name: family for family in metrics._pauses()}
    samples = {
        (sample.name, tuple(sample.labels.items())): sample.value
        for family in families.values()
        for sample in family.samples
    }
    # A whole channel's: scope empty, which Prometheus drops: the series of before scopes.
    sms = (("channel", "sms"), ("scope", ""))
    assert samples[("broadcaster_channel_pauses_total", sms)] == 1
    assert samples[("broadcaster_channel_pause_deferred_total", sms)] == 7
    until = ("broadcaster_channel_paused_until_timestamp_seconds", sms)
    assert samples[until] == (NOW + timedelta(seconds=30)).timestamp()
    push = (("channel", "push"), ("scope", MOZILLA))
    assert samples[("broadcaster_channel_pauses_total", push)] == 1
    assert samples[("broadcaster_channel_pause_deferred_total", push)] == 4
    until = ("broadcaster_channel_paused_until_timestamp_seconds", push)
    assert samples[until] == (NOW + timedelta(seconds=9)).timestamp()
    assert len(samples) == 6


def test_public_metrics_do_not_name_the_receivers(
    monkeypatch: pytest.MonkeyPatch, pauses: ChannelPauses
) -> None:
    """Served without a token (``http.public_metrics``), ``/metrics`` names no receiver: a
    webhook customer's host is theirs. The receivers' pauses of a channel count together."""
    monkeypatch.setattr(metrics, "BOARD", pauses.board)
    monkeypatch.setattr(metrics, "REPORTED", ProcessBoards())
    pauses.throttled("hook", 30.0, "429", NOW)
    pauses.throttled("hook", 5.0, "429", NOW, scope="https://a.customer.test")
    pauses.throttled("hook", 50.0, "429", NOW, scope="https://b.customer.test")
    pauses.board.held_back("hook", 3, scope="https://a.customer.test")
    pauses.board.held_back("hook", 4, scope="https://b.customer.test")
    samples = {
        (sample.name, tuple(sample.labels.items())): sample.value
        for family in metrics._pauses(named=False)
        for sample in family.samples
    }
    assert not any("customer.test" in value for _, labels in samples for _, value in labels)
    whole = (("channel", "hook"), ("scope", ""))
    receivers = (("channel", "hook"), ("scope", metrics.RECEIVERS))
    assert samples[("broadcaster_channel_pauses_total", whole)] == 1
    assert samples[("broadcaster_channel_pauses_total", receivers)] == 2
    assert samples[("broadcaster_channel_pause_deferred_total", receivers)] == 7
    until = ("broadcaster_channel_paused_until_timestamp_seconds", receivers)
    assert samples[until] == (NOW + timedelta(seconds=50)).timestamp()  # the latest end


# -- the pauses of the daemon's extra dispatch processes -----------------------------------


def _board(pauses: ChannelPauses) -> PauseBoard:
    pauses.throttled("sms", 30.0, "429", NOW)
    pauses.board.held_back("sms", 7)
    pauses.throttled("push", 9.0, "429", NOW, scope=MOZILLA)
    return pauses.board


def test_a_board_goes_through_its_report_unchanged(pauses: ChannelPauses) -> None:
    board = _board(pauses)
    again = PauseBoard.from_snapshot(board.snapshot())
    assert (again.pauses, again.deferred, again.until) == (
        board.pauses,
        board.deferred,
        board.until,
    )
    assert again.until[("sms", WHOLE)].tzinfo is not None


@pytest.mark.parametrize(
    ("report", "where"),
    [
        (b"\xff", "not JSON"),
        (b"[]", "want an object"),
        (b'{"pauses": [], "deferred": []}', "want an object"),
        (b'{"pauses": {}, "deferred": [], "until": []}', "pauses: want a list"),
        (b'{"pauses": [["sms", ""]], "deferred": [], "until": []}', r"pauses\[0\]"),
        (b'{"pauses": [["sms", "", -1]], "deferred": [], "until": []}', r"pauses\[0\]: count"),
        (b'{"pauses": [], "deferred": [[1, "", 1]], "until": []}', r"deferred\[0\]"),
        (b'{"pauses": [], "deferred": [], "until": [["sms", "", "x"]]}', r"until\[0\]: time"),
        (b'{"pauses": [], "deferred": [], "until": [["sms", "", 1e300]]}', r"until\[0\]"),
    ],
)
def test_a_report_that_is_not_a_board_is_refused_saying_where(report: bytes, where: str) -> None:
    with pytest.raises(ValueError, match=where):
        PauseBoard.from_snapshot(report)


def test_the_daemon_counts_its_processes_pauses_and_never_counts_back(
    pauses: ChannelPauses,
) -> None:
    """Each dispatch process's latest report adds to the daemon's own board; one that ended
    keeps its last counts, so a process started again (from zero) takes nothing away."""
    mine = ChannelPauses(monotonic=lambda: 0.0, board=PauseBoard())
    mine.throttled("sms", 5.0, "429", NOW)
    own = mine.board
    reported = ProcessBoards()
    child = _board(pauses)
    reported.report(1, child)
    total = reported.total(own)
    assert total.pauses[("sms", WHOLE)] == 1 + 1
    assert total.deferred[("sms", WHOLE)] == 7
    assert total.pauses[("push", MOZILLA)] == 1
    assert total.until[("sms", WHOLE)] == NOW + timedelta(seconds=30)  # the later end
    reported.ended(1)
    reported.report(2, PauseBoard())  # its restart, nothing paused yet
    assert reported.total(own).pauses == total.pauses
    reported.ended(2)
    reported.ended(3)  # one that never reported
    assert reported.total(own).pauses == total.pauses
    assert reported.total(PauseBoard()).pauses == child.pauses


def test_metrics_show_the_dispatch_processes_pauses(
    monkeypatch: pytest.MonkeyPatch, pauses: ChannelPauses
) -> None:
    monkeypatch.setattr(metrics, "BOARD", PauseBoard())
    reported = ProcessBoards()
    reported.report(1, _board(pauses))
    monkeypatch.setattr(metrics, "REPORTED", reported)
    samples = {
        (sample.name, tuple(sample.labels.items())): sample.value
        for family in metrics._pauses()
        for sample in family.samples
    }
    sms = (("channel", "sms"), ("scope", ""))
    assert samples[("broadcaster_channel_pauses_total", sms)] == 1
    assert samples[("broadcaster_channel_pause_deferred_total", sms)] == 7


def test_the_totals_name_a_receiver_for_good_whichever_process_ends() -> None:
    """Beyond 20 receivers of a channel across processes, the totals count the later ones
    under ``other``; which ones that is must not change when a process ends (its board
    then counts among the ended ones, in another order): a series that came and went would
    read as a counter reset."""

    def child(prefix: str) -> PauseBoard:
        pauses = ChannelPauses(monotonic=lambda: 0.0, board=PauseBoard())
        for n in range(15):
            pauses.throttled("hook", 5.0, "429", NOW, scope=f"https://{prefix}{n}.example")
        return pauses.board

    reported = ProcessBoards()
    reported.report(1, child("a"))
    reported.report(2, child("b"))
    before = reported.total(PauseBoard()).pauses
    assert len(before) == 21 and before[("hook", OTHER_SCOPES)] == 10
    reported.ended(2)  # its board now counted ahead of the running one's
    assert reported.total(PauseBoard()).pauses == before
    reported.ended(1)
    assert reported.total(PauseBoard()).pauses == before
