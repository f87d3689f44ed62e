"""Generic JSON incident webhooks, signed with HMAC-SHA256; our own documented schema.

The sender signs ``{timestamp}.{body}`` (the decimal Unix time, a dot, the raw body
bytes) with the shared secret and sends::

    X-Broadcaster-Timestamp: 1767603600
    X-Broadcaster-Signature: v1=<hex HMAC-SHA256>

:func:`verify` checks the signature in constant time and refuses timestamps outside the
replay window (default 300 s either way). Several ``v1=`` entries (comma-separated) and
several secrets are accepted, so a secret can be rotated without downtime. A replay
inside the window is harmless: the event's idempotency key is the same.

:func:`parse` reads the body (:class:`WebhookPayload`, extra fields refused) into one
event. Components and regions are our own names; the source mapping can still rename
them, and unmapped names are kept.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from broadcaster.intake.events import FeedError, ParseResult, SourceMapping
from broadcaster.intake.normalise import (
    Collector,
    Draft,
    ItemError,
    check_now,
    content_hash,
    load_json,
    resolve_severity,
)
from broadcaster.intake.text import safe_url

TIMESTAMP_HEADER: Final = "X-Broadcaster-Timestamp"
SIGNATURE_HEADER: Final = "X-Broadcaster-Signature"
DEFAULT_TOLERANCE: Final = timedelta(seconds=300)
_TIMESTAMP: Final = re.compile(r"[0-9]{1,12}")
_HEX_SIGNATURE: Final = re.compile(r"[0-9a-fA-F]{64}")
_OUR_SEVERITIES: Final = {"minor": "minor", "major": "major", "critical": "critical"}

Secret = str | bytes


class SignatureError(Exception):
    """The request is not from a holder of the secret, or is too old; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _key(secret: Secret) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def signature(secret: Secret, body: bytes, timestamp: int) -> str:
    """The hex HMAC-SHA256 of ``{timestamp}.{body}``."""
    return hmac.new(_key(secret), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: Secret, body: bytes, timestamp: int) -> dict[str, str]:
    """The headers a sender adds (for senders written in Python, and for tests)."""
    return {
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: f"v1={signature(secret, body, timestamp)}",
    }


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:  # a plain dict is case-sensitive; HTTP header names are not
        wanted = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == wanted), None)
    return value


def verify(
    secret: Secret | Sequence[Secret],
    headers: Mapping[str, str],
    body: bytes,
    now: datetime,
    *,
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> None:
    """Return if ``body`` carries a valid, fresh signature; else :class:`SignatureError`.

    ``secret`` may be a list (current and previous secret during a rotation).
    """
    secrets = [secret] if isinstance(secret, str | bytes) else list(secret)
    keys = [_key(s) for s in secrets]
    if not keys:
        raise ValueError("no webhook secret configured")
    stamp = _header(headers, TIMESTAMP_HEADER)
    if stamp is None:
        raise SignatureError(f"missing {TIMESTAMP_HEADER} header")
    if not _TIMESTAMP.fullmatch(stamp.strip()):
        raise SignatureError(f"malformed {TIMESTAMP_HEADER} header: not Unix seconds")
    timestamp = int(stamp.strip())
    if abs(check_now(now).timestamp() - timestamp) > tolerance.total_seconds():
        raise SignatureError("timestamp outside the replay window")
    header = _header(headers, SIGNATURE_HEADER)
    if header is None:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    offered = [
        part.strip()[3:].lower()
        for part in header.split(",")[:16]
        if part.strip().startswith("v1=") and _HEX_SIGNATURE.fullmatch(part.strip()[3:])
    ]
    if not offered:
        raise SignatureError(f"malformed {SIGNATURE_HEADER} header: no v1=<hex> signature")
    expected = [signature(key, body, timestamp) for key in keys]
    # Compare every pair, so the time taken does not say which one matched.
    matched = [hmac.compare_digest(o, e) for o in offered for e in expected]
    if not any(matched):
        raise SignatureError("signature mismatch")


class Translation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1)
    message: str = Field(min_length=1)


class WebhookPayload(BaseModel):
    """The body of a signed webhook: one incident's current state.

    ``id`` is the sender's incident id (the same for every update of it); ``version``
    changes with each update (default: a hash of the body). Datetimes need an offset.
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=256)
    version: str | None = Field(default=None, min_length=1, max_length=256)
    title: str = Field(min_length=1)
    message: str = Field(min_length=1)
    status: Literal["investigating", "identified", "monitoring", "resolved"]
    severity: Literal["minor", "major", "critical"] | None = None
    components: list[str] = Field(default_factory=list, max_length=200)
    regions: list[str] = Field(default_factory=list, max_length=200)
    labels: dict[str, str] = Field(default_factory=dict, max_length=50)
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    expires_at: AwareDatetime | None = None
    updated_at: AwareDatetime | None = None
    translations: dict[str, Translation] = Field(default_factory=dict, max_length=20)
    url: str | None = Field(default=None, max_length=2048)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and safe_url(value, limit=2048) is None:
            raise ValueError("must be an absolute http(s) URL")
        return value


def describe(error: ValidationError, *, limit: int = 10) -> str:
    """``field: message`` for each problem, e.g. ``severity: Input should be 'minor', ...``."""
    parts = []
    for item in error.errors(include_url=False, include_input=False)[:limit]:
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    more = error.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse(data: bytes, mapping: SourceMapping, *, source: str, now: datetime) -> ParseResult:
    """The event of one verified webhook body; a body that breaks the schema is one
    skipped item whose reason lists the field errors (answer it with HTTP 422).

    Call :func:`verify` first. :raises FeedError: too large, not JSON, not an object.
    """
    now = check_now(now)
    body = load_json(data, mapping.limits)
    if not isinstance(body, dict):
        raise FeedError("webhook body must be a JSON object")
    collector = Collector(mapping, source, now=check_now(now))
    collector.item(body.get("id"), lambda: _payload(body, mapping))
    return collector.result()


def _payload(body: dict[str, object], mapping: SourceMapping) -> Draft:
    try:
        payload = WebhookPayload.model_validate(body)
    except ValidationError as exc:
        raise ItemError(describe(exc)) from None
    severities = [payload.severity] if payload.severity else []
    return Draft(
        external_id=payload.id,
        version=payload.version or "h:" + content_hash(payload.model_dump(mode="json")),
        title=payload.title,
        message=payload.message,
        status=payload.status,
        severity=resolve_severity(severities, _OUR_SEVERITIES, mapping),
        keys=[("", name) for name in payload.components],
        region_keys=[("", name) for name in payload.regions],
        pass_through=True,
        labels=dict(payload.labels),
        starts_at=payload.starts_at,
        ends_at=payload.ends_at,
        expires_at=payload.expires_at,
        updated_at=payload.updated_at,
        languages={k: (t.title, t.message) for k, t in payload.translations.items()},
        url=payload.url,
    )
