"""A fake Twilio REST API: ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``.

It speaks Twilio's wire protocol: HTTP basic auth with the Account SID and Auth Token,
form-encoded parameters (``To``, ``From`` or ``MessagingServiceSid``, ``Body``,
``StatusCallback``), a 201 with the Message resource as JSON, and Twilio's error body
(``code``, ``message``, ``more_info``, ``status``) for bad credentials, missing parameters,
and the numbers a test declares invalid, opted out or landlines. Every request is
recorded. The :class:`~tests.fakes.control.FaultPlan` is consulted first.

Serve it with :func:`tests.fakes.http.serve` and point ``base_url`` at it.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from twilio.request_validator import RequestValidator

from channels.sms_segments import segments
from tests.fakes.control import FaultPlan, Scripted

ERRORS: dict[int, tuple[int, str]] = {
    400: (21211, "The 'To' number is not a valid phone number."),
    401: (20003, "Authenticate"),
    403: (20403, "Forbidden"),
    404: (20404, "The requested resource was not found"),
    429: (20429, "Too Many Requests"),
    500: (20500, "Internal Server Error"),
    503: (20503, "Service Unavailable"),
}
"""Twilio's own error code and message for a bare HTTP status (scripted answers)."""


def error_body(status: int, code: int | None = None, message: str | None = None) -> dict[str, Any]:
    """Twilio's JSON error body."""
    default_code, default_message = ERRORS.get(status, (20000 + status, "Error"))
    code = code if code is not None else default_code
    return {
        "code": code,
        "message": message if message is not None else default_message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """``X-Twilio-Signature`` as Twilio computes it for a webhook to ``url`` with ``params``."""
    make: Callable[[str], Any] = RequestValidator  # twilio's validator is not annotated
    signature: str = make(auth_token).compute_signature(url, dict(params))
    return signature


@dataclass(frozen=True)
class ReceivedRequest:
    """One request to the Messages endpoint, whatever was answered."""

    account_sid: str
    form: dict[str, str]
    headers: dict[str, str]
    authorised: bool


@dataclass
class FakeTwilio:
    """State of the fake: credentials, special numbers, recorded requests, fault plan."""

    account_sid: str = field(default_factory=lambda: new_sid("AC"))
    auth_token: str = field(default_factory=lambda: secrets.token_hex(16))
    invalid: set[str] = field(default_factory=set)
    """Numbers answered with 21211 (not a valid phone number)."""
    opted_out: set[str] = field(default_factory=set)
    """Numbers answered with 21610 (the recipient replied STOP)."""
    landlines: set[str] = field(default_factory=set)
    """Numbers answered with 21614 (not a mobile number)."""
    plan: FaultPlan = field(default_factory=FaultPlan)
    requests: list[ReceivedRequest] = field(default_factory=list)
    app: FastAPI = field(init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.app = _build_app(self)

    def reset(self) -> None:
        """Forget requests, special numbers and scripted faults (credentials stay)."""
        with self._lock:
            self.requests.clear()
        self.invalid.clear()
        self.opted_out.clear()
        self.landlines.clear()
        self.plan.clear()

    def received(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self.requests)

    def _record(self, request: ReceivedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def authorised(self, header: str | None) -> str | None:
        """The account the Authorization header proves, if it does."""
        if not header or not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        ok = secrets.compare_digest(user, self.account_sid) and secrets.compare_digest(
            password, self.auth_token
        )
        return user if ok else None

    def _message(self, account_sid: str, form: Mapping[str, str]) -> dict[str, Any]:
        sid = new_sid("SM")
        now = formatdate(usegmt=True).replace("GMT", "+0000")
        service = form.get("MessagingServiceSid")
        uri = f"/2010-04-01/Accounts/{account_sid}/Messages/{sid}"
        return {
            "account_sid": account_sid,
            "api_version": "2010-04-01",
            "body": form["Body"],
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": form.get("From"),
            "messaging_service_sid": service,
            "num_media": "0",
            "num_segments": str(segments(form["Body"]).segments),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            # Twilio answers "accepted" while a Messaging Service has yet to pick a sender.
            "status": "accepted" if service and not form.get("From") else "queued",
            "subresource_uris": {"media": f"{uri}/Media.json"},
            "to": form["To"],
            "uri": f"{uri}.json",
        }

    def answer(self, account_sid: str, form: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        to = form.get("To", "")
        if not to:
            return 400, error_body(400, 21604, "A 'To' phone number is required.")
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return 400, error_body(400, 21603, "A 'From' phone number is required.")
        body = form.get("Body", "")
        if not body:
            return 400, error_body(400, 21602, "Message body is required.")
        if len(body) > 1600:
            message = "The concatenated message body exceeds the 1600 character limit."
            return 400, error_body(400, 21617, message)
        if to in self.invalid:
            return 400, error_body(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if to in self.landlines:
            return 400, error_body(400, 21614, f"'To' number {to} is not a valid mobile number")
        if to in self.opted_out:
            return 400, error_body(400, 21610, "Attempt to send to unsubscribed recipient")
        return 201, self._message(account_sid, form)


def _build_app(fake: FakeTwilio) -> FastAPI:
    app = FastAPI()

    @app.post("/2010-04-01/Accounts/{account_sid}/Messages.json")
    async def create_message(account_sid: str, request: Request) -> Response:
        form = {key: str(value) for key, value in (await request.form()).items()}
        user = fake.authorised(request.headers.get("authorization"))
        fake._record(ReceivedRequest(account_sid, form, dict(request.headers), user is not None))
        scripted = fake.plan.next()
        if scripted is not None:
            if scripted.hang:
                await asyncio.sleep(scripted.hang)
            if scripted.status >= 400 or scripted.body is not None:
                return _scripted(scripted)
        if user is None:
            return JSONResponse(error_body(401), status_code=401)
        if user != account_sid:
            return JSONResponse(error_body(404), status_code=404)
        status, payload = fake.answer(account_sid, form)
        headers = scripted.headers if scripted is not None else None
        return JSONResponse(payload, status_code=status, headers=headers)

    return app


def _scripted(answer: Scripted) -> Response:
    if answer.body is not None:
        return Response(answer.body, status_code=answer.status, headers=answer.headers)
    return JSONResponse(
        error_body(answer.status), status_code=answer.status, headers=answer.headers
    )
