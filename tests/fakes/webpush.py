"""A fake push service (RFC 8030 + RFC 8292) and the browser side of a subscription.

:class:`PushService` accepts ``POST /push/{id}`` as Mozilla's autopush or FCM's Web Push
endpoint does: it requires ``TTL`` and ``Content-Encoding: aes128gcm``, refuses bodies over
4,096 bytes (413), verifies the VAPID ``Authorization: vapid t=<jwt>, k=<key>`` (ES256 with
the ``k`` key, ``aud`` = its own origin, ``exp`` at most 24 hours ahead: else 401) and that
``k`` is the key the subscription was made with (else 403), answers 410 for subscriptions
marked gone and 404 for unknown ones, and 201 with a ``Location`` otherwise. It records the
encrypted bodies; it cannot read them. The :class:`FaultPlan` comes first; a scripted body
of None becomes an autopush-style JSON error.

:class:`Subscriber` is the browser: a P-256 key pair and a 16-byte auth secret, as
``PushManager.subscribe`` makes them, and RFC 8291 decryption written here from the RFC
with ``cryptography`` alone, independent of the ``http_ece`` the channel encrypts with.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import anyio
import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import FastAPI, Request, Response

from tests.fakes.control import FaultPlan, Scripted

MAX_BODY = 4096
URGENCIES = {"very-low", "low", "normal", "high"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _raw_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def _hkdf(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


@dataclass
class Subscriber:
    """One browser's subscription: ``address`` is what the site stores for it."""

    endpoint: str
    private_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()), repr=False
    )
    auth: bytes = field(default_factory=lambda: os.urandom(16), repr=False)

    @property
    def p256dh(self) -> bytes:
        return _raw_public(self.private_key)

    @property
    def address(self) -> str:
        """``JSON.stringify(subscription)`` as a browser gives it."""
        keys = {"p256dh": b64url(self.p256dh), "auth": b64url(self.auth)}
        return json.dumps({"endpoint": self.endpoint, "expirationTime": None, "keys": keys})

    def address_with(self, **changes: Any) -> str:
        """``address`` with fields replaced (``p256dh`` and ``auth`` inside ``keys``)."""
        document = json.loads(self.address)
        for key, value in changes.items():
            (document["keys"] if key in ("p256dh", "auth") else document)[key] = value
        return json.dumps(document)

    def decrypt(self, body: bytes) -> bytes:
        """RFC 8291 section 3 and RFC 8188: the plaintext of one ``aes128gcm`` push body."""
        salt, record_size, id_length = body[:16], struct.unpack("!L", body[16:20])[0], body[20]
        sender_public = body[21 : 21 + id_length]
        ciphertext = body[21 + id_length :]
        if id_length != 65 or len(ciphertext) > record_size:
            raise ValueError("not a single-record aes128gcm body with a P-256 key id")
        sender = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), sender_public)
        shared = self.private_key.exchange(ec.ECDH(), sender)
        key_info = b"WebPush: info\x00" + self.p256dh + sender_public
        ikm = _hkdf(self.auth, shared, key_info, 32)
        cek = _hkdf(salt, ikm, b"Content-Encoding: aes128gcm\x00", 16)
        nonce = _hkdf(salt, ikm, b"Content-Encoding: nonce\x00", 12)
        padded = AESGCM(cek).decrypt(nonce, ciphertext, None)
        end = len(padded.rstrip(b"\x00")) - 1
        if end < 0 or padded[end] != 2:
            raise ValueError("the last record does not end with the 0x02 delimiter")
        return padded[:end]


@dataclass(frozen=True)
class PushRequest:
    """One request as it arrived, whatever the answer was."""

    subscription: str
    headers: dict[str, str]
    body: bytes
    status: int
    claims: dict[str, Any] = field(default_factory=dict)


class PushService:
    """Records requests in ``requests`` and the accepted ones in ``accepted``."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.faults = FaultPlan()
        self.gone: set[str] = set()
        self.requests: list[PushRequest] = []
        self.accepted: list[PushRequest] = []
        self._keys: dict[str, str] = {}
        self._clock = clock
        self._lock = threading.Lock()
        self.app = FastAPI()
        self.app.add_api_route("/push/{sub}", self._push, methods=["POST"])

    def subscribe(self, base_url: str, application_server_key: str) -> Subscriber:
        """A new browser subscription made with the site's VAPID public key."""
        sub = secrets.token_urlsafe(12)
        with self._lock:
            self._keys[sub] = application_server_key
        return Subscriber(f"{base_url}/push/{sub}")

    async def _push(self, sub: str, request: Request) -> Response:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        claims: dict[str, Any] = {}
        scripted = self.faults.next()
        if scripted is not None:
            answer = await _scripted(scripted, request)
        else:
            answer, claims = self._answer(sub, request, headers, body)
        record = PushRequest(sub, headers, body, answer.status_code, claims)
        with self._lock:
            self.requests.append(record)
            if answer.status_code == 201:
                self.accepted.append(record)
        return answer

    def _answer(
        self, sub: str, request: Request, headers: dict[str, str], body: bytes
    ) -> tuple[Response, dict[str, Any]]:
        if sub in self.gone:
            return error(410, 106, "Request did not validate: subscription expired"), {}
        expected_key = self._keys.get(sub)
        if expected_key is None:
            return error(404, 102, "Request did not validate: invalid token"), {}
        if headers.get("content-encoding") != "aes128gcm":
            return error(400, 110, "Unknown Content-Encoding"), {}
        if not headers.get("ttl", "").isdigit():
            return error(400, 111, "Missing TTL header"), {}
        if headers.get("urgency", "normal") not in URGENCIES:
            return error(400, 112, "Invalid Urgency header"), {}
        if len(body) > MAX_BODY:
            return error(413, 104, "Body is too large"), {}
        origin = str(request.base_url).rstrip("/")
        try:
            token, key = _parse_vapid(headers.get("authorization", ""))
            claims = self._verify(token, key, origin)
        except (ValueError, jwt.PyJWTError) as exc:
            return error(401, 109, f"Invalid Authorization: {exc}"), {}
        if key != expected_key:
            return error(403, 109, "VAPID key does not match the subscription"), claims
        location = f"{origin}/m/{secrets.token_urlsafe(16)}"
        return Response(
            status_code=201, headers={"Location": location, "TTL": headers["ttl"]}
        ), claims

    def _verify(self, token: str, key: str, origin: str) -> dict[str, Any]:
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(key))
        claims: dict[str, Any] = jwt.decode(
            token,
            public,
            algorithms=["ES256"],
            audience=origin,
            options={"require": ["aud", "exp", "sub"], "verify_exp": False},
        )
        now = self._clock()
        if not now < claims["exp"] <= now + 86400:
            raise ValueError("exp must be in the next 24 hours")
        sub = str(claims["sub"])
        if not (sub.startswith("mailto:") or sub.startswith("https://")):
            raise ValueError("sub must be a mailto: or https: URI")
        return claims


def _parse_vapid(authorization: str) -> tuple[str, str]:
    scheme, _, params = authorization.partition(" ")
    if scheme.lower() != "vapid":
        raise ValueError("scheme is not vapid")
    parts: dict[str, str] = {}
    for param in params.split(","):
        name, _, value = param.strip().partition("=")
        parts[name] = value
    if not parts.get("t") or not parts.get("k"):
        raise ValueError("t= and k= are required")
    return parts["t"], parts["k"]


def error(status: int, errno: int, message: str) -> Response:
    """An autopush-style JSON error."""
    document = {"code": status, "errno": errno, "error": _phrase(status), "message": message}
    return Response(json.dumps(document), status_code=status, media_type="application/json")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


async def _scripted(scripted: Scripted, request: Request) -> Response:
    if scripted.hang:
        with anyio.move_on_after(scripted.hang):
            await request.receive()
    if scripted.body is None:
        answer = error(scripted.status, 999, "scripted failure")
        answer.headers.update(scripted.headers)
        return answer
    return Response(scripted.body, status_code=scripted.status, headers=scripted.headers)
