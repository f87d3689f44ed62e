"""A fake ntfy server: its publish API, its header aliases, its JSON errors and answers.

``POST``/``PUT /{topic}`` publishes, as on ntfy: the body is the message; title, priority,
tags, click, icon and sequence id come from headers under any of ntfy's aliases, RFC 2047
encoded words decoded; the answer is the message JSON (``{"id", "time", "expires",
"event": "message", "topic", ...}``). Errors carry ntfy's body
``{"code": 40401, "http": 404, "error": "...", "link": "..."}`` with ntfy's codes. Access:
``tokens`` and ``users`` are accepted credentials; wrong credentials get 401, anonymous
publishing gets 403 when ``anonymous_write`` is off. The :class:`FaultPlan` comes first.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from typing import Any

import anyio
from fastapi import FastAPI, Request, Response

from tests.fakes.control import FaultPlan, Scripted

TOPIC = re.compile(r"^[-_A-Za-z0-9]{1,64}$")
DISALLOWED = {"docs", "static", "file", "app", "account", "settings", "pricing", "signup"} | {
    "login",
    "reset-password",
}
PRIORITIES = {"1": 1, "min": 1, "2": 2, "low": 2, "3": 3, "default": 3, "4": 4, "high": 4}
PRIORITIES |= {"5": 5, "max": 5, "urgent": 5}

# ntfy's own error table (server/errors.go), the entries a publisher can meet.
ERRORS: dict[int, tuple[int, str, str]] = {
    400: (40007, "invalid priority parameter", "https://ntfy.sh/docs/publish/#message-priority"),
    401: (40101, "unauthorized", "https://ntfy.sh/docs/publish/#authentication"),
    403: (40301, "forbidden", "https://ntfy.sh/docs/publish/#authentication"),
    404: (40401, "page not found", ""),
    413: (41301, "attachment too large, or bandwidth limit reached", ""),
    429: (
        42901,
        "limit reached: too many requests, please be nice",
        "https://ntfy.sh/docs/publish/#limitations",
    ),
    500: (50001, "internal server error", ""),
}
TOPIC_INVALID = (40009, "invalid request: topic invalid", "")
TOPIC_DISALLOWED = (40010, "invalid request: topic name is disallowed", "")


@dataclass(frozen=True)
class Published:
    """One accepted message as ntfy stored it, and the raw request headers."""

    topic: str
    message: dict[str, Any]
    headers: dict[str, str]
    user: str | None


class NtfyServer:
    """Records accepted messages in ``published`` and every request's headers in ``requests``."""

    def __init__(
        self,
        *,
        tokens: Iterable[str] = (),
        users: dict[str, str] | None = None,
        anonymous_write: bool = True,
        message_limit: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.faults = FaultPlan()
        self.published: list[Published] = []
        self.requests: list[dict[str, str]] = []
        self._tokens = set(tokens)
        self._users = dict(users or {})
        self._anonymous_write = anonymous_write
        self._limit = message_limit
        self._clock = clock
        self._lock = threading.Lock()
        self.app = FastAPI()
        self.app.add_api_route("/{topic}", self._publish, methods=["POST", "PUT"])

    async def _publish(self, topic: str, request: Request) -> Response:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        with self._lock:
            self.requests.append(headers)
        scripted = self.faults.next()
        if scripted is not None:
            return await _scripted(scripted, request)
        if not TOPIC.match(topic):
            return error(404)
        if topic in DISALLOWED:
            return error(400, TOPIC_DISALLOWED)
        user, denied = self._authenticate(headers.get("authorization"))
        if denied is not None:
            return denied
        if len(body) > self._limit:
            return error(413)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return error(400, (40011, "invalid message: message must be UTF-8 encoded", ""))
        raw_priority = _param(headers, "x-priority", "priority", "prio", "p")
        priority = PRIORITIES.get(raw_priority.lower()) if raw_priority else 3
        if priority is None:
            return error(400)
        sequence = _param(headers, "x-sequence-id", "sequence-id", "sid")
        if sequence and not TOPIC.match(sequence):
            # ntfy checks sequence ids against its topic rule; the code number is this fake's.
            return error(400, (40049, "invalid request: sequence ID invalid", ""))
        now = int(self._clock())
        message: dict[str, Any] = {
            "id": secrets.token_urlsafe(9)[:12],
            "time": now,
            "expires": now + 43200,
            "event": "message",
            "topic": topic,
            "message": text or "triggered",
        }
        title = _param(headers, "x-title", "title", "ti", "t")
        if title:
            message["title"] = title
        if priority != 3:
            message["priority"] = priority
        tags = _param(headers, "x-tags", "tags", "tag", "ta")
        if tags:
            message["tags"] = [t.strip() for t in tags.split(",") if t.strip()]
        for field, names in (("click", ("x-click", "click")), ("icon", ("x-icon", "icon"))):
            value = _param(headers, *names)
            if value:
                message[field] = value
        if sequence:
            message["sequence_id"] = sequence
        with self._lock:
            self.published.append(Published(topic, message, headers, user))
        return Response(json.dumps(message) + "\n", media_type="application/json")

    def _authenticate(self, authorization: str | None) -> tuple[str | None, Response | None]:
        if authorization is None:
            return None, (None if self._anonymous_write else error(403))
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value in self._tokens:
            return f"token:{value[:6]}", None
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None, error(401)
            if self._users.get(user) == password:
                return user, None
        return None, error(401)


def error(status: int, entry: tuple[int, str, str] | None = None) -> Response:
    """ntfy's JSON error body for ``status`` (or a specific table entry)."""
    code, text, link = entry or ERRORS.get(status, (status * 100 + 1, "error", ""))
    document: dict[str, Any] = {"code": code, "http": status, "error": text}
    if link:
        document["link"] = link
    return Response(json.dumps(document) + "\n", status_code=status, media_type="application/json")


def _param(headers: dict[str, str], *names: str) -> str:
    for name in names:
        if name in headers:
            try:
                return str(make_header(decode_header(headers[name])))
            except (HeaderParseError, UnicodeDecodeError, LookupError):
                return headers[name]
    return ""


async def _scripted(scripted: Scripted, request: Request) -> Response:
    if scripted.hang:
        with anyio.move_on_after(scripted.hang):
            await request.receive()
    if scripted.body is None:
        answer = error(scripted.status)
        answer.headers.update(scripted.headers)
        return answer
    return Response(scripted.body, status_code=scripted.status, headers=scripted.headers)
