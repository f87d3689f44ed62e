"""Signed, expiring links for customers: one-click unsubscribe and the preferences page.

A token is ``base64url(customer_id) . expires (unix seconds) . purpose . signature`` where the
signature is HMAC-SHA256 over the first three parts with the configured link secret. It
carries no other data; it proves that we issued the link for that customer and purpose, and
until when. Verification is constant-time.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta

PURPOSES = ("unsubscribe", "preferences")


class InvalidLink(ValueError):
    """The token is malformed, forged, for another purpose, or expired."""


@dataclass(frozen=True)
class LinkClaims:
    customer_id: str
    purpose: str
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, payload: str) -> str:
    mac = _keyed(secret).copy()
    mac.update(payload.encode())
    return _b64(mac.digest())


@functools.lru_cache(maxsize=4)
def _keyed(secret: str) -> hmac.HMAC:
    """An HMAC already keyed with ``secret``, to copy: keying one costs as much as signing
    a link, and a round signs two links per message."""
    return hmac.new(secret.encode(), digestmod=hashlib.sha256)


def make_token(secret: str, customer_id: str, purpose: str, expires: datetime) -> str:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown link purpose {purpose!r}")
    if not secret:
        raise ValueError("the link secret is empty; set messages.link_secret")
    payload = f"{_b64(customer_id.encode())}.{int(expires.timestamp())}.{purpose}"
    return f"{payload}.{_signature(secret, payload)}"


def verify_token(secret: str, token: str, purpose: str, now: datetime) -> LinkClaims:
    """The claims of a valid token; :class:`InvalidLink` saying why otherwise."""
    if not token.isascii():  # every token we issue is ASCII; compare_digest needs it too
        raise InvalidLink("malformed link")
    parts = token.split(".")
    if len(parts) != 4:
        raise InvalidLink("malformed link")
    encoded, expires_text, token_purpose, signature = parts
    payload = f"{encoded}.{expires_text}.{token_purpose}"
    if not hmac.compare_digest(_signature(secret, payload), signature):
        raise InvalidLink("the link's signature does not match")
    if token_purpose != purpose:
        raise InvalidLink(f"the link is for {token_purpose}, not {purpose}")
    try:
        expires_at = int(expires_text)
        customer_id = _unb64(encoded).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidLink("malformed link") from exc
    if now.timestamp() > expires_at:
        raise InvalidLink("the link has expired")
    return LinkClaims(customer_id=customer_id, purpose=purpose, expires_at=expires_at)


def personal_links(
    public_url: str, secret: str, customer_id: str, expires: datetime
) -> tuple[str, str]:
    """The customer's unsubscribe and preferences links (what every message carries): the
    same as two :func:`link_url` calls, with the shared parts worked out once."""
    if not secret:
        raise ValueError("the link secret is empty; set messages.link_secret")
    base = public_url.rstrip("/")
    head = f"{_b64(customer_id.encode())}.{int(expires.timestamp())}."
    unsubscribe = head + "unsubscribe"
    preferences = head + "preferences"
    return (
        f"{base}/u/{unsubscribe}.{_signature(secret, unsubscribe)}",
        f"{base}/preferences/{preferences}.{_signature(secret, preferences)}",
    )


def link_url(
    public_url: str, secret: str, customer_id: str, purpose: str, expires: datetime
) -> str:
    path = "u" if purpose == "unsubscribe" else "preferences"
    return f"{public_url.rstrip('/')}/{path}/{make_token(secret, customer_id, purpose, expires)}"


DEFAULT_LINK_LIFETIME = timedelta(days=30)
