"""A fake Firebase Cloud Messaging (HTTP v1) with its OAuth2 token endpoint.

``POST /token`` verifies the service account's RS256 assertion (signature with the public
key, ``kid``, ``iss``, ``scope``, ``aud`` = the URL it was posted to, a lifetime of at most
an hour, not expired by the fake's clock) and issues an access token.
``POST /v1/projects/{project}/messages:send`` checks that bearer token and the message the
way FCM does and answers with FCM's own JSON, errors included. Both consult a
:class:`~tests.fakes.control.FaultPlan` first (``token_faults``, ``faults``).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from fastapi import FastAPI, Request, Response

from tests.fakes.control import FaultPlan, Scripted

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"

STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
"""The canonical Google status FCM puts in ``error.status`` for each HTTP status."""

FCM_CODES = {
    400: "INVALID_ARGUMENT",
    403: "SENDER_ID_MISMATCH",
    404: "UNREGISTERED",
    429: "QUOTA_EXCEEDED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
"""The ``FcmError.errorCode`` FCM adds for each status (401 from the auth layer has none)."""

MESSAGES = {
    400: "Request contains an invalid argument.",
    401: "Request had invalid authentication credentials. Expected OAuth 2 access token, "
    "login cookie or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project.",
    403: "SenderId mismatch",
    404: "Requested entity was not found.",
    429: "Quota exceeded for quota metric 'Send requests' and limit 'Send requests per minute'"
    " of service 'fcm.googleapis.com'.",
    500: "Internal error encountered.",
    503: "The service is currently unavailable.",
}

INVALID_TOKEN_MESSAGE = "The registration token is not a valid FCM registration token"

TOKEN_ERRORS: dict[str, tuple[int, str]] = {
    "UNREGISTERED": (404, "Requested entity was not found."),
    "INVALID_ARGUMENT": (400, INVALID_TOKEN_MESSAGE),
    "SENDER_ID_MISMATCH": (403, "SenderId mismatch"),
    "THIRD_PARTY_AUTH_ERROR": (401, "Auth error from APNS or Web Push Service"),
}
"""What FCM answers for a registration token in each state, by ``FcmError.errorCode``."""

_MESSAGE_FIELDS = frozenset(
    {"name", "data", "notification", "android", "webpush", "apns", "fcm_options", "token"}
    | {"topic", "condition"}
)


def error_body(
    status: int,
    *,
    fcm_code: str | None = None,
    message: str | None = None,
    field_violation: tuple[str, str] | None = None,
) -> bytes:
    """FCM's error JSON: ``{"error": {"code", "message", "status", "details"}}``."""
    code = fcm_code if fcm_code is not None else FCM_CODES.get(status)
    details: list[dict[str, Any]] = []
    if code:
        details.append({"@type": FCM_ERROR_TYPE, "errorCode": code})
    if field_violation is not None:
        field, description = field_violation
        details.append(
            {
                "@type": BAD_REQUEST_TYPE,
                "fieldViolations": [{"field": field, "description": description}],
            }
        )
    error: dict[str, Any] = {
        "code": status,
        "message": message or MESSAGES.get(status, "Unknown error."),
        "status": STATUS_NAMES.get(status, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return json.dumps({"error": error}).encode()


@dataclass(frozen=True)
class TokenExchange:
    """One call of the token endpoint: the assertion's header and claims, what was issued."""

    header: dict[str, Any]
    claims: dict[str, Any]
    access_token: str | None
    assertion: str


@dataclass(frozen=True)
class SendRequest:
    """One call of ``messages:send`` as the fake received it."""

    project: str
    headers: dict[str, str]
    body: Any
    access_token: str


class FakeFcm:
    """FCM and Google's token endpoint for one service account; state is inspectable."""

    def __init__(
        self,
        public_key: RSAPublicKey,
        *,
        client_email: str,
        private_key_id: str | None = None,
        project_id: str = "p",
        now: Callable[[], float] = time.time,
        expires_in: int = 3600,
    ) -> None:
        self.public_key = public_key
        self.client_email = client_email
        self.private_key_id = private_key_id
        self.project_id = project_id
        self.now = now
        self.expires_in = expires_in
        self.faults = FaultPlan()
        """Consulted first by ``messages:send``."""
        self.token_faults = FaultPlan()
        """Consulted first by the token endpoint."""
        self.token_errors: dict[str, str] = {}
        """Registration token -> FCM errorCode it fails with (a key of TOKEN_ERRORS)."""
        self.exchanges: list[TokenExchange] = []
        self.token_calls = 0
        """Calls of the token endpoint, scripted ones included."""
        self.requests: list[SendRequest] = []
        self.delivered: list[SendRequest] = []
        self._access: dict[str, float] = {}
        self.app = self._build()

    @property
    def issued(self) -> list[str]:
        return [e.access_token for e in self.exchanges if e.access_token]

    def revoke_access_tokens(self) -> None:
        """Forget every issued access token (as if revoked): the next send gets a 401."""
        self._access.clear()

    def _build(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

        @app.post("/token")
        async def token(request: Request) -> Response:
            return await self._token(request)

        @app.post("/v1/projects/{project}/messages:send")
        async def send(project: str, request: Request) -> Response:
            return await self._send(project, request)

        return app

    async def _token(self, request: Request) -> Response:
        raw = await request.body()
        self.token_calls += 1
        scripted = self.token_faults.next()
        if scripted is not None:
            answer = await _play(request, scripted, _oauth_error(scripted.status))
            if answer is not None:
                return answer
        if (
            request.headers.get("content-type", "").split(";")[0]
            != "application/x-www-form-urlencoded"
        ):
            return _oauth(400, "invalid_request", "Bad Request")
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        if form.get("grant_type") != JWT_BEARER_GRANT:
            return _oauth(
                400, "unsupported_grant_type", f"Invalid grant_type: {form.get('grant_type')}"
            )
        assertion = form.get("assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
            claims: dict[str, Any] = jwt.decode(
                assertion,
                self.public_key,
                algorithms=["RS256"],
                audience=str(request.url),
                options={"verify_exp": False, "verify_iat": False, "require": ["iat", "exp"]},
            )
        except jwt.InvalidTokenError:
            self.exchanges.append(TokenExchange({}, {}, None, assertion))
            return _oauth(400, "invalid_grant", "Invalid JWT Signature.")
        now = self.now()
        problem = None
        if self.private_key_id is not None and header.get("kid") != self.private_key_id:
            problem = "invalid_grant", "Invalid JWT Signature."
        elif claims.get("iss") != self.client_email:
            problem = "invalid_grant", "Invalid grant: account not found"
        elif FCM_SCOPE not in str(claims.get("scope", "")).split():
            problem = "invalid_scope", "Invalid OAuth scope or ID token audience provided."
        elif not (
            claims["iat"] - 300 <= now < claims["exp"] and claims["exp"] - claims["iat"] <= 3600
        ):
            problem = (
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                "reasonable timeframe. Check your iat and exp values in the JWT claim.",
            )
        if problem is not None:
            self.exchanges.append(TokenExchange(header, claims, None, assertion))
            return _oauth(400, *problem)
        access = "ya29.fake-" + secrets.token_urlsafe(24)
        self._access[access] = now + self.expires_in
        self.exchanges.append(TokenExchange(header, claims, access, assertion))
        return _json(
            200, {"access_token": access, "expires_in": self.expires_in, "token_type": "Bearer"}
        )

    async def _send(self, project: str, request: Request) -> Response:
        raw = await request.body()
        auth = request.headers.get("authorization", "")
        access = auth[7:] if auth[:7].lower() == "bearer " else ""
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        record = SendRequest(project, dict(request.headers), body, access)
        self.requests.append(record)
        scripted = self.faults.next()
        if scripted is not None:
            answer = await _play(request, scripted, error_body(scripted.status))
            if answer is not None:
                return answer
        expires = self._access.get(access)
        if expires is None or self.now() >= expires:
            return _error(401, fcm_code="")
        if project != self.project_id:
            message = (
                "Permission 'cloudmessaging.messages.create' denied on resource "
                f"'//cloudresourcemanager.googleapis.com/projects/{project}' (or it may not exist)."
            )
            return _error(403, fcm_code="", message=message)
        invalid = _invalid_message(body)
        if invalid is not None:
            return _error(
                400, message=f"Invalid value at '{invalid}'", field_violation=(invalid, "invalid")
            )
        token = body["message"]["token"]
        state = self.token_errors.get(token)
        if state is not None:
            status, message = TOKEN_ERRORS[state]
            violation = ("message.token", message) if state == "INVALID_ARGUMENT" else None
            return _error(status, fcm_code=state, message=message, field_violation=violation)
        self.delivered.append(record)
        name = f"projects/{project}/messages/0:{len(self.delivered)}%{secrets.token_hex(8)}"
        return _json(200, {"name": name})


def _invalid_message(body: Any) -> str | None:
    """The first field FCM would reject in a token message, or None."""
    if not isinstance(body, dict) or set(body) - {"message", "validate_only"}:
        return "message"
    message = body.get("message")
    if not isinstance(message, dict) or set(message) - _MESSAGE_FIELDS:
        return "message"
    if sum(key in message for key in ("token", "topic", "condition")) != 1:
        return "message.token"
    if not isinstance(message.get("token"), str) or not message["token"]:
        return "message.token"
    for part in ("notification", "data"):
        value = message.get(part, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            return f"message.{part}"
    android = message.get("android", {})
    if not isinstance(android, dict) or android.get("priority", "normal") not in (
        "high",
        "normal",
        "HIGH",
        "NORMAL",
    ):
        return "message.android.priority"
    for part in ("apns", "webpush"):
        block = message.get(part, {})
        headers = block.get("headers", {}) if isinstance(block, dict) else None
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            return f"message.{part}.headers"
    collapse = message.get("apns", {}).get("headers", {}).get("apns-collapse-id", "")
    if len(collapse.encode()) > 64:  # APNs' limit, which FCM applies
        return "message.apns.headers"
    link = message.get("webpush", {}).get("fcm_options", {}).get("link", "https://")
    if not isinstance(link, str) or not link.startswith("https://"):
        return "message.webpush.fcm_options.link"  # "HTTPS is required"
    return None


async def _play(request: Request, scripted: Scripted, default_body: bytes) -> Response | None:
    """Act out a scripted answer; None means: go on normally (a slow success)."""
    if scripted.hang and await client_left(request, scripted.hang):
        return Response(status_code=499)
    if scripted.status < 400 and scripted.body is None:
        return None
    body = scripted.body if scripted.body is not None else default_body
    return Response(
        body, status_code=scripted.status, headers=scripted.headers, media_type="application/json"
    )


async def client_left(request: Request, seconds: float) -> bool:
    """Wait ``seconds``, cut short when the client disconnects (the body was read)."""

    async def disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(disconnect(), timeout=seconds)
    except TimeoutError:
        return False
    return True


def _oauth_error(status: int) -> bytes:
    kind = "invalid_grant" if status < 500 else "internal_failure"
    return json.dumps({"error": kind, "error_description": MESSAGES.get(status, "")}).encode()


def _oauth(status: int, error: str, description: str) -> Response:
    return _json(status, {"error": error, "error_description": description})


def _error(
    status: int,
    *,
    fcm_code: str | None = None,
    message: str | None = None,
    field_violation: tuple[str, str] | None = None,
) -> Response:
    body = error_body(status, fcm_code=fcm_code, message=message, field_violation=field_violation)
    return Response(body, status_code=status, media_type="application/json")


def _json(status: int, payload: dict[str, Any]) -> Response:
    return Response(json.dumps(payload).encode(), status_code=status, media_type="application/json")
