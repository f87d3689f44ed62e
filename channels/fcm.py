"""Push over Firebase Cloud Messaging, HTTP v1: service-account OAuth2 tokens and FCM's errors.

How one send goes:

1. An OAuth2 access token is taken from the cache, or obtained by signing a JWT (RS256,
   the service account's private key; ``iss`` = client email, ``scope`` = firebase.messaging,
   ``aud`` = token URI) and exchanging it at the token URI (``jwt-bearer`` grant). It is kept
   until :data:`REFRESH_MARGIN` seconds before it expires; one exchange (and its failure)
   is shared by every concurrent send.
2. ``POST {base_url}/v1/projects/{project}/messages:send`` with a notification (subject as
   title, text shortened at a sentence boundary as body, both cut further until the
   payload fits FCM's 4096 bytes), the delivery id in ``data`` (FCM has no idempotency key,
   so the app de-duplicates on ``data.delivery``) with the incident page (``url``) and
   thread, and a block per platform, since a token may be an Android app's, an iOS app's or
   a web page's: each gets the lifetime (the ``ttl`` setting, an hour by default, as
   ``android.ttl``, ``apns-expiration`` and Web Push's ``TTL``: FCM's own defaults keep a
   message four weeks, or 30 days for iOS, for a device that is off, and a disruption
   notice is stale long before) and the priority (high; under a step of low urgency
   Android's normal, APNs' 5, Web Push's ``normal``), and the incident's grouping: APNs'
   ``thread-id``, and for its "no news yet" and resolution one Android ``tag``,
   ``apns-collapse-id`` and Web Push ``Topic`` and tag, so that each replaces the last
   (:func:`~channels.base.push_replaces`). A 401 (our access token was refused) fetches a
   new token and retries once.
3. ``200`` returns the message name as the receipt; anything else maps onto
   :class:`~channels.base.DeliveryError` by :func:`~channels.fcm_errors.fcm_error`, which
   says per FCM error code whether a retry can help and whether the registration token is dead.

Configuration problems (a refused service account, SENDER_ID_MISMATCH, THIRD_PARTY_AUTH_ERROR,
PERMISSION_DENIED, 404 NOT_FOUND without ``UNREGISTERED``: a wrong project_id) are permanent
and never condemn the token: the dispatcher fails over instead of retrying a send that cannot
work until an admin acts. Only FCM's ``UNREGISTERED`` (or an ``INVALID_ARGUMENT`` naming
``message.token``) disables it. Reasons quote Google's error fields, never a raw body, and
are redacted against the access token and the signed assertion.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
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
from channels.fcm_errors import fcm_error, parse_google_error, token_error
from channels.http_common import describe_body, json_bytes, json_object, parse_retry_after
from channels.push_common import BODY_LIMIT, shorten
from channels.redact import redact

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL, not a secret
ASSERTION_LIFETIME = 3600
"""Seconds the signed JWT assertion is valid; Google accepts at most one hour."""
REFRESH_MARGIN = 300.0
"""An access token is replaced this many seconds before it expires (at most half its life)."""
PAYLOAD_LIMIT = 4096
"""Bytes FCM accepts for a message's payload; counted here as the JSON of its notification
and data, which is more than FCM counts."""
TITLE_LIMIT = 200
"""Characters of notification title, as for APNs."""
MAX_TTL = 28 * 24 * 3600
"""FCM keeps a message at most four weeks (its default when no ``ttl`` is given)."""


class FcmSettings(BaseModel):
    """Settings of the FCM HTTP v1 push channel."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["fcm"] = "fcm"
    contact: str = "fcm"
    project_id: str | None = None
    """The Firebase project; defaults to the service account's ``project_id``."""
    service_account_file: Path | None = None
    service_account_json: SecretStr | None = None
    """The service-account key JSON itself (from a secret); exclusive with the file."""
    token_uri: str | None = None
    """OAuth2 token endpoint; defaults to the service account's ``token_uri``."""
    base_url: str = Field(default="https://fcm.googleapis.com", pattern=r"^https?://")
    ttl: int = Field(default=3600, ge=0, le=MAX_TTL)
    """Seconds FCM keeps a message for a device that is offline, whatever its platform
    (``android.ttl``, APNs' ``apns-expiration``, Web Push's ``TTL``); 0 = now or never.
    Without it FCM keeps one four weeks: a notice long out of date."""
    timeout: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _one_credential(self) -> FcmSettings:
        if (self.service_account_file is None) == (self.service_account_json is None):
            raise ValueError("set exactly one of service_account_file and service_account_json")
        return self


@dataclass(frozen=True)
class ServiceAccount:
    """The parts of a service-account key the channel uses; the key never shows in repr."""

    client_email: str
    private_key: RSAPrivateKey = field(repr=False)
    private_key_id: str
    token_uri: str
    project_id: str


def load_service_account(settings: FcmSettings) -> ServiceAccount:
    """Parse the configured service-account JSON; errors name the problem, never the key."""
    if settings.service_account_file is not None:
        source = str(settings.service_account_file)
        try:
            raw = settings.service_account_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read service account file {source}: {exc}") from None
    else:
        source = "service_account_json"
        raw = (
            settings.service_account_json.get_secret_value()
            if settings.service_account_json
            else ""
        )
    try:
        info = json.loads(raw)
    except json.JSONDecodeError as exc:
        # ``from None``: a JSONDecodeError keeps the whole document (the key) in ``.doc``.
        detail = f"line {exc.lineno} column {exc.colno}"
        raise ValueError(f"{source} is not valid JSON ({detail})") from None
    if not isinstance(info, dict):
        raise ValueError(f"{source} is not a service-account key (not a JSON object)")
    email, pem = info.get("client_email"), info.get("private_key")
    if not isinstance(email, str) or not isinstance(pem, str):
        raise ValueError(f"{source} is not a service-account key (no client_email/private_key)")
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{source}: private_key is not an unencrypted PEM key") from None
    if not isinstance(key, RSAPrivateKey):
        raise ValueError(f"{source}: private_key is not an RSA key")
    return ServiceAccount(
        client_email=email,
        private_key=key,
        private_key_id=str(info.get("private_key_id") or ""),
        token_uri=str(info.get("token_uri") or GOOGLE_TOKEN_URI),
        project_id=str(info.get("project_id") or ""),
    )


@dataclass(frozen=True)
class _AccessToken:
    value: str = field(repr=False)
    refresh_at: float


class FcmChannel:
    """Sends one FCM notification per call; caches the OAuth2 access token.

    ``now`` is the clock the token cache and the JWT claims read (tests inject one);
    ``transport`` lets the daemon give the HTTP/1.1 client a faster transport.
    """

    def __init__(
        self,
        name: str,
        settings: FcmSettings,
        *,
        now: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.contact = settings.contact
        try:
            self._account = load_service_account(settings)
        except ValueError as exc:
            raise ValueError(f"fcm channel {name!r}: {exc}") from None
        self._project = settings.project_id or self._account.project_id
        if not self._project:
            raise ValueError(f"fcm channel {name!r}: no project_id (settings or service account)")
        base = settings.base_url.rstrip("/")
        self._send_url = f"{base}/v1/projects/{quote(self._project, safe='')}/messages:send"
        self._token_uri = settings.token_uri or self._account.token_uri
        self._now = now
        self._ttl = settings.ttl
        self._android = {"priority": "high", "ttl": f"{settings.ttl}s"}
        self._client = httpx.AsyncClient(timeout=settings.timeout, transport=transport)
        self._token: _AccessToken | None = None
        self._exchanging: asyncio.Task[_AccessToken] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"FcmChannel(name={self.name!r}, project={self._project!r})"

    def build(self, target: Target, message: Message) -> dict[str, Any]:
        """The ``messages:send`` request body (public so tests and previews can inspect it).

        The title is cut to :data:`TITLE_LIMIT` characters and the body to
        :data:`~channels.push_common.BODY_LIMIT`, and the body further (as for APNs) until
        the notification and data fit FCM's :data:`PAYLOAD_LIMIT` bytes: a thousand
        characters of CJK text or emoji are 3,000 to 4,000 bytes of UTF-8.

        A registration token may be an Android app's, an iOS app's or a web page's, and FCM
        applies each platform's block only to its own: ``android``, ``apns`` and ``webpush``
        each get the lifetime (``ttl``) and the priority, and the incident's grouping
        (:func:`~channels.base.push_thread`, :func:`~channels.base.push_replaces`)."""
        title = shorten(message.subject, TITLE_LIMIT)
        data = _data(message)
        thread = push_thread(message)
        # On iOS FCM adds the APNs payload's aps to the notification and the data: counted.
        payload = {"aps": {"thread-id": thread}} if thread else {}
        limit = BODY_LIMIT
        while True:
            notification = {"title": title, "body": shorten(message.text, limit)}
            counted = {"notification": notification, "data": data, **payload}
            if len(json_bytes(counted)) <= PAYLOAD_LIMIT:
                break
            if limit <= 16:
                raise DeliveryError(
                    f"the FCM payload does not fit in {PAYLOAD_LIMIT} bytes even when shortened",
                    retryable=False,
                )
            limit = limit * 3 // 4
        # A step of low urgency: normal priority, which Android may batch (Doze), and
        # APNs' 5 and Web Push's normal, which wait for the device's power to allow.
        low = urgency_step(message) < 0
        replaces = push_replaces(message)
        android: dict[str, Any] = {**self._android, "priority": "normal" if low else "high"}
        if replaces:
            # Shown in place of the incident's earlier "no news yet" (Android's tag).
            android["notification"] = {"tag": replaces}
        return {
            "message": {
                "token": target.address.strip(),
                "notification": notification,
                "data": data,
                "android": android,
                "apns": self._apns(payload, low=low, replaces=replaces),
                "webpush": self._webpush(message, low=low, replaces=replaces),
            }
        }

    def _apns(self, payload: dict[str, Any], *, low: bool, replaces: str | None) -> dict[str, Any]:
        """The ``apns`` block for an iOS token: APNs' own headers (FCM's defaults would
        keep the message 30 days at priority 10) and ``payload``, the incident's
        ``thread-id`` (FCM merges it with the notification: an aps without "alert" keeps
        the notification's title and body)."""
        expiration = int(self._now()) + self._ttl if self._ttl else 0
        headers = {"apns-priority": "5" if low else "10", "apns-expiration": str(expiration)}
        if replaces:
            headers["apns-collapse-id"] = replaces
        block: dict[str, Any] = {"headers": headers}
        if payload:
            block["payload"] = payload
        return block

    def _webpush(self, message: Message, *, low: bool, replaces: str | None) -> dict[str, Any]:
        """The ``webpush`` block for a web token: RFC 8030's headers (FCM's default keeps a
        web message four weeks), the notification's tag where it replaces an earlier one,
        and the incident page to open on a click (FCM takes HTTPS links only)."""
        headers = {"TTL": str(self._ttl), "Urgency": "normal" if low else "high"}
        topic = push_replaces(message, _TOPIC_LIMIT)
        if topic:
            headers["Topic"] = topic  # a newer one replaces it while queued for the browser
        block: dict[str, Any] = {"headers": headers}
        if replaces:
            block["notification"] = {"tag": replaces, "renotify": True}
        link = message.headers.get(LINK_HEADER, "")
        if link.startswith("https://") and len(link) <= _LINK_LIMIT:
            block["fcm_options"] = {"link": link}
        return block

    async def send(self, target: Target, message: Message) -> Receipt:
        if self._closed:
            raise DeliveryError("fcm channel is closed", retryable=True)
        if not target.address.strip():
            raise DeliveryError(
                "empty FCM registration token",
                retryable=False,
                contact_point=ContactPointState.DISABLED,
            )
        body = self.build(target, message)
        access = await self._access_token()
        response = await self._post(body, access)
        if (
            response.status_code == 401
            and parse_google_error(response.content).error_code != "THIRD_PARTY_AUTH_ERROR"
        ):
            # Our token was refused (revoked, or the clocks disagree): one fresh token, once.
            access = await self._access_token(stale=access)
            response = await self._post(body, access)
        if response.is_success:
            name = (json_object(response.content) or {}).get("name")
            if not isinstance(name, str) or not name:
                # FCM names every message it accepts: a 2xx without one is not FCM's answer
                # (a proxy's page, a wrong base URL), and the message may not have gone.
                raise DeliveryError(
                    f"unreadable answer from FCM ({describe_body(response)}): no message name",
                    retryable=True,
                )
            return Receipt(provider_message_id=name)
        retry_after = parse_retry_after(response.headers.get("retry-after"), now=self._now())
        raise fcm_error(
            response.status_code,
            response.content,
            retry_after,
            content_type=response.headers.get("content-type"),
            secrets=(access,),
        )

    async def _post(self, body: dict[str, Any], access: str) -> httpx.Response:
        try:
            return await self._client.post(
                self._send_url,
                content=json_bytes(body),  # a permanent DeliveryError for text that is not Unicode
                headers={"authorization": f"Bearer {access}", "content-type": "application/json"},
            )
        except httpx.TimeoutException as exc:
            raise DeliveryError(
                f"FCM request timed out ({type(exc).__name__})", retryable=True
            ) from exc
        except httpx.TransportError as exc:
            reason = redact(f"FCM connection failed: {_describe(exc)}", (access,))
            raise DeliveryError(reason, retryable=True) from exc

    async def _access_token(self, *, stale: str | None = None) -> str:
        """The cached access token, or a new one when it is due, missing, or ``stale``.

        Single flight: concurrent sends share one exchange and its outcome, so a token
        endpoint that is down costs one timeout for all of them, not one each in turn.
        """
        cached = self._token
        if cached is not None and cached.value != stale and self._now() < cached.refresh_at:
            return cached.value
        if self._exchanging is None or self._exchanging.done():
            self._exchanging = asyncio.get_running_loop().create_task(self._exchange())
            self._exchanging.add_done_callback(self._exchanged)
        # Shielded: one cancelled send must not cancel the exchange the others wait for.
        token = await asyncio.shield(self._exchanging)
        return token.value

    def _exchanged(self, task: asyncio.Task[_AccessToken]) -> None:
        if not task.cancelled() and task.exception() is None:
            self._token = task.result()

    async def _exchange(self) -> _AccessToken:
        now = self._now()
        account = self._account
        claims = {
            "iss": account.client_email,
            "scope": FCM_SCOPE,
            "aud": self._token_uri,
            "iat": int(now),
            "exp": int(now) + ASSERTION_LIFETIME,
        }
        headers = {"kid": account.private_key_id} if account.private_key_id else None
        assertion = jwt.encode(claims, account.private_key, algorithm="RS256", headers=headers)
        try:
            response = await self._client.post(
                self._token_uri, data={"grant_type": JWT_BEARER_GRANT, "assertion": assertion}
            )
        except httpx.TimeoutException as exc:
            raise DeliveryError("OAuth2 token exchange timed out", retryable=True) from exc
        except httpx.TransportError as exc:
            reason = redact(f"OAuth2 token exchange failed: {_describe(exc)}", (assertion,))
            raise DeliveryError(reason, retryable=True) from exc
        if not response.is_success:
            retry_after = parse_retry_after(response.headers.get("retry-after"), now=now)
            raise token_error(response, retry_after, secrets=(assertion,))
        try:
            payload = json_object(response.content) or {}
            value, expires_in = payload["access_token"], float(payload.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError, OverflowError):
            raise DeliveryError(
                "OAuth2 token endpoint sent no access token", retryable=True
            ) from None
        if not isinstance(value, str) or not value:
            raise DeliveryError("OAuth2 token endpoint sent no access token", retryable=True)
        margin = min(REFRESH_MARGIN, expires_in / 2)
        return _AccessToken(value=value, refresh_at=now + expires_in - margin)

    async def aclose(self) -> None:
        self._closed = True
        if self._exchanging is not None and not self._exchanging.done():
            exchanging = self._exchanging
            exchanging.cancel()
            # Waited for, not awaited: a cancellation of aclose itself still propagates.
            await asyncio.wait({exchanging})
            if not exchanging.cancelled():
                exchanging.exception()  # retrieved: no "never retrieved" warning
        await self._client.aclose()


def _describe(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


_TOPIC_LIMIT = 32
"""Characters of a Web Push ``Topic`` (RFC 8030 5.4)."""
_LINK_LIMIT = PAYLOAD_LIMIT // 4
"""The longest incident link sent: an absurd one must not crowd out the words."""


def _data(message: Message) -> dict[str, str]:
    """The ``data`` the app receives (strings only, as FCM requires; on iOS, keys of the
    APNs payload): the delivery id to de-duplicate on, and, for an incident's messages,
    the incident page to open and the thread its notifications are grouped under."""
    data = {"delivery": message.idempotency_key}
    link = message.headers.get(LINK_HEADER, "")
    if link and len(link) <= _LINK_LIMIT:
        data["url"] = link
    thread = push_thread(message)
    if thread:
        data["thread"] = thread
    return data
