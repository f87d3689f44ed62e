"""The Web Push channel over real HTTP to a fake push service, decrypted as the browser would:
with the subscriber's private key and auth secret (made as ``PushManager.subscribe`` makes
them), by RFC 8291 written out in the fake, independent of the channel's ``http_ece``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import http_ece
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from channels import webpush
from channels.base import ContactPointState, DeliveryError, Message, Target
from channels.webpush import WebPushChannel, WebPushSettings
from tests.fakes.control import ResettingServer, Scripted
from tests.fakes.http import free_port, serve
from tests.fakes.webpush import PushService, Subscriber, b64url, unb64url

T0 = 1_767_225_600.0
ChannelFactory = Callable[..., WebPushChannel]
_NO_ENCRYPTION = serialization.NoEncryption()
_PKCS8 = serialization.PrivateFormat.PKCS8
SUBJECT = "mailto:ops@example.com"
LINK = "https://status.example.com/incidents/7"


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def vapid_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def vapid_pem(vapid_key: ec.EllipticCurvePrivateKey) -> str:
    return vapid_key.private_bytes(serialization.Encoding.PEM, _PKCS8, _NO_ENCRYPTION).decode()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def service(clock: FakeClock) -> PushService:
    return PushService(clock=clock)


@pytest.fixture
def base_url(service: PushService) -> Iterator[str]:
    with serve(service.app) as url:
        yield url


@pytest.fixture
async def make_channel(vapid_pem: str, clock: FakeClock) -> AsyncIterator[ChannelFactory]:
    channels: list[WebPushChannel] = []

    def make(**settings: Any) -> WebPushChannel:
        if "vapid_private_key_file" not in settings:
            settings.setdefault("vapid_private_key", vapid_pem)
        settings.setdefault("vapid_subject", SUBJECT)
        settings.setdefault("push_hosts", ["127.0.0.1"])
        settings.setdefault("allow_http", True)
        settings.setdefault("timeout", 5.0)
        channel = WebPushChannel("webpush", WebPushSettings(**settings), clock=clock)
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        await channel.aclose()


@pytest.fixture
def subscriber(
    service: PushService, base_url: str, vapid_key: ec.EllipticCurvePrivateKey
) -> Subscriber:
    return service.subscribe(base_url, webpush.application_server_key(vapid_key))


@pytest.fixture
def target(subscriber: Subscriber) -> Target:
    return Target(address=subscriber.address)


def message(**overrides: Any) -> Message:
    fields: dict[str, Any] = {
        "subject": "Line 4 stopped",
        "text": "Trains on line 4 are stopped. Next update by 14:30.",
        "idempotency_key": "delivery-42",
        "headers": {"X-Broadcaster-Round": "7/2", "X-Broadcaster-Link": LINK},
    }
    fields.update(overrides)
    return Message(**fields)


async def test_the_browser_decrypts_the_notification(
    make_channel: ChannelFactory, service: PushService, subscriber: Subscriber, target: Target
) -> None:
    channel = make_channel()
    receipt = await channel.send(target, message())
    await channel.send(target, message())
    got, again = service.accepted
    assert receipt.provider_message_id is not None
    assert receipt.provider_message_id.startswith(subscriber.endpoint.split("/push/")[0] + "/m/")
    plaintext = subscriber.decrypt(got.body)
    assert json.loads(plaintext) == {
        "title": "Line 4 stopped",
        "body": "Trains on line 4 are stopped. Next update by 14:30.",
        "url": LINK,
        "delivery": "delivery-42",
    }
    # The same bytes through http_ece's decryption, as a cross-check of both sides.
    key, auth = subscriber.private_key, subscriber.auth
    assert http_ece.decrypt(got.body, private_key=key, auth_secret=auth) == plaintext
    sent = [got.headers.get(name) for name in ("content-encoding", "ttl", "urgency", "topic")]
    assert sent == ["aes128gcm", "14400", "high", None]  # a first notice is never replaced
    # Every message has its own salt and ephemeral sender key.
    assert got.body[:16] != again.body[:16] and got.body[21:86] != again.body[21:86]
    assert subscriber.decrypt(again.body) == plaintext


@pytest.mark.parametrize(
    ("kind", "topic"),
    [
        ("first", None),
        ("update", None),
        ("no_news", "incident-7-wait"),
        ("resolution", "incident-7-wait"),
    ],
)
async def test_only_no_news_and_the_resolution_replace_a_queued_notification(
    make_channel: ChannelFactory, service: PushService, target: Target, kind: str, topic: str | None
) -> None:
    """A Topic lets the push service replace a message still queued for an offline device:
    an update (maybe a workaround) must not give way to the "no news yet" after it."""
    headers = {"X-Broadcaster-Round": "7/2", "X-Broadcaster-Link": LINK, "X-Broadcaster-Kind": kind}
    await make_channel().send(target, message(headers=headers, thread="incident-7"))
    assert service.accepted[-1].headers.get("topic") == topic


async def test_vapid_token_is_signed_cached_renewed_and_dropped_when_refused(
    make_channel: ChannelFactory,
    service: PushService,
    target: Target,
    base_url: str,
    clock: FakeClock,
) -> None:
    channel = make_channel()
    await channel.send(target, message())
    scheme, _, params = service.requests[-1].headers["authorization"].partition(" ")
    parts = dict(p.strip().split("=", 1) for p in params.split(","))
    assert scheme == "vapid" and parts["k"] == channel.application_server_key
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(parts["k"]))
    claims = jwt.decode(
        parts["t"], public, algorithms=["ES256"], audience=base_url, options={"verify_exp": False}
    )
    assert claims == {"aud": base_url, "exp": int(T0) + webpush.JWT_LIFETIME, "sub": SUBJECT}
    assert claims["exp"] - T0 <= 24 * 3600
    assert jwt.get_unverified_header(parts["t"]) == {"alg": "ES256", "typ": "JWT"}

    def token() -> str:
        return service.requests[-1].headers["authorization"]

    first = token()
    clock.now += webpush.JWT_LIFETIME - webpush.JWT_RENEW_BEFORE - 1
    await channel.send(target, message())
    assert token() == first  # cached
    clock.now += 2
    await channel.send(target, message())
    assert token() != first  # renewed an hour before it expires
    assert service.requests[-1].claims["exp"] == int(clock.now) + webpush.JWT_LIFETIME
    renewed = token()
    service.faults.push(Scripted(401))
    with pytest.raises(DeliveryError):
        await channel.send(target, message())
    assert token() == renewed
    await channel.send(target, message())
    assert token() != renewed  # a refused token is not reused

    other = PushService(clock=clock)  # another origin, another audience, another token
    with serve(other.app) as other_url:
        elsewhere = other.subscribe(other_url, channel.application_server_key)
        await channel.send(Target(address=elsewhere.address), message())
    assert other.accepted[0].claims["aud"] == other_url


@pytest.mark.parametrize("form", ["pem-pkcs8", "pem-sec1", "raw", "der", "file"])
async def test_vapid_key_forms(
    make_channel: ChannelFactory,
    vapid_key: ec.EllipticCurvePrivateKey,
    vapid_pem: str,
    tmp_path: Path,
    form: str,
) -> None:
    sec1, none = serialization.PrivateFormat.TraditionalOpenSSL, _NO_ENCRYPTION
    texts = {
        "pem-pkcs8": vapid_pem,
        "pem-sec1": vapid_key.private_bytes(serialization.Encoding.PEM, sec1, none).decode(),
        "raw": b64url(vapid_key.private_numbers().private_value.to_bytes(32, "big")),
        "der": b64url(vapid_key.private_bytes(serialization.Encoding.DER, _PKCS8, none)),
    }
    if form == "file":
        path = tmp_path / "private_key.pem"
        path.write_text(vapid_pem + "\n\n")
        channel = make_channel(vapid_private_key_file=path)
    else:
        channel = make_channel(vapid_private_key=texts[form])
    assert channel.application_server_key == webpush.application_server_key(vapid_key)


def test_a_bad_vapid_key_is_refused_without_echoing_it() -> None:
    junk = "c2VjcmV0LWJ1dC1ub3QtYS1rZXk"
    with pytest.raises(ValueError) as caught:
        webpush.load_vapid_key(junk)
    assert junk not in str(caught.value)
    for wrong in (rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP384R1())):
        pem = wrong.private_bytes(serialization.Encoding.PEM, _PKCS8, _NO_ENCRYPTION).decode()
        with pytest.raises(ValueError, match=r"P-256|not PEM"):
            webpush.load_vapid_key(pem)
    with pytest.raises(ValueError) as built:
        WebPushChannel("wp", WebPushSettings(vapid_private_key=junk, vapid_subject=SUBJECT))
    assert junk not in str(built.value) and "'wp'" in str(built.value)


def _address(**changes: Any) -> str:
    return Subscriber("http://127.0.0.1:9/push/x").address_with(**changes)


BAD_ADDRESSES = [
    "not json",
    "[]",
    json.dumps({"endpoint": "http://127.0.0.1:9/push/x"}),
    _address(endpoint=""),
    _address(p256dh="AAAA"),
    _address(p256dh=b64url(b"\x04" + bytes(64))),  # not a point on the curve
    _address(p256dh="not base64url!"),
    _address(auth=b64url(bytes(8))),
    _address(endpoint="ftp://127.0.0.1/push/x"),
    _address(endpoint="http://push.evil.example/push/x"),
    _address(endpoint="https://permanently-removed.invalid/fcm/send/x"),
]


@pytest.mark.parametrize("address", [*BAD_ADDRESSES, "http endpoint without allow_http"])
async def test_an_unusable_subscription_disables_the_contact_point(
    make_channel: ChannelFactory, service: PushService, subscriber: Subscriber, address: str
) -> None:
    channel = make_channel()
    if address.startswith("http endpoint"):
        address, channel = subscriber.address, make_channel(allow_http=False)
    with pytest.raises(DeliveryError) as caught:
        await channel.send(Target(address=address), message())
    assert caught.value.retryable is False
    assert caught.value.contact_point is ContactPointState.DISABLED
    assert service.requests == []


async def test_gone_unknown_and_foreign_key_subscriptions(
    make_channel: ChannelFactory, service: PushService, subscriber: Subscriber, base_url: str
) -> None:
    unknown = Subscriber(f"{base_url}/push/never-subscribed")
    foreign = service.subscribe(base_url, b64url(b"\x04" + bytes(64)))  # another site's key
    service.gone.add(subscriber.endpoint.rsplit("/", 1)[1])
    disabled = ContactPointState.DISABLED
    cases = [(subscriber, 410, disabled), (unknown, 404, disabled), (foreign, 403, None)]
    for who, status, state in cases:
        with pytest.raises(DeliveryError) as caught:
            await make_channel().send(Target(address=who.address), message())
        assert str(status) in caught.value.reason and caught.value.retryable is False
        assert caught.value.contact_point is state


GONE, PERMANENT, RETRYABLE = (404, 410), (400, 401, 403, 413, 422), (408, 429, *range(500, 505))
RETRY_TABLE: list[tuple[int, bool, ContactPointState | None]] = [
    *((status, False, ContactPointState.DISABLED) for status in GONE),
    *((status, False, None) for status in PERMANENT),
    *((status, True, None) for status in RETRYABLE),
]


@pytest.mark.parametrize(("status", "retryable", "contact_point"), RETRY_TABLE)
async def test_status_table(
    make_channel: ChannelFactory,
    service: PushService,
    target: Target,
    status: int,
    retryable: bool,
    contact_point: ContactPointState | None,
) -> None:
    service.faults.push(Scripted(status, headers={"Retry-After": "42"}))
    with pytest.raises(DeliveryError) as caught:
        await make_channel().send(target, message())
    assert caught.value.retryable is retryable
    assert caught.value.contact_point is contact_point
    assert str(status) in caught.value.reason
    assert caught.value.retry_after == (42.0 if retryable else None)
    assert f"answered {status}: errno 999: scripted failure" in caught.value.reason  # autopush


async def test_timeout_reset_and_refused_are_retryable(
    make_channel: ChannelFactory, service: PushService, target: Target
) -> None:
    service.faults.push(Scripted(201, hang=10.0))
    with pytest.raises(DeliveryError) as timed_out:
        await make_channel(timeout=0.2).send(target, message())
    assert timed_out.value.retryable is True and "timed out" in timed_out.value.reason
    with ResettingServer() as resetting, pytest.raises(DeliveryError) as reset:
        address = _address(endpoint=f"{resetting.url}/push/x")
        await make_channel().send(Target(address=address), message())
    assert reset.value.retryable is True
    address = _address(endpoint=f"http://127.0.0.1:{free_port()}/push/x")
    with pytest.raises(DeliveryError) as refused:
        await make_channel().send(Target(address=address), message())
    assert refused.value.retryable is True


async def test_a_long_message_is_cut_to_fit_4096_bytes(
    make_channel: ChannelFactory, service: PushService, subscriber: Subscriber, target: Target
) -> None:
    text = "Der Zug fällt aus – bitte nutzen Sie den Ersatzverkehr. 🚌 " * 200
    await make_channel().send(target, message(text=text))
    [got] = service.accepted
    assert len(got.body) <= webpush.MAX_BODY
    payload = json.loads(subscriber.decrypt(got.body))
    assert payload["title"] == "Line 4 stopped"
    assert payload["delivery"] == "delivery-42"
    assert payload["url"] == LINK
    # Cut after the last whole sentence that fits (a byte cut split a word), and filled.
    assert payload["body"].endswith("Ersatzverkehr.") and text.startswith(payload["body"])
    assert len(subscriber.decrypt(got.body)) > webpush.MAX_PLAINTEXT - 100
    words = "Engineers are replacing the damaged overhead line " * 200  # no sentence end
    cut = json.loads(webpush.build_payload(message(text=words)))["body"]
    assert cut.endswith("line…") or cut.endswith(("are…", "replacing…", "the…", "damaged…"))
    assert words.startswith(cut[:-1]) and cut[-2] != " "


def test_payload_limits_and_subscription_parsing() -> None:
    title_only = json.loads(webpush.build_payload(message(subject="T" * 9000, text="x" * 9000)))
    assert title_only["body"] == "" and title_only["title"].endswith("…")
    no_link = json.loads(
        webpush.build_payload(message(headers={"X-Broadcaster-Link": "https://x/" + "a" * 5000}))
    )
    assert "url" not in no_link and no_link["body"] == message().text
    for size in (0, 1, 100, 3000, 3993, 3994, 5000):
        assert len(webpush.build_payload(message(text="é" * size))) <= webpush.MAX_PLAINTEXT
    with pytest.raises(DeliveryError) as caught:
        webpush.build_payload(message(idempotency_key="k" * 5000))
    assert caught.value.retryable is False
    # Subscriptions with padded or standard-alphabet base64 keys parse too.
    subscriber = Subscriber("https://fcm.googleapis.com/fcm/send/abc")
    document = json.loads(subscriber.address)
    document["keys"]["p256dh"] = base64.b64encode(subscriber.p256dh).decode()
    document["keys"]["auth"] = base64.b64encode(subscriber.auth).decode()
    parsed = webpush.PushSubscription.parse(json.dumps(document))
    assert (parsed.p256dh, parsed.auth) == (subscriber.p256dh, subscriber.auth)


async def test_urgency_ttl_topic_settings_and_closing(
    make_channel: ChannelFactory, service: PushService, target: Target
) -> None:
    await make_channel(urgency="low", ttl=60, topic=False).send(target, message())
    await make_channel().send(target, message(headers={}))
    first, second = service.accepted
    assert (first.headers["urgency"], first.headers["ttl"]) == ("low", "60")
    # An escalation step's urgency moves the configured one a level, within RFC 8030's.
    for configured, step, sent in (
        ("low", "high", "normal"),
        ("low", "low", "very-low"),
        ("very-low", "low", "very-low"),
        ("high", "high", "high"),
        ("high", "normal", "high"),
    ):
        await make_channel(urgency=configured).send(
            target, message(headers={"X-Broadcaster-Urgency": step})
        )
        assert service.accepted[-1].headers["urgency"] == sent
    assert "topic" not in first.headers and "topic" not in second.headers
    channel = make_channel()
    await channel.aclose()
    with pytest.raises(DeliveryError) as caught:
        await channel.send(target, message())
    assert caught.value.retryable is True


@pytest.mark.parametrize(
    "changes",
    [{"vapid_private_key": None}, {"vapid_private_key_file": "k.pem"}, {"urgency": "urgent"}]
    + [{"vapid_subject": s} for s in ("ops@example.com", "http://example.com", "mailto:nobody")],
)
def test_settings_validation(vapid_pem: str, changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        WebPushSettings(**{"vapid_private_key": vapid_pem, "vapid_subject": SUBJECT, **changes})


async def test_secrets_stay_out_of_errors_and_settings(
    make_channel: ChannelFactory,
    service: PushService,
    subscriber: Subscriber,
    target: Target,
    vapid_pem: str,
    vapid_key: ec.EllipticCurvePrivateKey,
) -> None:
    settings = WebPushSettings(vapid_private_key=vapid_pem, vapid_subject=SUBJECT)
    body = "".join(vapid_pem.splitlines()[1:-1])
    raw = b64url(vapid_key.private_numbers().private_value.to_bytes(32, "big"))
    for text in (str(settings), repr(settings), settings.model_dump_json()):
        assert body[:40] not in text and raw not in text
    errors: list[DeliveryError] = []
    for answer in (Scripted(500), Scripted(401), Scripted(410), Scripted(201, hang=10.0)):
        service.faults.push(answer)
        with pytest.raises(DeliveryError) as caught:
            await make_channel(timeout=0.2).send(target, message())
        errors.append(caught.value)
    auth = base64.urlsafe_b64encode(subscriber.auth).rstrip(b"=").decode()
    for error in errors:
        for text in (str(error), repr(error)):
            assert body[:40] not in text and raw not in text
            assert "/push/" not in text and auth not in text  # the endpoint is a capability
