"""A fake APNs provider API, served over HTTP/2 with TLS only (hypercorn in a thread).

``POST /3/device/{token}`` checks what APNs checks: the request came over HTTP/2, the
provider token (ES256 signature with the key's public half, ``kid``, ``iss`` = team, ``iat``
not older than an hour by the fake's clock), the ``apns-*`` headers, the device token and the
payload size, and answers like APNs: ``200`` with ``apns-id``, or ``{"reason": ...}`` (plus a
``timestamp`` on 410). A :class:`~tests.fakes.control.FaultPlan` is consulted first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from fastapi import FastAPI, Request, Response
from hypercorn.asyncio import serve
from hypercorn.config import Config

from tests.fakes.control import FaultPlan
from tests.fakes.fcm import client_left

PUSH_TYPES = frozenset(
    {"alert", "background", "location", "voip", "complication", "fileprovider", "mdm"}
    | {"liveactivity", "pushtotalk", "widgets", "controls"}
)
REASONS = {
    400: "BadMessageId",
    403: "Forbidden",
    404: "BadPath",
    405: "MethodNotAllowed",
    410: "Unregistered",
    413: "PayloadTooLarge",
    429: "TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}
"""The reason a scripted answer without a body carries, per status."""
_HEX = re.compile(r"[0-9a-fA-F]+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclass(frozen=True)
class ApnsRequest:
    """One request as the fake received it."""

    device: str
    headers: dict[str, str]
    payload: Any
    http_version: str
    provider_token: str
    client: tuple[str, int] | None
    """The client's address: one port for many requests means one multiplexed connection."""


class FakeApns:
    """APNs for one key, team and topic; its state is inspectable by tests."""

    def __init__(
        self,
        public_key: EllipticCurvePublicKey,
        *,
        key_id: str,
        team_id: str,
        topic: str,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.public_key = public_key
        self.key_id = key_id
        self.team_id = team_id
        self.topic = topic
        self.now = now
        self.faults = FaultPlan()
        self.unregistered: set[str] = set()
        """Device tokens answered with 410 Unregistered."""
        self.wrong_topic: set[str] = set()
        """Device tokens answered with 400 DeviceTokenNotForTopic."""
        self.requests: list[ApnsRequest] = []
        self.delivered: list[ApnsRequest] = []
        self.provider_tokens: list[str] = []
        """Distinct provider tokens accepted, in order of first use."""
        self.app = self._build()

    def _build(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

        @app.post("/3/device/{device}")
        async def push(device: str, request: Request) -> Response:
            return await self._push(device, request)

        @app.post("/{path:path}")
        async def bad_path(path: str) -> Response:
            return _reason(404, "BadPath")

        return app

    async def _push(self, device: str, request: Request) -> Response:
        raw = await request.body()
        version = str(request.scope.get("http_version"))
        auth = request.headers.get("authorization", "")
        provider = auth[7:] if auth[:7].lower() == "bearer " else ""
        try:
            payload: Any = json.loads(raw)
        except ValueError:
            payload = None
        client = (request.client.host, request.client.port) if request.client else None
        record = ApnsRequest(device, dict(request.headers), payload, version, provider, client)
        self.requests.append(record)
        apns_id = request.headers.get("apns-id") or str(uuid.uuid4()).upper()
        if version != "2":
            return _reason(505, "HTTP/2 required", apns_id)
        scripted = self.faults.next()
        if scripted is not None:
            if scripted.hang and await client_left(request, scripted.hang):
                return Response(status_code=499)
            if scripted.status >= 400 or scripted.body is not None:
                body = scripted.body
                if body is None:
                    body = _reason_body(
                        scripted.status, REASONS.get(scripted.status, ""), self.now()
                    )
                headers = {"apns-id": apns_id, **scripted.headers}
                return Response(body, status_code=scripted.status, headers=headers)
        problem = self._check_token(provider) or self._check_headers(request.headers)
        if problem is not None:
            return _reason(problem[0], problem[1], apns_id, self.now())
        if not _HEX.fullmatch(device):
            return _reason(400, "BadDeviceToken", apns_id)
        if not raw:
            return _reason(400, "PayloadEmpty", apns_id)
        if len(raw) > 4096:
            return _reason(413, "PayloadTooLarge", apns_id)
        if device in self.unregistered:
            return _reason(410, "Unregistered", apns_id, self.now())
        if device in self.wrong_topic:
            return _reason(400, "DeviceTokenNotForTopic", apns_id)
        self.delivered.append(record)
        return Response(status_code=200, headers={"apns-id": apns_id})

    def _check_token(self, provider: str) -> tuple[int, str] | None:
        if not provider:
            return 403, "MissingProviderToken"
        try:
            header = jwt.get_unverified_header(provider)
            claims: dict[str, Any] = jwt.decode(
                provider,
                self.public_key,
                algorithms=["ES256"],
                options={"verify_iat": False, "verify_exp": False, "require": ["iat", "iss"]},
            )
        except jwt.InvalidTokenError:
            return 403, "InvalidProviderToken"
        if header.get("kid") != self.key_id or claims["iss"] != self.team_id:
            return 403, "InvalidProviderToken"
        age = self.now() - float(claims["iat"])
        if age > 3600:
            return 403, "ExpiredProviderToken"
        if age < -60:
            return 403, "InvalidProviderToken"
        if provider not in self.provider_tokens:
            self.provider_tokens.append(provider)
        return None

    def _check_headers(self, headers: Any) -> tuple[int, str] | None:
        topic = headers.get("apns-topic")
        if not topic:
            return 400, "MissingTopic"
        if topic != self.topic:
            return 400, "TopicDisallowed"
        if headers.get("apns-push-type", "alert") not in PUSH_TYPES:
            return 400, "InvalidPushType"
        if headers.get("apns-priority", "10") not in ("1", "5", "10"):
            return 400, "BadPriority"
        if not headers.get("apns-expiration", "0").isdigit():
            return 400, "BadExpirationDate"
        apns_id = headers.get("apns-id")
        if apns_id is not None and not _UUID.fullmatch(apns_id):
            return 400, "BadMessageId"
        if len(headers.get("apns-collapse-id", "").encode()) > 64:
            return 400, "BadCollapseId"
        return None


def _reason_body(status: int, reason: str, now: float | None = None) -> bytes:
    document: dict[str, Any] = {"reason": reason}
    if status == 410 and now is not None:
        document["timestamp"] = int(now * 1000)
    return json.dumps(document).encode()


def _reason(status: int, reason: str, apns_id: str = "", now: float | None = None) -> Response:
    headers = {"apns-id": apns_id} if apns_id else {}
    body = _reason_body(status, reason, now)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


@contextmanager
def serve_http2(app: Any, certfile: str, keyfile: str) -> Iterator[str]:
    """Serve ``app`` over TLS offering only ``h2`` by ALPN; yield its base URL.

    The listening socket is bound here (so its port is known without a race) and handed to
    hypercorn as a duplicate descriptor. Readiness needs no polling: hypercorn calls the
    shutdown trigger only once its servers listen, and that trigger signals "ready".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        config = Config()
        config.bind = [f"fd://{os.dup(sock.fileno())}"]
    config.certfile, config.keyfile = certfile, keyfile
    config.alpn_protocols = ["h2"]
    config.accesslog = None
    config.errorlog = logging.getLogger("tests.fakes.apns")
    config.graceful_timeout = 2.0
    ready = threading.Event()
    failures: list[BaseException] = []
    control: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def main() -> None:
        stop = asyncio.Event()
        control.append((asyncio.get_running_loop(), stop))

        async def trigger() -> None:
            ready.set()
            await stop.wait()

        await serve(app, config, shutdown_trigger=trigger)

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            failures.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="fake-apns", daemon=True)
    thread.start()
    if not ready.wait(timeout=10) or failures or not control:
        raise RuntimeError(f"HTTP/2 server did not start: {failures}")
    loop, stop = control[0]
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        if failures:
            raise RuntimeError("HTTP/2 server failed") from failures[0]
