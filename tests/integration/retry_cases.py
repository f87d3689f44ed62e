"""Rigs for the shared retry table: each HTTP channel wired to its fake provider.

A :class:`Rig` knows how to build its channel (with a chosen timeout, against the fake or
against another base URL such as a :class:`~tests.fakes.control.ResettingServer`), whom to
send to, which :class:`~tests.fakes.control.FaultPlan` scripts the fake's next answers, and
which secrets must never show in an error. Each ``*_rig`` context manager serves its fake
for as long as it is open; the table (tests/integration/test_retry_table.py) opens each one
once per module.

:func:`echo_app` is the proxy in trouble that answers every request with the request itself,
credentials included: the table's ``500-echo`` row and each channel's own secret test use it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from channels.apns import ApnsChannel, ApnsSettings
from channels.base import Channel, Target
from channels.fcm import FcmChannel, FcmSettings
from channels.ntfy import NtfyChannel, NtfySettings
from channels.twilio_sms import TwilioSettings, TwilioSmsChannel
from channels.webhook import WebhookChannel, WebhookSettings
from channels.webpush import WebPushChannel, WebPushSettings, application_server_key
from tests.fakes.apns import FakeApns, serve_http2
from tests.fakes.control import FaultPlan
from tests.fakes.fcm import FakeFcm
from tests.fakes.http import serve
from tests.fakes.mobile_push import make_p8_key, make_service_account
from tests.fakes.ntfy import NtfyServer
from tests.fakes.twilio import FakeTwilio, new_sid
from tests.fakes.webhook import WebhookReceiver
from tests.fakes.webpush import PushService, Subscriber

ASGIApp = Callable[
    [
        dict[str, Any],
        Callable[[], Awaitable[dict[str, Any]]],
        Callable[[dict[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]
ECHO_MARKER = "echoed by a proxy:"
"""How an :func:`echo_app` answer starts; never part of a reason built from a raw body."""
ECHO_FIELDS = ("error", "message", "reason", "detail", "title", "error_description")
"""The JSON error fields of the providers (ntfy, Twilio, autopush, Apple, RFC 9457, OAuth2)
that the JSON echo fills with the request."""


def echo_app(status: int = 500, *, as_json: bool = False) -> ASGIApp:
    """A proxy that answers every request with ``status`` and the request itself: method,
    path and query, the credential headers first (Authorization, signatures), the other headers,
    then the body. As ``text/plain``, or with ``as_json`` inside every common error field
    of a JSON document (so that even reasons quoting structured fields see the secrets)."""

    async def app(
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            event = await receive()
            body += event.get("body", b"")
            more = bool(event.get("more_body"))
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        headers.sort(key=lambda h: not (h[0] == "authorization" or "signature" in h[0]))
        query = scope.get("query_string", b"").decode("latin-1")
        target = scope["path"] + (f"?{query}" if query else "")
        lines = [f"{ECHO_MARKER} {scope['method']} {target}"]
        lines += [f"{name}: {value}" for name, value in headers]
        echo = "\n".join(lines) + "\n\n" + body.decode("utf-8", "replace")
        if as_json:
            payload = json.dumps({"code": status, **dict.fromkeys(ECHO_FIELDS, echo)}).encode()
            content_type = b"application/json"
        else:
            payload, content_type = echo.encode(), b"text/plain; charset=utf-8"
        start = {"type": "http.response.start", "status": status}
        await send(start | {"headers": [(b"content-type", content_type)]})
        await send({"type": "http.response.body", "body": payload})

    return app


MakeChannel = Callable[[float, str | None], Channel]
"""``(timeout, via)``: a channel with that timeout, talking to ``via`` instead of the fake
when it is given (a base URL)."""


@dataclass(frozen=True)
class Rig:
    """One channel and its fake, ready for one scripted answer at a time."""

    plan: FaultPlan
    """The fake's plan for the requests that carry the message (not token exchanges)."""
    make: MakeChannel
    target: Callable[[str | None], Target]
    """Whom to send to; ``via`` matters only where the address holds the URL (Web Push)."""
    secrets: tuple[str, ...] = field(default=(), repr=False)
    """Values that no error reason or repr may contain."""


@contextmanager
def twilio_rig() -> Iterator[Rig]:
    fake = FakeTwilio()
    service = new_sid("MG")
    with serve(fake.app) as url:

        def make(timeout: float, via: str | None) -> Channel:
            settings = TwilioSettings(
                account_sid=fake.account_sid,
                auth_token=fake.auth_token,
                messaging_service_sid=service,
                base_url=via or url,
                timeout=timeout,
            )
            return TwilioSmsChannel("sms", settings)

        yield Rig(fake.plan, make, lambda _via: Target("+15005550006"), (fake.auth_token,))


@contextmanager
def fcm_rig(directory: Path) -> Iterator[Rig]:
    account = make_service_account("p")
    fake = FakeFcm(
        account.public_key,
        client_email=account.client_email,
        private_key_id=account.private_key_id,
    )
    with serve(fake.app) as url:
        key_file = account.write(directory / "service-account.json", f"{url}/token")

        def make(timeout: float, via: str | None) -> Channel:
            settings = FcmSettings(
                service_account_file=key_file, base_url=via or url, timeout=timeout
            )
            return FcmChannel("fcm", settings)

        token = Target("dXNlcjE6APA91bHfake-registration-token_1")
        # The token exchange always goes to the fake: ``via`` only replaces the FCM API.
        yield Rig(fake.faults, make, lambda _via: token, (account.private_pem,))


@contextmanager
def apns_rig(directory: Path) -> Iterator[Rig]:
    key = make_p8_key()
    topic = "com.example.broadcaster"
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile, cafile = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
    for index, pem in enumerate(cert.cert_chain_pems):
        pem.write_to_path(str(certfile), append=index > 0)
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    key_file = key.write(directory)
    fake = FakeApns(key.public_key, key_id=key.key_id, team_id=key.team_id, topic=topic)
    with serve_http2(fake.app, str(certfile), str(keyfile)) as url:

        def make(timeout: float, via: str | None) -> Channel:
            settings = ApnsSettings(
                team_id=key.team_id,
                key_id=key.key_id,
                private_key_file=key_file,
                topic=topic,
                # APNs is TLS only: a reset arrives during the TLS handshake.
                base_url=via.replace("http://", "https://") if via else url,
                ca_file=cafile,
                timeout=timeout,
            )
            return ApnsChannel("apns", settings)

        yield Rig(fake.faults, make, lambda _via: Target("a" * 64), (key.pem,))


@contextmanager
def webpush_rig() -> Iterator[Rig]:
    vapid = ec.generate_private_key(ec.SECP256R1())
    pem = vapid.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    service = PushService()
    with serve(service.app) as url:
        subscriber = service.subscribe(url, application_server_key(vapid))

        def make(timeout: float, via: str | None) -> Channel:
            settings = WebPushSettings(
                vapid_private_key=pem,
                vapid_subject="mailto:ops@example.com",
                push_hosts=["127.0.0.1"],
                allow_http=True,
                timeout=timeout,
            )
            return WebPushChannel("webpush", settings)

        def target(via: str | None) -> Target:
            if via is None:
                return Target(subscriber.address)
            # The subscription's endpoint is where the request goes.
            return Target(Subscriber(f"{via}/push/gone-elsewhere").address)

        yield Rig(service.faults, make, target, (pem,))


@contextmanager
def ntfy_rig() -> Iterator[Rig]:
    token = "tk_retrytable0123456789abcdefgh"
    server = NtfyServer(tokens=[token], anonymous_write=False)
    with serve(server.app) as url:

        def make(timeout: float, via: str | None) -> Channel:
            settings = NtfySettings(
                base_url=via or url,
                token=token,
                timeout=timeout,
            )
            return NtfyChannel("ntfy", settings)

        yield Rig(server.faults, make, lambda _via: Target("retry-table"), (token,))


@contextmanager
def webhook_rig() -> Iterator[Rig]:
    secret = "whsec-retry-table-0123456789abcdef"
    receiver = WebhookReceiver(secret)
    with serve(receiver.app) as url:

        def make(timeout: float, via: str | None) -> Channel:
            settings = WebhookSettings(
                url=f"{via or url}/hooks/broadcaster",
                secret=secret,
                timeout=timeout,
            )
            return WebhookChannel("webhook", settings)

        yield Rig(
            receiver.faults, make, lambda _via: Target("acct-1", customer_id="c-1"), (secret,)
        )
