"""Refuse request bodies over ``http.max_body_bytes`` with 413, before a handler reads them.

A declared ``Content-Length`` over the limit is refused at once; a chunked body is counted
as it arrives and cut off when it passes the limit. Paths with a limit of their own (the
customer import streams to disk and counts itself) are exempt.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int, exempt: Iterable[tuple[str, str]] = ()) -> None:
        self.app = app
        self.limit = limit
        self.exempt = frozenset(exempt)
        """(method, exact path) pairs that count their own bodies."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) in self.exempt:
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await refuse(send, 400, "Content-Length is not a number")
                    return
                if declared > self.limit:
                    await refuse(send, 413, self._message())
                    return
        seen = 0
        started = False
        refused = False

        async def counted() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # Answer 413 now and tell the app the client has gone: whatever it
                    # does about that is not sent.
                    refused = True
                    if not started:
                        await refuse(send, 413, self._message())
                    return {"type": "http.disconnect"}
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counted, tracked)

    def _message(self) -> str:
        return f"the request body is larger than {self.limit} bytes (http.max_body_bytes)"


async def refuse(send: Send, status: int, message: str, *, field: str | None = None) -> None:
    """Answer ``status`` with the API's JSON error body (``field``, when given, names the
    offending input)."""
    error: dict[str, str] = {"message": message}
    if field is not None:
        error["field"] = field
    body = json.dumps({"error": error}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
