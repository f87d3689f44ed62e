"""Webhook channel: one signed JSON POST per delivery, to a fixed URL or the target's own.

Signature scheme ``v1`` (what a receiver must check)::

    X-Broadcaster-Timestamp: 1767225600            unix seconds when the request was signed
    X-Broadcaster-Signature: v1=<64 hex digits>    lower-case hex of
        HMAC-SHA256(key = the shared secret as UTF-8,
                    msg = <timestamp header value, as sent> + "." + <raw request body bytes>)
    Idempotency-Key: <delivery id>                 the same on every retry of one delivery

A receiver recomputes the HMAC over the *raw* body (before any JSON parsing), compares it
in constant time, rejects a timestamp more than five minutes away from its own clock (a
replayed request), and de-duplicates on ``Idempotency-Key``. The signature header may hold
several comma-separated ``v1=`` values (while a secret is being rotated); one match is
enough. :func:`sign` and :func:`verify` are that scheme as pure functions, for receivers
written in Python and for tests.

Every retry is signed afresh (new timestamp) and carries the same idempotency key.
Statuses map onto the retry contract: 2xx is success; 408, 429 and 5xx are retryable (with
``Retry-After``); 410 disables the contact point; any other 4xx is permanent; timeouts and
connection errors are retryable. Reasons quote only a JSON error body's ``code`` and
``error``/``message``/``title``/``detail`` (RFC 9457 problem details included), cut short,
or the type and length of any other body; they are redacted against the secret, the
request's signature and the URL's path and query, should the receiver (or a proxy) echo
the request.

A 429 is ``throttled``. With a fixed ``url`` every message of the channel goes to that one
receiver, and its rate is the channel's: the dispatcher pauses the whole channel. With each
customer's own URL, a 429 comes from that customer's host, and says nothing of the others':
it is throttled with a ``throttled_scope``, the host's origin (``scheme://host[:port]``, by
:func:`~channels.http_common.origin_of`), and the dispatcher pauses only the channel's
messages to that origin (:meth:`WebhookChannel.pause_scope` gives it the origin of each
address, by the same function); every other customer's webhook goes on.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import time
from collections.abc import Callable
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from channels.base import ContactPointState, DeliveryError, Message, Receipt, Target
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
from channels.redact import redact

SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE = 300
"""Seconds a signed timestamp may be away from the receiver's clock, either way."""

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_UNSAFE = re.compile(r"[^\x20-\x7e]")


def sign(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """The ``X-Broadcaster-Signature`` value for ``body`` signed at ``timestamp``."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    mac = _keyed(key).copy()
    mac.update(str(timestamp).encode("ascii") + b"." + body)
    return f"{SIGNATURE_VERSION}={mac.hexdigest()}"


@functools.lru_cache(maxsize=8)
def _keyed(key: bytes) -> hmac.HMAC:
    """An HMAC-SHA256 already keyed with ``key``, to copy for each signature."""
    return hmac.new(key, digestmod=hashlib.sha256)


def verify(
    secret: str | bytes,
    timestamp: int | str,
    body: bytes,
    signature: str,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> bool:
    """True when ``signature`` signs ``body`` at ``timestamp`` and the timestamp is fresh.

    ``timestamp`` is the header value as received (it is signed as sent, so ``0123`` and
    ``123`` differ); ``now`` is the receiver's clock in unix seconds. Comparison is in
    constant time; any of several comma-separated signatures may match.
    """
    text = str(timestamp)
    if not text or not text.isascii() or not text.isdigit() or len(text) > 15:
        return False
    if abs(now - int(text)) > tolerance:
        return False
    expected = sign(secret, text, body).encode("ascii")
    matched = False
    for candidate in signature.split(","):
        # No early exit: every candidate is compared, so timing says nothing about which.
        if hmac.compare_digest(candidate.strip().encode("utf-8", "replace"), expected):
            matched = True
    return matched


class WebhookSettings(BaseModel):
    """Settings of the webhook channel."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["webhook"] = "webhook"
    contact: str = "webhook"
    url: str | None = None
    """One endpoint for every delivery; when unset, each target's address is its URL."""
    secret: SecretStr
    """The shared HMAC key (at least 16 characters; e.g. ``openssl rand -hex 32``)."""
    timeout: float = Field(default=10.0, gt=0)
    idempotency_header: str = "Idempotency-Key"
    timestamp_header: str = "X-Broadcaster-Timestamp"
    signature_header: str = "X-Broadcaster-Signature"
    max_connections: int = Field(default=50, ge=1, le=1000)

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, value: str | None) -> str | None:
        if value is not None:
            problem = _url_problem(value)
            if problem:
                raise ValueError(problem)
        return value

    @field_validator("secret")
    @classmethod
    def _secret_is_long(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("the webhook secret needs at least 16 characters")
        return value

    @field_validator("idempotency_header", "timestamp_header", "signature_header")
    @classmethod
    def _header_name(cls, value: str) -> str:
        if not _TOKEN.match(value):
            raise ValueError(f"not an HTTP header name: {value!r}")
        return value


class WebhookChannel:
    """POSTs one signed JSON document per delivery."""

    def __init__(
        self,
        name: str,
        settings: WebhookSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.contact = settings.contact
        self._settings = settings
        self._clock = clock
        self._client = pooled_client(settings.timeout, settings.max_connections, transport)
        self._closed = False

    def pause_scope(self, address: str) -> str | None:
        """The scope of a throttle ``address`` is in: its origin when each customer has their
        own URL (what a 429 from their host names, :func:`~channels.http_common.origin_of`);
        None with a fixed ``url``, whose throttles pause the whole channel."""
        if self._settings.url is not None:
            return None
        return origin_of(address.strip())

    def body(self, target: Target, message: Message) -> bytes:
        """The JSON document for one delivery (public so tests and previews can see it)."""
        document: dict[str, Any] = {
            "delivery": message.idempotency_key,
            "customer": target.customer_id,
            "name": target.name,
            "address": target.address,
            "subject": message.subject,
            "text": message.text,
        }
        if message.html is not None:
            document["html"] = message.html
        document["headers"] = dict(message.headers)
        if message.created_at is not None:
            document["created_at"] = message.created_at.isoformat()
        return json_bytes(document)

    async def send(self, target: Target, message: Message) -> Receipt:
        if self._closed:
            raise DeliveryError("webhook channel is closed", retryable=True)
        url = self._settings.url
        if url is None:
            url = target.address.strip()
            problem = _url_problem(url)
            if problem:
                raise DeliveryError(
                    f"webhook address is not usable: {problem}",
                    retryable=False,
                    contact_point=ContactPointState.DISABLED,
                )
        body = self.body(target, message)
        timestamp = str(int(self._clock()))
        s = self._settings
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "broadcaster-webhook/1",
            s.timestamp_header: timestamp,
            s.signature_header: sign(s.secret.get_secret_value(), timestamp, body),
        }
        if message.idempotency_key:
            headers[s.idempotency_header] = _ascii(message.idempotency_key)
        # Not the whole URL: without a path it is the origin, which reasons do name;
        # paths and queries often hold tokens.
        where, path = _url_parts(url)
        secrets = (s.secret.get_secret_value(), headers[s.signature_header], path)
        try:
            response = await self._client.post(url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise DeliveryError(f"webhook {where} timed out", retryable=True) from exc
        except httpx.TransportError as exc:
            reason = f"webhook {where} connection failed: {type(exc).__name__}: {exc}"
            raise DeliveryError(redact(reason, secrets), retryable=True) from exc
        if 200 <= response.status_code < 300:
            return Receipt(
                provider_message_id=message.idempotency_key or None,
                detail=f"HTTP {response.status_code}",
            )
        raise self._error(where, response, secrets)

    def _error(self, where: str, response: HttpAnswer, secrets: tuple[str, ...]) -> DeliveryError:
        status = response.status_code
        reason = redact(
            f"webhook {where} answered {status}{_receiver_error(response, secrets)}", secrets
        )
        if retryable_status(status):
            wait = parse_retry_after(response.headers.get("Retry-After"), now=self._clock())
            if status != 429:
                return DeliveryError(reason, retryable=True, retry_after=wait)
            # One receiver's rate is the channel's only when every message goes to it; a
            # customer's own host throttles the messages to its origin (pause_scope's).
            scope = None if self._settings.url is not None else where
            return DeliveryError(
                reason, retryable=True, retry_after=wait, throttled=True, throttled_scope=scope
            )
        if status == 410 and self._settings.url is None:
            return DeliveryError(reason, retryable=False, contact_point=ContactPointState.DISABLED)
        if status == 410:
            # A fixed url's 410 is about the endpoint, not the customer: disabling their
            # contact points would drop every customer as the round's answers came in.
            return DeliveryError(reason + " (check url)", retryable=False)
        return DeliveryError(reason, retryable=False)

    async def aclose(self) -> None:
        self._closed = True
        await self._client.aclose()


def _receiver_error(response: HttpAnswer, secrets: tuple[str, ...]) -> str:
    """``: (code) message`` from a JSON error body, else ``: <type> body, <n> bytes, not
    shown``; never the body's text as such."""
    document = json_object(response.content)
    if document is None:
        return f": {describe_body(response)}"
    code = text_field(document, "code", limit=32, secrets=secrets)
    said = text_field(document, "error", "message", "title", "detail", secrets=secrets)
    text = (f"({code}) " if code else "") + said
    return f": {text.strip()}" if text else ""


def _url_problem(url: str) -> str | None:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "not a URL"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return "an absolute http(s) URL is required"
    return None


@functools.lru_cache(maxsize=1024)
def _url_parts(url: str) -> tuple[str, str]:
    """The origin (:func:`~channels.http_common.origin_of`: scheme, host and port only,
    as paths and queries of webhook URLs often hold tokens; also the scope of a throttle
    from that host) and the raw path with query of ``url``; cached, as most deliveries go
    to one or a few URLs and parsing one costs as much as signing the body."""
    parsed = httpx.URL(url)
    origin = origin_of(url) or f"{parsed.scheme}://{parsed.host}"  # checked: http(s), a host
    return origin, parsed.raw_path.decode("ascii")


def _ascii(value: str) -> str:
    """A header-safe rendering: anything outside printable ASCII is escaped, not sent raw."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", value)
