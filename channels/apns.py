"""Push over Apple Push Notification service: HTTP/2, token (ES256 JWT) auth, APNs' reasons.

How one send goes:

1. The provider token (a JWT signed ES256 with the team's .p8 key; header ``kid``, claims
   ``iss`` = team id and ``iat``) is reused until it is :data:`TOKEN_REFRESH` seconds old.
   APNs rejects tokens older than an hour and refreshes more often than every 20 minutes
   (TooManyProviderTokenUpdates), so 50 minutes sits inside both limits.
2. ``POST {base_url}/3/device/{token}`` over one multiplexed HTTP/2 connection
   (``httpx.AsyncClient(http2=True)``; APNs speaks nothing else) with the ``apns-*`` headers
   and ``{"aps": {"alert": {...}, "sound": ..., "thread-id": ...}, "delivery": <delivery
   id>, "url": <incident page>}``. An incident's notifications share the ``thread-id``
   (one group on the device); its "no news yet" and its resolution share an
   ``apns-collapse-id``, each replacing the last (:func:`~channels.base.push_replaces`).
3. ``200`` returns the ``apns-id`` response header as the receipt. ``403
   ExpiredProviderToken`` signs a fresh token and retries once, inside this send. Every other
   failure maps onto :class:`~channels.base.DeliveryError` by :func:`apns_error`.

APNs' 429 ``TooManyRequests`` is about one device token ("too many requests were made
consecutively to the same device token"): only that message waits (its Retry-After), the
channel goes on, and the error is not ``throttled``. A 429 ``TooManyProviderTokenUpdates``
is about our provider token, shared by every send of the channel: it is ``throttled``, and
the dispatcher pauses the channel.

``apns-id`` is a UUID derived (uuid5) from the delivery id, so every retry of one delivery
carries the same id. APNs does not de-duplicate on it, but it is what APNs echoes back and
what Apple's delivery logs and Push Notification Console search by: one delivery, one id.
"""

from __future__ import annotations

import re
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, EllipticCurvePrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from channels.base import (
    LINK_HEADER,
    ContactPointState,
    DeliveryError,
    Message,
    Receipt,
    Target,
    push_replaces,
    push_thread,
    urgency_step,
)
from channels.http_common import json_bytes, json_object, parse_retry_after
from channels.push_common import BODY_LIMIT, shorten

PRODUCTION_URL = "https://api.push.apple.com"
SANDBOX_URL = "https://api.sandbox.push.apple.com"
TOKEN_REFRESH = 50 * 60.0
"""Seconds a provider token is reused (APNs: at most 60 minutes, at least 20)."""
PAYLOAD_LIMIT = 4096
"""Bytes APNs accepts for an alert notification's JSON payload."""
TITLE_LIMIT = 200
_LINK_LIMIT = PAYLOAD_LIMIT // 4
"""The longest incident link sent: an absurd one must not crowd out the words."""
APNS_ID_NAMESPACE = uuid.UUID("6f1c3d2e-8a4b-5c6d-9e0f-a1b2c3d4e5f6")
"""uuid5 namespace of ``apns-id``: fixed forever, or retries would change their ids."""
_DEVICE_TOKEN = re.compile(r"[0-9a-fA-F]{8,400}")
_TOKEN_REASONS = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic"})
"""Reasons that blame the token, or the channel's own ``topic`` or ``environment``: APNs
answers every token so when the topic names another app or the environment does not match
the builds. They disable a token only once this channel has had a token accepted (its topic
and environment are right), or one wrong setting would disable every device."""


class ApnsSettings(BaseModel):
    """Settings of the APNs push channel (token-based authentication)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["apns"] = "apns"
    contact: str = "apns"
    team_id: str = Field(min_length=1)
    key_id: str = Field(min_length=1)
    private_key_file: Path | None = None
    """The ``AuthKey_<key id>.p8`` file downloaded from the Apple developer account."""
    private_key: SecretStr | None = None
    """The same PEM text (from a secret); exclusive with the file."""
    topic: str = Field(min_length=1)
    """The app's bundle id."""
    environment: Literal["production", "sandbox"] = "production"
    base_url: str | None = Field(default=None, pattern=r"^https?://")
    """Overrides the environment's URL (a local fake, a proxy)."""
    ca_file: Path | None = None
    """Trust this CA bundle instead of the system's (tests)."""
    push_type: Literal["alert"] = "alert"
    priority: Literal[5, 10] = 10
    expiration: int = Field(default=3600, ge=0)
    """Seconds APNs keeps trying an offline device; 0 = now or never."""
    sound: str | None = "default"
    timeout: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _one_key(self) -> ApnsSettings:
        if (self.private_key_file is None) == (self.private_key is None):
            raise ValueError("set exactly one of private_key_file and private_key")
        return self

    @property
    def url(self) -> str:
        """The base URL requests go to."""
        if self.base_url:
            return self.base_url.rstrip("/")
        return PRODUCTION_URL if self.environment == "production" else SANDBOX_URL


def load_signing_key(settings: ApnsSettings) -> EllipticCurvePrivateKey:
    """The P-256 key of the .p8 file or PEM; errors name the problem, never the key."""
    if settings.private_key_file is not None:
        source = str(settings.private_key_file)
        try:
            pem = settings.private_key_file.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read private key file {source}: {exc}") from None
    else:
        source = "private_key"
        pem = settings.private_key.get_secret_value().encode() if settings.private_key else b""
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{source} is not an unencrypted PEM private key") from None
    if not isinstance(key, EllipticCurvePrivateKey) or not isinstance(key.curve, SECP256R1):
        raise ValueError(f"{source} is not an ES256 (P-256) key")
    return key


def apns_id_for(delivery_id: str) -> str:
    """The ``apns-id`` of a delivery: stable across retries, random without a delivery id."""
    if not delivery_id:
        return str(uuid.uuid4())
    return str(uuid.uuid5(APNS_ID_NAMESPACE, delivery_id))


@dataclass(frozen=True)
class _ProviderToken:
    value: str = field(repr=False)
    issued_at: float


class ApnsChannel:
    """Sends one APNs alert per call over a shared HTTP/2 connection.

    ``now`` is the clock the provider token and ``apns-expiration`` read (tests inject one);
    ``transport`` replaces the HTTP/2 transport (rarely needed).
    """

    def __init__(
        self,
        name: str,
        settings: ApnsSettings,
        *,
        now: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.contact = settings.contact
        self._settings = settings
        try:
            self._key = load_signing_key(settings)
        except ValueError as exc:
            raise ValueError(f"apns channel {name!r}: {exc}") from None
        self._now = now
        self._base = settings.url
        self._token: _ProviderToken | None = None
        verify = ssl.create_default_context(
            cafile=str(settings.ca_file) if settings.ca_file else None
        )
        self._client = httpx.AsyncClient(
            http2=True, verify=verify, timeout=settings.timeout, transport=transport
        )
        self._closed = False
        self._accepted = False
        """True once APNs accepted a notification: ``topic`` and ``environment`` are right."""

    def __repr__(self) -> str:
        return f"ApnsChannel(name={self.name!r}, topic={self._settings.topic!r})"

    def payload(self, message: Message) -> bytes:
        """The JSON payload, its body shortened until it fits APNs' 4 KB. An incident's
        notifications share a ``thread-id`` (iOS shows them as one group) and carry the
        incident page (``url``) for the app to open."""
        title = shorten(message.subject, TITLE_LIMIT)
        thread = push_thread(message)
        link = message.headers.get(LINK_HEADER, "")
        limit = BODY_LIMIT
        while True:
            aps: dict[str, Any] = {"alert": {"title": title, "body": shorten(message.text, limit)}}
            if self._settings.sound:
                aps["sound"] = self._settings.sound
            if thread:
                aps["thread-id"] = thread
            document: dict[str, Any] = {"aps": aps, "delivery": message.idempotency_key}
            if link and len(link) <= _LINK_LIMIT:
                document["url"] = link
            encoded = json_bytes(document)
            if len(encoded) <= PAYLOAD_LIMIT:
                return encoded
            if limit <= 16:
                raise DeliveryError("APNs payload too large even when shortened", retryable=False)
            limit = limit * 3 // 4

    def headers(
        self, provider_token: str, apns_id: str, urgency: int = 0, collapse_id: str | None = None
    ) -> dict[str, str]:
        """The request headers (public so tests can inspect them). A step of ``low``
        urgency (``urgency`` -1, :func:`~channels.base.urgency_step`) is sent at priority 5,
        which APNs delivers as the device's power allows; otherwise ``priority``. With
        ``collapse_id`` (:func:`~channels.base.push_replaces`), the notification replaces
        the one shown under the same id."""
        s = self._settings
        expiration = int(self._now()) + s.expiration if s.expiration else 0
        headers = {
            "authorization": f"bearer {provider_token}",
            "apns-topic": s.topic,
            "apns-push-type": s.push_type,
            "apns-priority": "5" if urgency < 0 else str(s.priority),
            "apns-expiration": str(expiration),
            "apns-id": apns_id,
            "content-type": "application/json",
        }
        if collapse_id:
            headers["apns-collapse-id"] = collapse_id
        return headers

    async def send(self, target: Target, message: Message) -> Receipt:
        if self._closed:
            raise DeliveryError("apns channel is closed", retryable=True)
        device = target.address.strip()
        if not _DEVICE_TOKEN.fullmatch(device):
            raise DeliveryError(
                "not an APNs device token (hexadecimal expected)",
                retryable=False,
                contact_point=ContactPointState.DISABLED,
            )
        payload = self.payload(message)
        apns_id = apns_id_for(message.idempotency_key)
        provider = self._provider_token()
        urgency = urgency_step(message)
        collapse = push_replaces(message)
        response = await self._post(
            device, payload, self.headers(provider, apns_id, urgency, collapse)
        )
        if response.status_code == 403 and _reason(response) == "ExpiredProviderToken":
            provider = self._provider_token(stale=provider)
            response = await self._post(
                device, payload, self.headers(provider, apns_id, urgency, collapse)
            )
        if response.status_code == 200:
            self._accepted = True
            return Receipt(provider_message_id=response.headers.get("apns-id") or apns_id)
        retry_after = parse_retry_after(response.headers.get("retry-after"), now=self._now())
        raise apns_error(
            response.status_code, _reason(response), retry_after, proven=self._accepted
        )

    def _provider_token(self, *, stale: str | None = None) -> str:
        """The current provider token; a new one when it is 50 minutes old or ``stale``."""
        now = self._now()
        token = self._token
        if token is None or token.value == stale or not 0 <= now - token.issued_at < TOKEN_REFRESH:
            value = jwt.encode(
                {"iss": self._settings.team_id, "iat": int(now)},
                self._key,
                algorithm="ES256",
                headers={"kid": self._settings.key_id},
            )
            token = self._token = _ProviderToken(value=value, issued_at=now)
        return token.value

    async def _post(self, device: str, payload: bytes, headers: dict[str, str]) -> httpx.Response:
        try:
            return await self._client.post(
                f"{self._base}/3/device/{device}", content=payload, headers=headers
            )
        except httpx.TimeoutException as exc:
            raise DeliveryError(
                f"APNs request timed out ({type(exc).__name__})", retryable=True
            ) from exc
        except httpx.TransportError as exc:
            detail = str(exc) or type(exc).__name__
            raise DeliveryError(f"APNs connection failed: {detail}", retryable=True) from exc

    async def aclose(self) -> None:
        self._closed = True
        await self._client.aclose()


def _reason(response: httpx.Response) -> str:
    reason = (json_object(response.content) or {}).get("reason", "")
    return reason if isinstance(reason, str) else ""


def apns_error(
    status: int, reason: str, retry_after: float | None = None, *, proven: bool = True
) -> DeliveryError:
    """Map one APNs error response onto the retry contract (see docs/channels/push-apns.md).
    ``proven``: the channel has had a notification accepted, so a token refused as bad or
    of another topic is the token's fault, not the channel's settings'."""
    text = f"APNs {status} {reason[:100] or 'no reason'}"
    if status == 410 or (reason in _TOKEN_REASONS and proven):
        return DeliveryError(text, retryable=False, contact_point=ContactPointState.DISABLED)
    if reason in _TOKEN_REASONS:
        return DeliveryError(
            text + " (token kept: no notification accepted yet; check topic and environment)",
            retryable=False,
        )
    if status in (408, 429) or status >= 500:
        # TooManyRequests is one device token's rate; the provider token is everyone's.
        throttled = status == 429 and reason == "TooManyProviderTokenUpdates"
        return DeliveryError(text, retryable=True, retry_after=retry_after, throttled=throttled)
    if status == 403:
        # InvalidProviderToken, a second ExpiredProviderToken (our clock is off), Forbidden:
        # the key, team or topic is wrong; no retry helps until an admin fixes it.
        return DeliveryError(text + " (configuration)", retryable=False)
    return DeliveryError(text, retryable=False)
