"""A proxy that echoes the request: no channel lets a credential into a delivery reason.

Each HTTP channel sends to :func:`~tests.integration.retry_cases.echo_app`, which answers
500 with the request itself (Authorization header and signatures first, then the other
headers and the body), as ``text/plain`` or inside every common field of a JSON error
document. A text body is never quoted, only described (type and length); the JSON fields a
reason may quote are redacted against the channel's own secrets (channels/redact.py).
The retry table's ``500-echo`` rows check the same for every channel generically; these
tests name each channel's own credentials.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from channels.base import Channel, DeliveryError, Message, Target
from channels.fcm import FcmChannel, FcmSettings
from channels.ntfy import NtfyChannel, NtfySettings
from channels.redact import REDACTED
from channels.twilio_sms import TwilioSettings, TwilioSmsChannel
from channels.webhook import WebhookChannel, WebhookSettings
from channels.webpush import WebPushChannel, WebPushSettings
from tests.fakes.control import Scripted
from tests.fakes.fcm import FakeFcm, error_body
from tests.fakes.http import serve
from tests.fakes.mobile_push import make_service_account
from tests.fakes.twilio import new_sid
from tests.fakes.webpush import Subscriber
from tests.integration.retry_cases import ECHO_MARKER, echo_app

MESSAGE = Message(subject="Line 4 stopped", text="Trains are stopped.", idempotency_key="d-1")
FORMS = pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])


@pytest.fixture(scope="module")
def echo_urls() -> Iterator[dict[bool, str]]:
    """The proxy, answering as text (``False``) and inside JSON error fields (``True``)."""
    with serve(echo_app()) as text, serve(echo_app(as_json=True)) as document:
        yield {False: text, True: document}


async def _failure(channel: Channel, target: Target) -> DeliveryError:
    try:
        with pytest.raises(DeliveryError) as caught:
            await channel.send(target, MESSAGE)
    finally:
        await channel.aclose()
    assert (caught.value.retryable, caught.value.contact_point) == (True, None)
    return caught.value


def _shown(error: DeliveryError) -> list[str]:
    return [str(error), repr(error), error.reason]


def _described(error: DeliveryError, as_json: bool, credential: str) -> None:
    """Text: only described. JSON: quoted, with ``credential`` (how the echo shows our
    credential header) followed by the redaction marker."""
    if as_json:
        assert f"{credential}{REDACTED}" in error.reason, error.reason
    else:
        assert ECHO_MARKER not in error.reason
        assert "text/plain body, " in error.reason and "bytes, not shown" in error.reason


@FORMS
async def test_twilio(echo_urls: dict[bool, str], as_json: bool) -> None:
    sid, token = new_sid("AC"), "0123456789abcdef0123456789abcdef"
    settings = TwilioSettings(
        account_sid=sid,
        auth_token=token,
        messaging_service_sid=new_sid("MG"),
        base_url=echo_urls[as_json],
    )
    error = await _failure(TwilioSmsChannel("sms", settings), Target("+15005550006"))
    basic = base64.b64encode(f"{sid}:{token}".encode()).decode()
    for text in _shown(error):
        assert token not in text and basic not in text
    _described(error, as_json, "authorization: Basic ")


@FORMS
@pytest.mark.parametrize("auth", ["token", "basic"])
async def test_ntfy(echo_urls: dict[bool, str], as_json: bool, auth: str) -> None:
    token, password = "tk_echo0123456789abcdefghijklmn", "correct-horse-battery"
    credentials: dict[str, Any] = (
        {"token": token} if auth == "token" else {"username": "ops", "password": password}
    )
    channel = NtfyChannel("ntfy", NtfySettings(base_url=echo_urls[as_json], **credentials))
    error = await _failure(channel, Target("ops-alerts"))
    basic = base64.b64encode(f"ops:{password}".encode()).decode()
    for text in _shown(error):
        assert token not in text and password not in text and basic not in text
    _described(error, as_json, f"authorization: {'Bearer' if auth == 'token' else 'Basic'} ")


@FORMS
async def test_webhook(echo_urls: dict[bool, str], as_json: bool) -> None:
    """The echo holds the signature header and the URL's path and query (its token)."""
    secret = "whsec-echo-0123456789abcdef"
    url = f"{echo_urls[as_json]}/hooks/acct?token=url-token-0123"
    channel = WebhookChannel("hook", WebhookSettings(url=url, secret=secret))
    error = await _failure(channel, Target("acct-1"))
    for text in _shown(error):
        assert "v1=" not in text and "url-token-0123" not in text and secret not in text
    _described(error, as_json, "x-broadcaster-signature: ")


@FORMS
async def test_webpush(echo_urls: dict[bool, str], as_json: bool) -> None:
    """The echo holds ``Authorization: vapid t=<JWT>`` and the endpoint's capability path."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    settings = WebPushSettings(
        vapid_private_key=pem,
        vapid_subject="mailto:ops@example.com",
        push_hosts=["127.0.0.1"],
        allow_http=True,
    )
    subscriber = Subscriber(f"{echo_urls[as_json]}/push/a-capability-id")
    error = await _failure(WebPushChannel("wp", settings), Target(subscriber.address))
    for text in _shown(error):
        assert "eyJ" not in text  # every JWT starts so
        assert "a-capability-id" not in text and pem.splitlines()[1] not in text
    _described(error, as_json, "authorization: vapid t=")


@pytest.fixture(scope="module")
def fcm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeFcm, str, Path]]:
    """A fake FCM and token endpoint, and a key file whose token_uri is that fake's."""
    account = make_service_account("p")
    fake = FakeFcm(account.public_key, client_email=account.client_email)
    with serve(fake.app) as url:
        path = tmp_path_factory.mktemp("fcm") / "service-account.json"
        yield fake, url, account.write(path, f"{url}/token")


@FORMS
async def test_fcm_send(
    echo_urls: dict[bool, str], fcm: tuple[FakeFcm, str, Path], as_json: bool
) -> None:
    """The echo holds ``Authorization: Bearer <access token>``; neither body is Google's
    error document, so both are only described."""
    fake, _url, key_file = fcm
    settings = FcmSettings(service_account_file=key_file, base_url=echo_urls[as_json])
    error = await _failure(FcmChannel("fcm", settings), Target("a-registration-token"))
    for text in _shown(error):
        assert all(access not in text for access in fake.issued)
        assert ECHO_MARKER not in text
    kind = "application/json" if as_json else "text/plain"
    assert error.reason.startswith(f"FCM 500 without a Google error ({kind} body, ")


@FORMS
async def test_fcm_token_exchange(
    echo_urls: dict[bool, str], fcm: tuple[FakeFcm, str, Path], as_json: bool
) -> None:
    """The token request's body holds the signed JWT assertion, a credential for an hour."""
    _fake, url, key_file = fcm
    token_uri = f"{echo_urls[as_json]}/token"
    settings = FcmSettings(service_account_file=key_file, base_url=url, token_uri=token_uri)
    error = await _failure(FcmChannel("fcm", settings), Target("a-registration-token"))
    for text in _shown(error):
        assert "eyJ" not in text
    if as_json:  # OAuth2's error and error_description, cut short and redacted
        assert error.reason.startswith(f"OAuth2 token exchange refused: HTTP 500 {ECHO_MARKER}")
    else:
        assert error.reason.startswith("OAuth2 token exchange refused: HTTP 500 (text/plain body")


async def test_fcm_google_error_quoting_the_access_token(fcm: tuple[FakeFcm, str, Path]) -> None:
    """Google's own error message is quoted, but never with our access token in it."""
    fake, url, key_file = fcm
    channel = FcmChannel("fcm", FcmSettings(service_account_file=key_file, base_url=url))
    await channel.send(Target("a-registration-token"), MESSAGE)
    access = fake.issued[-1]
    said = f"Request had authorization: Bearer {access}"
    fake.faults.push(Scripted(500, body=error_body(500, message=said)))
    error = await _failure(channel, Target("a-registration-token"))
    assert access not in error.reason
    assert error.reason == f"FCM 500 INTERNAL: Request had authorization: Bearer {REDACTED}"
