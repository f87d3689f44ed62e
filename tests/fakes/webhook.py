"""A webhook receiver that checks requests the way a careful real one does.

It verifies the ``v1`` HMAC signature over the raw body with :func:`channels.webhook.verify`
(constant time, five-minute replay window), de-duplicates on ``Idempotency-Key``, answers
410 for paths configured as gone, and consults its :class:`FaultPlan` first.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import anyio
from fastapi import FastAPI, Request, Response

from channels.webhook import DEFAULT_TOLERANCE, verify
from tests.fakes.control import FaultPlan, Scripted


@dataclass(frozen=True)
class HookRequest:
    """One request as it arrived, whatever the answer was."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    def json(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.body)
        return document


class WebhookReceiver:
    """Records every request in ``requests`` and the accepted ones in ``accepted``."""

    def __init__(
        self,
        secret: str,
        *,
        clock: Callable[[], float] = time.time,
        tolerance: float = DEFAULT_TOLERANCE,
        timestamp_header: str = "X-Broadcaster-Timestamp",
        signature_header: str = "X-Broadcaster-Signature",
        idempotency_header: str = "Idempotency-Key",
    ) -> None:
        self.secret = secret
        self.faults = FaultPlan()
        self.gone: set[str] = set()
        self.requests: list[HookRequest] = []
        self.accepted: list[HookRequest] = []
        self.duplicates = 0
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._clock = clock
        self._tolerance = tolerance
        self._ts = timestamp_header
        self._sig = signature_header
        self._key = idempotency_header
        self.app = FastAPI()
        self.app.add_api_route("/{path:path}", self._handle, methods=["POST"])

    async def _handle(self, path: str, request: Request) -> Response:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        answer = await self._answer(path, request, headers, body)
        with self._lock:
            self.requests.append(HookRequest("/" + path, headers, body, answer.status_code))
        return answer

    async def _answer(
        self, path: str, request: Request, headers: dict[str, str], body: bytes
    ) -> Response:
        scripted = self.faults.next()
        if scripted is not None:
            return await _scripted(scripted, request)
        if "/" + path in self.gone:
            return _error(410, "this hook was removed")
        ok = verify(
            self.secret,
            headers.get(self._ts.lower(), ""),
            body,
            headers.get(self._sig.lower(), ""),
            now=self._clock(),
            tolerance=self._tolerance,
        )
        if not ok:
            return _error(401, "signature does not verify")
        try:
            json.loads(body)
        except ValueError:
            return _error(400, "body is not JSON")
        key = headers.get(self._key.lower(), "")
        with self._lock:
            duplicate = bool(key) and key in self._seen
            self._seen.add(key)
            if duplicate:
                self.duplicates += 1
            else:
                self.accepted.append(HookRequest("/" + path, headers, body, 200))
        return Response(
            json.dumps({"status": "duplicate" if duplicate else "accepted"}),
            status_code=200,
            media_type="application/json",
        )


async def _scripted(scripted: Scripted, request: Request) -> Response:
    if scripted.hang:
        # Wait until the client gives up (disconnects) or the hang is over, whichever first.
        with anyio.move_on_after(scripted.hang):
            await request.receive()
    if scripted.body is None:
        body = json.dumps({"error": _phrase(scripted.status)}).encode()
    else:
        body = scripted.body
    return Response(body, status_code=scripted.status, headers=scripted.headers)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _error(status: int, message: str) -> Response:
    return Response(
        json.dumps({"error": message}), status_code=status, media_type="application/json"
    )
