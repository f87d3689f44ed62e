"""Web Push channel: encrypted notifications to browsers (RFC 8030, RFC 8291, RFC 8292).

The target's address is the JSON of the browser's ``PushSubscription``
(``{"endpoint": ..., "keys": {"p256dh": ..., "auth": ...}}``). The payload is the JSON
``{"title", "body", "url"?, "delivery"}`` for the site's service worker, encrypted with
``aes128gcm`` (RFC 8291, via ``http_ece``) to the subscription's keys and cut to fit the
4,096-byte body every push service must accept. Each request carries a VAPID (RFC 8292)
``Authorization: vapid t=<ES256 JWT>, k=<public key>`` whose ``aud`` is the endpoint's
origin; one JWT per origin is cached until an hour before it expires (12 h lifetime).

Statuses map onto the retry contract: 404 and 410 say the subscription is gone (disable
the contact point); 413 and the configuration errors 400, 401 and 403 are permanent;
408, 429 and 5xx are retryable with ``Retry-After``; so are timeouts and connection errors.
Reasons quote only the push service's JSON error fields (``errno``, ``message``/``reason``/
``error``, cut short), or the type and length of any other body, and are redacted against
the VAPID private key, the VAPID JWT and the endpoint's path, should a proxy echo the request.

A 429 is ``throttled`` for its push service only: one channel reaches several (Google's,
Mozilla's, Apple's, Microsoft's), each with its own limits on an application server (RFC
8030 section 8.4: a push service may answer 429 to an application server over its rate,
with a ``Retry-After``), so a 429 from one says nothing of the others. Its
``throttled_scope`` is the push service's origin (the endpoint's ``scheme://host[:port]``,
by :func:`~channels.http_common.origin_of`, the VAPID audience too), and the dispatcher
pauses only the channel's messages to that origin (:meth:`WebPushChannel.pause_scope`
gives it the origin of each subscription, by the same function, :func:`endpoint_origin`);
the other push services' go on.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import http_ece
import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from py_vapid import Vapid
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from channels.base import (
    ContactPointState,
    DeliveryError,
    Message,
    Receipt,
    Target,
    push_replaces,
    urgency_step,
)
from channels.http_common import (
    HttpAnswer,
    describe_body,
    json_bytes,
    json_object,
    origin_of,
    parse_retry_after,
    pooled_client,
    retryable_status,
    text_field,
)
from channels.push_common import shorten_to_fit
from channels.redact import redact

MAX_BODY = 4096
"""The largest encrypted body every push service must accept (RFC 8030 section 7.2)."""
RECORD_SIZE = 4096
_HEADER = 16 + 4 + 1 + 65  # salt, record size, key id length, key id (our ephemeral key)
MAX_PLAINTEXT = MAX_BODY - _HEADER - 1 - 16  # the padding delimiter and the AEAD tag
JWT_LIFETIME = 12 * 3600
"""Seconds a VAPID JWT is valid; RFC 8292 allows at most 24 hours."""
JWT_RENEW_BEFORE = 3600
DEFAULT_PUSH_HOSTS = (
    "fcm.googleapis.com",
    "android.googleapis.com",
    "push.services.mozilla.com",
    "notify.windows.com",
    "push.apple.com",
)
"""Push services of Chrome/Edge/Android, Firefox, legacy Edge/Windows and Safari."""
_LINK_HEADER = "X-Broadcaster-Link"
_ELLIPSIS = "…"
_B64URL = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")
TOPIC_LIMIT = 32
_TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class WebPushSettings(BaseModel):
    """Settings of the Web Push channel."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["webpush"] = "webpush"
    contact: str = "webpush"
    vapid_private_key: SecretStr | None = None
    """P-256 private key: PEM, or base64url of the raw 32 bytes or of the DER."""
    vapid_private_key_file: Path | None = None
    """A file holding the key in one of those forms (e.g. ``private_key.pem``)."""
    vapid_subject: str
    """Whom push services contact about our traffic: ``mailto:`` address or ``https:`` URL."""
    ttl: int = Field(default=14400, ge=0, le=2_419_200)
    """Seconds a push service keeps a message for an offline browser."""
    urgency: Literal["very-low", "low", "normal", "high"] = "high"
    topic: bool = True
    """Send a ``Topic`` with "no news yet" and the resolution: a newer one replaces one still
    queued for an offline device (first notices and updates are never replaced)."""
    push_hosts: list[str] = Field(default_factory=lambda: list(DEFAULT_PUSH_HOSTS))
    """Endpoint hosts accepted (a name matches itself and its subdomains); ``*`` is any."""
    allow_http: bool = False
    """Accept ``http:`` endpoints (only for a local test push service)."""
    timeout: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=50, ge=1, le=1000)

    @field_validator("vapid_subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        if not (value.startswith("mailto:") and "@" in value) and not value.startswith("https://"):
            raise ValueError("vapid_subject must be a mailto: address or an https: URL")
        return value

    @model_validator(mode="after")
    def _one_key(self) -> WebPushSettings:
        if (self.vapid_private_key is None) == (self.vapid_private_key_file is None):
            raise ValueError("set exactly one of vapid_private_key and vapid_private_key_file")
        return self


@dataclass(frozen=True, slots=True)
class PushSubscription:
    """A browser's push subscription: where to POST and the keys to encrypt to."""

    endpoint: str
    p256dh: bytes
    auth: bytes

    @classmethod
    def parse(cls, address: str) -> PushSubscription:
        """Parse the JSON of a ``PushSubscription``; raise ValueError when it is not one."""
        try:
            document = json.loads(address)
        except ValueError:
            raise ValueError("address is not JSON") from None
        if not isinstance(document, dict):
            raise ValueError("address is not a JSON object")
        endpoint, keys = document.get("endpoint"), document.get("keys")
        if not isinstance(endpoint, str) or not endpoint:
            raise ValueError("no endpoint")
        if not isinstance(keys, dict):
            raise ValueError("no keys")
        p256dh, auth = _b64url(keys.get("p256dh"), "p256dh"), _b64url(keys.get("auth"), "auth")
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)
        except ValueError:
            raise ValueError("p256dh is not a P-256 public key") from None
        if len(auth) != 16:
            raise ValueError("auth is not 16 bytes")
        return cls(endpoint, p256dh, auth)


def endpoint_origin(address: str) -> str | None:
    """The origin of a subscription's push service (:func:`~channels.http_common.origin_of`
    of its ``endpoint``): the scope of that service's throttles. None for an address that
    is not a subscription's JSON with an ``http(s)`` endpoint. Pure, and lighter than
    :meth:`PushSubscription.parse`: the keys are not read."""
    try:
        document = json.loads(address)
    except (ValueError, TypeError, RecursionError):
        return None
    endpoint = document.get("endpoint") if isinstance(document, dict) else None
    return origin_of(endpoint) if isinstance(endpoint, str) and endpoint else None


def load_vapid_key(text: str) -> ec.EllipticCurvePrivateKey:
    """A VAPID private key from PEM or base64url (raw 32 bytes or DER), as py_vapid reads them."""
    text = text.strip()
    try:
        if "-----BEGIN" in text:
            vapid = Vapid.from_pem(text.encode("ascii"))
        else:
            vapid = Vapid.from_string(text)
        key = vapid.private_key
    except Exception:  # py_vapid and cryptography raise many kinds; never echo the key
        raise ValueError("the VAPID private key is not PEM or base64url (raw or DER)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("the VAPID private key must be an EC key on P-256 (prime256v1)")
    return key


def application_server_key(key: ec.EllipticCurvePrivateKey) -> str:
    """The public key as base64url: ``applicationServerKey`` for ``pushManager.subscribe``."""
    raw = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def build_payload(message: Message, limit: int = MAX_PLAINTEXT) -> bytes:
    """The JSON the service worker receives, cut to ``limit`` bytes.

    The body is cut first (with an ellipsis), then the title; a link so long that it would
    crowd out the words is left out. Raises :class:`DeliveryError` if nothing makes it fit.
    """
    fields = {"title": "", "body": ""}
    link = message.headers.get(_LINK_HEADER)
    if link:
        fields["url"] = link
    fields["delivery"] = message.idempotency_key
    if link and len(json_bytes(fields)) > limit // 2:
        del fields["url"]  # an absurd link must not crowd out the words
    fields["title"], fields["body"] = message.subject, message.text
    for key in ("body", "title"):
        if len(json_bytes(fields)) <= limit:
            break
        _shorten(fields, key, limit)
    payload = json_bytes(fields)
    if len(payload) > limit:
        raise DeliveryError("the push payload does not fit in 4096 bytes", retryable=False)
    return payload


def encrypt(plaintext: bytes, subscription: PushSubscription) -> bytes:
    """``plaintext`` encrypted with ``aes128gcm`` to the subscription (RFC 8291)."""
    sender = ec.generate_private_key(ec.SECP256R1())
    body: bytes = http_ece.encrypt(
        plaintext,
        salt=os.urandom(16),
        private_key=sender,
        dh=subscription.p256dh,
        auth_secret=subscription.auth,
        version="aes128gcm",
        rs=RECORD_SIZE,
    )
    return body


class WebPushChannel:
    """Sends one encrypted, VAPID-signed push message per call."""

    def __init__(
        self,
        name: str,
        settings: WebPushSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.contact = settings.contact
        self._settings = settings
        self._clock = clock
        if settings.vapid_private_key is not None:
            text = settings.vapid_private_key.get_secret_value()
        elif settings.vapid_private_key_file is not None:
            try:
                text = settings.vapid_private_key_file.read_text(encoding="ascii")
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(
                    f"webpush channel {name!r}: cannot read the key file: {exc}"
                ) from None
        else:  # pragma: no cover - the settings validator requires one of them
            raise ValueError(f"webpush channel {name!r}: no VAPID private key")
        try:
            self._key = load_vapid_key(text)
        except ValueError as exc:
            raise ValueError(f"webpush channel {name!r}: {exc}") from None
        self._key_text = text.strip()  # redacted from every reason
        self.application_server_key = application_server_key(self._key)
        self._jwts: dict[str, tuple[str, int]] = {}
        self._client = pooled_client(settings.timeout, settings.max_connections, transport)
        self._closed = False

    def authorization(self, origin: str) -> str:
        """The VAPID ``Authorization`` value for an origin, from the cache while it is fresh."""
        now = int(self._clock())
        cached = self._jwts.get(origin)
        if cached is None or cached[1] - now < JWT_RENEW_BEFORE:
            if len(self._jwts) > 64:
                self._jwts = {o: c for o, c in self._jwts.items() if c[1] - now >= JWT_RENEW_BEFORE}
            claims = {"aud": origin, "exp": now + JWT_LIFETIME, "sub": self._settings.vapid_subject}
            cached = (jwt.encode(claims, self._key, algorithm="ES256"), now + JWT_LIFETIME)
            self._jwts[origin] = cached
        return f"vapid t={cached[0]}, k={self.application_server_key}"

    def pause_scope(self, address: str) -> str | None:
        """The scope of a throttle ``address`` is in: its push service's origin
        (:func:`endpoint_origin`), which a 429 of that service names."""
        return endpoint_origin(address)

    async def send(self, target: Target, message: Message) -> Receipt:
        if self._closed:
            raise DeliveryError("webpush channel is closed", retryable=True)
        try:
            subscription = PushSubscription.parse(target.address)
            origin = self._origin(subscription.endpoint)
        except ValueError as exc:
            raise DeliveryError(
                f"not a usable push subscription: {exc}",
                retryable=False,
                contact_point=ContactPointState.DISABLED,
            ) from None
        body = encrypt(build_payload(message), subscription)
        s = self._settings
        headers = {
            "TTL": str(s.ttl),
            "Urgency": _urgency(s.urgency, urgency_step(message)),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "Authorization": self.authorization(origin),
        }
        topic = _topic(message) if s.topic else None
        if topic:
            headers["Topic"] = topic
        path = httpx.URL(subscription.endpoint).raw_path.decode("ascii")  # a capability
        secrets = (self._key_text, self._jwts[origin][0], path)
        try:
            response = await self._client.post(subscription.endpoint, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise DeliveryError(f"push service {origin} timed out", retryable=True) from exc
        except httpx.TransportError as exc:
            reason = f"push service {origin} connection failed: {type(exc).__name__}: {exc}"
            raise DeliveryError(redact(reason, secrets), retryable=True) from exc
        if response.status_code in (200, 201, 202):
            return Receipt(
                provider_message_id=response.headers.get("Location"),
                detail=f"HTTP {response.status_code}",
            )
        raise self._error(origin, response, secrets)

    def _origin(self, endpoint: str) -> str:
        """The endpoint's origin (:func:`~channels.http_common.origin_of`: the JWT audience,
        and the scope of the push service's throttles); ValueError when it is not
        acceptable."""
        try:
            url = httpx.URL(endpoint)
        except httpx.InvalidURL:
            raise ValueError("endpoint is not a URL") from None
        schemes = ("https", "http") if self._settings.allow_http else ("https",)
        if url.scheme not in schemes or not url.host:
            raise ValueError(f"endpoint must be an absolute {'/'.join(schemes)} URL")
        host = url.host.lower()
        hosts = self._settings.push_hosts
        if "*" not in hosts and not any(host == h or host.endswith("." + h) for h in hosts):
            raise ValueError(f"endpoint host {host} is not a known push service")
        origin = origin_of(endpoint)
        if origin is None:  # cannot happen: an http(s) URL with a host
            raise ValueError("endpoint has no origin")
        return origin

    def _error(self, origin: str, response: HttpAnswer, secrets: tuple[str, ...]) -> DeliveryError:
        status = response.status_code
        said = _service_error(response, secrets)
        reason = redact(f"push service {origin} answered {status}{said}", secrets)
        if status in (404, 410):
            return DeliveryError(
                f"{reason} (subscription gone)",
                retryable=False,
                contact_point=ContactPointState.DISABLED,
            )
        if retryable_status(status):
            wait = parse_retry_after(response.headers.get("Retry-After"), now=self._clock())
            if status == 429:  # this push service's limit on us: its messages wait
                return DeliveryError(
                    reason, retryable=True, retry_after=wait, throttled=True, throttled_scope=origin
                )
            return DeliveryError(reason, retryable=True, retry_after=wait)
        if status in (401, 403):
            # Sign afresh next time: a rejected token must not be reused from the cache.
            self._jwts.pop(origin, None)
            return DeliveryError(f"{reason} (check the VAPID key and subject)", retryable=False)
        if status == 413:
            return DeliveryError(f"{reason} (payload too large)", retryable=False)
        return DeliveryError(reason, retryable=False)

    async def aclose(self) -> None:
        self._closed = True
        await self._client.aclose()


def _b64url(value: Any, name: str) -> bytes:
    if not isinstance(value, str) or not _B64URL.match(value.replace("+", "-").replace("/", "_")):
        raise ValueError(f"{name} is not base64url")
    text = value.rstrip("=").replace("+", "-").replace("/", "_")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError(f"{name} is not base64url") from None


def _shorten(fields: dict[str, str], key: str, limit: int) -> None:
    """Cut ``fields[key]`` to the longest whole sentences, else words (with an ellipsis),
    that keep the payload within ``limit`` bytes (:func:`~channels.push_common.
    shorten_to_fit`), or empty it."""

    def fits(value: str) -> bool:
        return len(json_bytes({**fields, key: value})) <= limit

    fields[key] = shorten_to_fit(fields[key], fits) or ""


def _topic(message: Message) -> str | None:
    """The Topic (RFC 8030) under which a message still queued for an offline device is
    replaced by a newer one: only "no news yet" and the resolution take it
    (:func:`~channels.base.push_replaces`), as on FCM and APNs; a first notice or an
    update, which may hold a workaround, is never replaced by a "no news yet"."""
    topic = push_replaces(message, TOPIC_LIMIT)
    return topic if topic and _TOPIC.match(topic) else None


def _service_error(response: HttpAnswer, secrets: tuple[str, ...]) -> str:
    """``: errno 106: <message>`` from a push service's JSON error (autopush ``errno`` and
    ``message``, Apple's ``reason``), else ``: <type> body, <n> bytes, not shown``."""
    document = json_object(response.content)
    if document is None:
        return f": {describe_body(response)}"
    errno = text_field(document, "errno", limit=16, secrets=secrets)
    said = text_field(document, "message", "reason", "error", secrets=secrets)
    parts = (f"errno {errno}" if errno else "", said)
    said = ": ".join(part for part in parts if part)
    return f": {said}" if said else ""


_URGENCIES = ("very-low", "low", "normal", "high")
"""RFC 8030's urgencies, lowest first."""


def _urgency(configured: str, step: int) -> str:
    """The ``Urgency`` header: the configured one, a level up or down for an escalation step
    of ``high`` or ``low`` urgency (:func:`~channels.base.urgency_step`), within RFC 8030's."""
    level = _URGENCIES.index(configured) + step
    return _URGENCIES[min(max(level, 0), len(_URGENCIES) - 1)]
