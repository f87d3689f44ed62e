"""ntfy channel: publish one message to one ntfy topic (``POST {base_url}/{topic}``).

The target's address is the topic name. The body is the message text (cut to ntfy's
4,096-byte message limit, beyond which ntfy would turn it into an attachment); title,
priority, tags, click link and icon travel in ntfy's ``X-`` headers, RFC 2047-encoded when
they are not ASCII (ntfy decodes them). ``X-Priority`` rather than ``Priority``: proxies
such as Cloudflare set the latter for RFC 9218 and ntfy then ignores it.

Idempotency: ntfy has no idempotency key. Since ntfy 2.16, messages that share an
``X-Sequence-ID`` are one notification that clients update in place, so the delivery id is
sent as the sequence id: a retry after a lost response replaces the first notification on
the phone instead of adding a second. Older servers ignore the header.

Errors follow ntfy's JSON body ``{"code": 42901, "http": 429, "error": "...", "link": ...}``:
408, 429 and 5xx are retryable (with ``Retry-After``); 401 and 403 are permanent
configuration errors (token, or access to the topic); 404 is permanent too (``base_url``
does not lead to an ntfy server's publish endpoint); 400 for an invalid or disallowed topic
disables the contact point; any other 4xx (413 included) is permanent. Reasons quote only
ntfy's ``code`` and ``error`` (cut short), or the type and length of any other body, and
are redacted against the token or password, should a proxy echo the request.

A 429 is ``throttled``: ntfy limits each *visitor* (the publisher's IP address, or its user
when it authenticates), not a topic, so its 429s (42901 too many requests, 42908 the daily
message quota, and the like) refuse every message the channel publishes until the limit
refills, and the dispatcher pauses the channel.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable
from typing import Annotated, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from channels.base import (
    ContactPointState,
    DeliveryError,
    Message,
    Receipt,
    Target,
    urgency_step,
)
from channels.http_common import (
    HttpAnswer,
    clip,
    describe_body,
    json_object,
    parse_retry_after,
    pooled_client,
    retryable_status,
)
from channels.push_common import shorten_to_fit
from channels.redact import redact

TOPIC = re.compile(r"^[-_A-Za-z0-9]{1,64}$")
"""ntfy's own topic rule (``topicRegex`` in its server)."""
DISALLOWED_TOPICS = frozenset(
    {"docs", "static", "file", "app", "account", "settings", "pricing", "signup", "login"}
    | {"reset-password"}
)
"""Names ntfy reserves for its web app and API."""
_SEQUENCE_ID = TOPIC
_TOPIC_ERRORS = {40009, 40010}  # topic invalid, topic disallowed
_LINK_HEADER = "X-Broadcaster-Link"
_SEVERITY_HEADER = "X-Broadcaster-Severity"
_KIND_HEADER = "X-Broadcaster-Kind"
_ELLIPSIS = "…"

Priority = Annotated[int, Field(ge=1, le=5)]


_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")
"""Visible ASCII: what a bearer token may be (RFC 6750's b64token is a subset)."""


class NtfySettings(BaseModel):
    """Settings of the ntfy channel."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["ntfy"] = "ntfy"
    contact: str = "ntfy"
    base_url: str = "https://ntfy.sh"
    token: SecretStr | None = None
    """An access token (``tk_...``), sent as ``Authorization: Bearer``."""
    username: str | None = None
    password: SecretStr | None = None
    default_priority: Priority = 4
    priority_by_severity: dict[str, Priority] = Field(
        default_factory=lambda: {"minor": 3, "major": 4, "critical": 5}
    )
    """ntfy priority (1 min .. 5 max) per incident severity (``X-Broadcaster-Severity``); an
    escalation step of ``high`` or ``low`` urgency (``X-Broadcaster-Urgency``) sends one more
    or one less."""
    resolution_priority: Priority = 3
    tags: list[str] = Field(default_factory=lambda: ["warning"])
    resolution_tags: list[str] = Field(default_factory=lambda: ["white_check_mark"])
    icon: str | None = None
    sequence_id: bool = True
    """Send the delivery id as ``X-Sequence-ID`` (retries update, not duplicate)."""
    max_message_bytes: int = Field(default=4096, ge=64, le=1_000_000)
    timeout: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=50, ge=1, le=1000)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL as exc:
            raise ValueError("base_url is not a URL") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("base_url must be an absolute http(s) URL")
        if url.userinfo:
            raise ValueError("put credentials in token or username/password, not in base_url")
        if url.query or url.fragment:
            raise ValueError("base_url takes no query or fragment")
        return value.rstrip("/")

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        # It goes into a header as it is: a space or a line break (a secret file's or an
        # environment variable's last newline) would fail every send, quoting the token.
        if value is not None and not _HEADER_SAFE.fullmatch(value.get_secret_value()):
            raise ValueError(
                "token has a space, a line break or another character a header cannot carry "
                "(a newline at the end of the environment variable or secret file?)"
            )
        return value

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> NtfySettings:
        if self.token is not None and self.username is not None:
            raise ValueError("set either token or username/password, not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        return self


class NtfyChannel:
    """Publishes to ntfy over HTTP."""

    def __init__(
        self,
        name: str,
        settings: NtfySettings,
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

    def request_headers(self, message: Message) -> dict[str, str]:
        """The publish headers for ``message``, authorization excluded (public for tests)."""
        s = self._settings
        kind = message.headers.get(_KIND_HEADER, "")
        if kind == "resolution":
            priority, tags = s.resolution_priority, s.resolution_tags
        else:
            severity = message.headers.get(_SEVERITY_HEADER, "")
            priority, tags = s.priority_by_severity.get(severity, s.default_priority), s.tags
            # The escalation step's urgency: a priority up or down (within ntfy's 1 to 5).
            priority = min(max(priority + urgency_step(message), 1), 5)
        headers = {
            "Content-Type": "text/plain; charset=utf-8",
            "X-Title": header_value(message.subject),
            "X-Priority": str(priority),
        }
        if tags:
            headers["X-Tags"] = header_value(",".join(tags))
        link = message.headers.get(_LINK_HEADER)
        if link:
            headers["X-Click"] = header_value(link)
        if s.icon:
            headers["X-Icon"] = header_value(s.icon)
        if s.sequence_id and message.idempotency_key:
            headers["X-Sequence-ID"] = sequence_id(message.idempotency_key)
        return headers

    def _authorization(self) -> str | None:
        s = self._settings
        if s.token is not None:
            return f"Bearer {s.token.get_secret_value()}"
        if s.username is not None and s.password is not None:
            pair = f"{s.username}:{s.password.get_secret_value()}".encode()
            return f"Basic {base64.b64encode(pair).decode('ascii')}"
        return None

    def _secrets(self) -> tuple[str, ...]:
        """What no reason may show: the token or password, and the credentials sent."""
        s = self._settings
        found = [secret.get_secret_value() for secret in (s.token, s.password) if secret]
        authorization = self._authorization()
        if authorization is not None:
            found.append(authorization.split(" ", 1)[1])
        return tuple(found)

    async def send(self, target: Target, message: Message) -> Receipt:
        if self._closed:
            raise DeliveryError("ntfy channel is closed", retryable=True)
        topic = target.address
        if not TOPIC.match(topic) or topic in DISALLOWED_TOPICS:
            raise DeliveryError(
                "not a usable ntfy topic name (1-64 of A-Z a-z 0-9 _ -, not reserved)",
                retryable=False,
                contact_point=ContactPointState.DISABLED,
            )
        try:
            headers = self.request_headers(message)
            body = truncate_utf8(message.text, self._settings.max_message_bytes)
        except UnicodeEncodeError:
            # A lone surrogate (JSON input can carry one as \ud800): no retry changes it.
            raise DeliveryError(
                "the message is not Unicode text (a lone surrogate); it cannot be sent",
                retryable=False,
            ) from None
        authorization = self._authorization()
        if authorization is not None:
            headers["Authorization"] = authorization
        url = f"{self._settings.base_url}/{topic}"
        try:
            response = await self._client.post(url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise DeliveryError("ntfy timed out", retryable=True) from exc
        except httpx.TransportError as exc:
            reason = redact(f"ntfy connection failed: {type(exc).__name__}: {exc}", self._secrets())
            raise DeliveryError(reason, retryable=True) from exc
        if response.status_code == 200:
            return Receipt(provider_message_id=_message_id(response), detail="HTTP 200")
        raise self._error(response)

    def _error(self, response: HttpAnswer) -> DeliveryError:
        status = response.status_code
        code, text = _ntfy_error(response, self._secrets())
        reason = f"ntfy {status}" + (f" ({code})" if code else "") + (f": {text}" if text else "")
        reason = redact(reason, self._secrets())
        if retryable_status(status):
            wait = parse_retry_after(response.headers.get("Retry-After"), now=self._clock())
            # ntfy's limits are the visitor's (our address or user), whatever the topic.
            return DeliveryError(reason, retryable=True, retry_after=wait, throttled=status == 429)
        if status == 400 and code in _TOPIC_ERRORS:
            return DeliveryError(reason, retryable=False, contact_point=ContactPointState.DISABLED)
        if status in (401, 403):
            return DeliveryError(
                f"{reason} (check token/credentials and topic access)", retryable=False
            )
        if status == 404:
            return DeliveryError(f"{reason} (check base_url)", retryable=False)
        return DeliveryError(reason, retryable=False)

    async def aclose(self) -> None:
        self._closed = True
        await self._client.aclose()


def sequence_id(key: str) -> str:
    """The delivery id as an ntfy sequence id (ntfy's topic alphabet, at most 64 long)."""
    if _SEQUENCE_ID.match(key):
        return key
    cleaned = re.sub(r"[^-_A-Za-z0-9]", "_", key)[:40]
    digest = base64.urlsafe_b64encode(hashlib.sha256(key.encode("utf-8")).digest()).decode("ascii")[
        :22
    ]
    return f"{cleaned}_{digest}".replace("=", "")


def truncate_utf8(text: str, limit: int) -> bytes:
    """``text`` as UTF-8 in at most ``limit`` bytes: whole sentences, else whole words with
    an ellipsis (:func:`~channels.push_common.shorten_to_fit`); on a character boundary
    only when not even one word fits."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return data
    fitted = shorten_to_fit(text, lambda value: len(value.encode("utf-8")) <= limit)
    if fitted is not None:
        return fitted.encode("utf-8")
    room = limit - len(_ELLIPSIS.encode("utf-8"))
    cut = data[:room].decode("utf-8", "ignore").rstrip()
    return (cut + _ELLIPSIS).encode("utf-8")


def header_value(value: str) -> str:
    """One header line: ASCII as it is, anything else as RFC 2047 encoded words."""
    value = " ".join(value.split())
    if value.isascii():
        return value
    words: list[str] = []
    chunk = ""
    for char in value:
        if len((chunk + char).encode("utf-8")) > 45:
            words.append(chunk)
            chunk = ""
        chunk += char
    words.append(chunk)
    return " ".join(
        f"=?utf-8?b?{base64.b64encode(w.encode('utf-8')).decode('ascii')}?=" for w in words
    )


def _message_id(response: HttpAnswer) -> str | None:
    document = json_object(response.content)
    if document is not None and isinstance(document.get("id"), str):
        message_id: str = document["id"]
        return message_id
    return None


def _ntfy_error(response: HttpAnswer, secrets: tuple[str, ...]) -> tuple[int | None, str]:
    """ntfy's error code and text (cut short) from its JSON body; for any other body, no
    code and only the body's type and length."""
    document = json_object(response.content)
    if document is None:
        return None, describe_body(response)
    code, text = document.get("code"), document.get("error")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    return code, clip(text, secrets=secrets) if isinstance(text, str) else ""
