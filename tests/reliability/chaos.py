"""Random faults in front of a fake provider: HTTP-level answers and TCP resets.

:class:`Chaos` wraps a fake provider's ASGI app and, for a chosen share of requests, answers
with a fault instead of (or on top of) the fake's normal behaviour. It decides at random with
a seeded generator and counts what it did, so a test can check that faults really happened.
:class:`ResetProxy` sits in front of a server on the TCP level and resets a share of the
requests' connections (RST), which no ASGI app can do.

Fault kinds (``Chaos``):

- ``5xx``: 500, 502 or 503, answered without reaching the fake;
- ``429``: 429 with ``Retry-After: 1``;
- ``timeout``: no answer until after the client's timeout; the fake never sees the request;
- ``late``: the fake *accepts* the request but the answer comes after the client's timeout
  (the provider did its work; the client cannot know): the one case that makes a duplicate
  request, which the receiver must drop by its idempotency key;
- ``slow``: the fake's normal answer, late but within the client's timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Any
"""An ASGI application (FastAPI types its own signature with MutableMapping)."""

KINDS = ("5xx", "429", "timeout", "late", "slow")


class Chaos:
    """An ASGI middleware failing ``rate`` of the requests at random (see the module doc)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        rate: float,
        client_timeout: float,
        seed: int,
        kinds: tuple[str, ...] = KINDS,
    ) -> None:
        self.app = app
        self.rate = rate
        self.kinds = kinds
        self.client_timeout = client_timeout
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.enabled = True

    def _roll(self) -> str:
        with self._lock:
            self.counts["requests"] += 1
            if not self.enabled or self._rng.random() >= self.rate:
                return "ok"
            kind = self._rng.choice(self.kinds)
            self.counts[kind] += 1
            return kind

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind = self._roll()
        if kind == "ok":
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if kind == "5xx":
            status = self._rng.choice((500, 502, 503))
            await _answer(send, status, b'{"error":"injected fault"}')
        elif kind == "429":
            await _answer(send, 429, b'{"error":"slow down"}', [(b"retry-after", b"1")])
        elif kind == "timeout":
            await asyncio.sleep(self.client_timeout * 1.5)
            with contextlib.suppress(Exception):  # the client has gone
                await _answer(send, 504, b'{"error":"too late"}')
        elif kind == "late":
            held: list[dict[str, Any]] = []

            async def hold(message: dict[str, Any]) -> None:
                held.append(message)

            await self.app(scope, _replay(body), hold)
            await asyncio.sleep(self.client_timeout * 1.5)
            for message in held:
                with contextlib.suppress(Exception):  # the client has gone
                    await send(message)
        else:  # slow
            await asyncio.sleep(self.client_timeout * 0.3)
            await self.app(scope, _replay(body), send)


async def _read_body(receive: Receive) -> bytes:
    body, more = b"", True
    while more:
        event = await receive()
        if event["type"] == "http.disconnect":
            break
        body += event.get("body", b"")
        more = bool(event.get("more_body"))
    return body


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # like a client that keeps the connection open
        raise AssertionError("unreachable")

    return receive


async def _answer(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    start = {"type": "http.response.start", "status": status}
    all_headers = [(b"content-type", b"application/json"), *(headers or [])]
    await send(start | {"headers": all_headers})
    await send({"type": "http.response.body", "body": body})


_METHODS = (b"GET ", b"POST ", b"PUT ", b"DELETE ", b"PATCH ")


class ResetProxy:
    """A TCP proxy to ``upstream`` that resets a share of the requests' connections.

    The decision is taken when a request starts (a chunk from the client beginning with an
    HTTP method), before any of it is forwarded: the server never sees a reset request.
    """

    def __init__(self, upstream_port: int, *, rate: float, seed: int) -> None:
        self.upstream_port = upstream_port
        self.rate = rate
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.resets = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ResetProxy:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def _reset_now(self) -> bool:
        with self._lock:
            if self._rng.random() < self.rate:
                self.resets += 1
                return True
            return False

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump_up, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump_down, args=(upstream, client), daemon=True).start()

    def _pump_up(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            while chunk := client.recv(65536):
                if chunk.startswith(_METHODS) and self._reset_now():
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    break
                upstream.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.close()

    def _pump_down(self, upstream: socket.socket, client: socket.socket) -> None:
        try:
            while chunk := upstream.recv(65536):
                client.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.close()
