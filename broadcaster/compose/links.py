"""Signed, expiring links for customers: one-click unsubscribe and the preferences page.

A token is ``base64url(customer_id) . issued . expires . purpose . signature`` (issued and
expires in unix seconds) where the signature is HMAC-SHA256 over the parts before it with
the configured link secret. It carries no other data; it proves that we issued the link for
that customer and purpose, when, and until when. Verification is constant-time.

The issue time binds a link to the customer record it was made for: a customer erased and
later created again under the same id (a recycled account number) is not reached by the
links the old record's messages carried (:func:`issued_before`). Tokens of earlier builds,
``base64url(customer_id) . expires . purpose . signature``, are still accepted until they
expire (at most the link lifetime after the upgrade); they carry no issue time.

An unsubscribe link is honoured after its expiry (:func:`verify_unsubscribe`): stopping
messages is always safe to grant, mail clients keep the RFC 8058 one-click link of an old
email, and a customer who finds an old message must still be able to stop the next ones.
Only its issue time must be signed, so that the customer check above still applies; a
preferences link (which can switch addresses back on) keeps its expiry.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

PURPOSES = ("unsubscribe", "preferences")

LinkReason = Literal["malformed", "tampered", "wrong_purpose", "expired"]
REASONS: Final[tuple[LinkReason, ...]] = ("malformed", "tampered", "wrong_purpose", "expired")
"""Why a link is refused, as a stable code (:attr:`InvalidLink.code`): not a token we make
(cut short, not ASCII, not one of ours: ``malformed``), its signature does not match
(altered, or signed with a link secret since replaced: ``tampered``), made for the other
page (``wrong_purpose``), past its expiry (``expired``). The pages tell the reader the code's
words in their language; the exception's message stays English, for logs."""


class InvalidLink(ValueError):
    """The token is malformed, forged, for another purpose, or expired: :attr:`code` says
    which (one of :data:`REASONS`), the message says it in English."""

    def __init__(self, message: str, code: LinkReason = "malformed") -> None:
        super().__init__(message)
        self.code: LinkReason = code


@dataclass(frozen=True)
class LinkClaims:
    customer_id: str
    purpose: str
    expires_at: int
    issued_at: int | None = None
    """None on a token of an earlier build (it did not say)."""


class ExpiredLink(InvalidLink):
    """A link we issued (its signature holds) whose expiry has passed: :attr:`claims` says
    for whom and what, for the page that offers a way forward."""

    def __init__(self, claims: LinkClaims) -> None:
        super().__init__("the link has expired", "expired")
        self.claims = claims


CLOCK_SLACK = 300
"""Seconds a link may seem issued before its customer was created: the daemon that signed
it and the host that created the customer may disagree on the time by this much."""


def issued_before(claims: LinkClaims, created_at: datetime) -> bool:
    """Whether the link was made for an earlier customer of the same id: one erased, whose
    id was given to a customer created after the link was issued."""
    return claims.issued_at is not None and claims.issued_at + CLOCK_SLACK < int(
        created_at.timestamp()
    )


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


def _head(customer_id: str, expires: datetime, issued: datetime | None) -> str:
    """The token's parts before its purpose, with the trailing dot."""
    stamp = "" if issued is None else f"{int(issued.timestamp())}."
    return f"{_b64(customer_id.encode())}.{stamp}{int(expires.timestamp())}."


def make_token(
    secret: str,
    customer_id: str,
    purpose: str,
    expires: datetime,
    *,
    issued: datetime | None = None,
) -> str:
    """A signed token; ``issued`` (now, for every link a message carries) binds it to the
    customer record of the time; without it the token has the earlier builds' form."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown link purpose {purpose!r}")
    if not secret:
        raise ValueError("the link secret is empty; set messages.link_secret")
    payload = _head(customer_id, expires, issued) + purpose
    return f"{payload}.{_signature(secret, payload)}"


def verify_token(secret: str, token: str, purpose: str, now: datetime) -> LinkClaims:
    """The claims of a valid token; :class:`InvalidLink` saying why otherwise
    (:class:`ExpiredLink`, with the claims, for a link we issued that has expired)."""
    if not token.isascii():  # every token we issue is ASCII; compare_digest needs it too
        raise InvalidLink("malformed link", "malformed")
    parts = token.split(".")
    if len(parts) == 4:  # an earlier build's: no issue time
        encoded, expires_text, token_purpose, signature = parts
        issued_text = None
    elif len(parts) == 5:
        encoded, issued_text, expires_text, token_purpose, signature = parts
    else:
        raise InvalidLink("malformed link", "malformed")
    payload = token.rpartition(".")[0]
    if not hmac.compare_digest(_signature(secret, payload), signature):
        raise InvalidLink("the link's signature does not match", "tampered")
    if token_purpose != purpose:
        raise InvalidLink(f"the link is for {token_purpose}, not {purpose}", "wrong_purpose")
    try:
        expires_at = int(expires_text)
        issued_at = None if issued_text is None else int(issued_text)
        customer_id = _unb64(encoded).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidLink("malformed link", "malformed") from exc
    claims = LinkClaims(
        customer_id=customer_id, purpose=purpose, expires_at=expires_at, issued_at=issued_at
    )
    if now.timestamp() > expires_at:
        raise ExpiredLink(claims)
    return claims


def verify_unsubscribe(secret: str, token: str, now: datetime) -> LinkClaims:
    """The claims of an unsubscribe link, honoured after its expiry when it says when it
    was issued (every link since the issue time was signed into it), so that
    :func:`issued_before` can still tell a link of an erased customer from one of the
    customer of the same id now. An earlier build's link past its expiry, which cannot be
    told apart, stays expired (:class:`ExpiredLink`)."""
    try:
        return verify_token(secret, token, "unsubscribe", now)
    except ExpiredLink as exc:
        if exc.claims.issued_at is None:
            raise
        return exc.claims


def personal_links(
    public_url: str, secret: str, customer_id: str, expires: datetime, issued: datetime
) -> tuple[str, str]:
    """The customer's unsubscribe and preferences links (what every message carries): the
    same as two :func:`link_url` calls, with the shared parts worked out once."""
    if not secret:
        raise ValueError("the link secret is empty; set messages.link_secret")
    base = public_url.rstrip("/")
    head = _head(customer_id, expires, issued)
    unsubscribe = head + "unsubscribe"
    preferences = head + "preferences"
    return (
        f"{base}/u/{unsubscribe}.{_signature(secret, unsubscribe)}",
        f"{base}/preferences/{preferences}.{_signature(secret, preferences)}",
    )


def link_url(
    public_url: str,
    secret: str,
    customer_id: str,
    purpose: str,
    expires: datetime,
    *,
    issued: datetime | None = None,
) -> str:
    path = "u" if purpose == "unsubscribe" else "preferences"
    token = make_token(secret, customer_id, purpose, expires, issued=issued)
    return f"{public_url.rstrip('/')}/{path}/{token}"


DEFAULT_LINK_LIFETIME = timedelta(days=30)
