"""The local sinks every benchmark sends to, in a process of their own.

``python -m bench.sinks`` serves, on 127.0.0.1:

- one uvicorn HTTP server for control: ``GET /_stats`` (requests counted per sink),
  ``GET /_hook`` (the webhook sink's requests per path, distinct ``Idempotency-Key``
  values, first and last arrival), ``GET /_sample/<sink>`` and ``POST /_reset``;
- one webhook receiver (:class:`HookProtocol`): ``POST`` to any path, the whole body read,
  a 200 with a small JSON document, the connection kept alive;
- one fake Twilio Messages API (:class:`TwilioProtocol`): the answers of
  :mod:`tests.fakes.twilio` (real wire protocol: basic auth, form parameters, a 201 with
  the Message resource, Twilio's error documents);
- one aiosmtpd SMTP server (no TLS, no auth, PIPELINING offered) that counts the messages
  it accepts.

The two HTTP sinks under load are asyncio protocols of their own (:class:`LeanHttpProtocol`),
not a web framework: on a 2-core machine the sinks share the cores with the senders under
test and PostgreSQL, and every microsecond they spend is taken from them. aiohttp's server
took about 100 µs of CPU per request; the webhook sink about a third of that, near the
issue's reference sink (about 30,000 requests/s on one core). uvicorn without
``httptools`` (not installed here) parses with ``h11`` in pure Python: the fake Twilio
behind it, as a FastAPI app, answered about 2,100 requests/s, below the SMS channel's
client, so the SMS ratio measured the sink.

It prints one JSON line with the ports, then serves until its standard input closes or it
is terminated. The sinks run in their own process so that they do not share the sender's
interpreter lock: sender and sink each get a core, as in the issue's reference figures.
:class:`Sinks` starts and stops that process from a benchmark.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

import httpx

from tests.fakes.twilio import FakeTwilio, error_body

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

HOOK_ANSWER = b'{"status":"accepted"}'


class _Counts:
    """Requests per sink, and the last request each sink received (a sample the raw
    baselines replay: the same bytes the pipeline sent)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self.samples: dict[str, Callable[[], dict[str, Any]]] = {}
        self._hook_paths: Counter[str] = Counter()
        self._hook_keys: set[int | str] = set()
        self._hook_first: float | None = None
        self._hook_last: float | None = None

    def add(self, kind: str, sample: Callable[[], dict[str, Any]] | None = None) -> None:
        with self._lock:
            self._counts[kind] += 1
            if sample is not None:
                self.samples[kind] = sample

    def add_hook(self, path: str, key: str | None) -> None:
        """A webhook request: counted per path (a sender can be told apart by the path it
        posts to), its idempotency key kept (a delivery's ``delivery-<id>`` as the id, so
        that a million keys stay small), and the wall-clock time of the first and last."""
        now = time.time()
        with self._lock:
            self._hook_paths[path] += 1
            if key is not None:
                number = key.removeprefix("delivery-")
                self._hook_keys.add(int(number) if number.isdigit() else key)
            if self._hook_first is None:
                self._hook_first = now
            self._hook_last = now

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def hook_snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "paths": dict(self._hook_paths),
                "distinct_keys": len(self._hook_keys),
                "first_at": self._hook_first,
                "last_at": self._hook_last,
            }

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self._hook_paths.clear()
            self._hook_keys.clear()
            self._hook_first = self._hook_last = None


App = Callable[[Scope, Receive, Send], Awaitable[None]]


def build_app(counts: _Counts) -> App:
    """The ASGI app of the control server: stats, samples, reset."""

    async def respond(send: Send, status: int, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        body = b""
        more = True
        while more:  # read the whole body, as a real receiver must
            message = await receive()
            body += message.get("body", b"")
            more = bool(message.get("more_body", False))
        if path == "/_stats":
            await respond(send, 200, json.dumps(counts.snapshot()).encode())
        elif path == "/_hook":
            await respond(send, 200, json.dumps(counts.hook_snapshot()).encode())
        elif path.startswith("/_sample/"):
            make = counts.samples.get(path.removeprefix("/_sample/"))
            found = make() if make is not None else None
            await respond(send, 200 if found else 404, json.dumps(found).encode())
        elif path == "/_reset":
            counts.reset()
            await respond(send, 200, b"{}")
        else:
            await respond(send, 404, b'{"error":"not found"}')

    return app


def _sampler(path: str, headers: Any, body: bytes) -> Callable[[], dict[str, Any]]:
    """The request as JSON, made only when asked for (the sink stays cheap per request)."""

    def make() -> dict[str, Any]:
        pairs = [
            [k.decode("latin-1"), v.decode("latin-1")] if isinstance(k, bytes) else [k, v]
            for k, v in headers
        ]
        return {"path": path, "headers": pairs, "body": base64.b64encode(body).decode()}

    return make


MAX_HEAD = 64 * 1024
"""Bytes of request line and headers the webhook sink reads before it gives up (431)."""


def _answer(status: str, body: bytes, *, close: bool) -> bytes:
    connection = b"close" if close else b"keep-alive"
    return (
        b"HTTP/1.1 " + status.encode("ascii") + b"\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode("ascii") + b"\r\n"
        b"Connection: " + connection + b"\r\n\r\n" + body
    )


_ACCEPTED = _answer("200 OK", HOOK_ANSWER, close=False)
_ACCEPTED_CLOSE = _answer("200 OK", HOOK_ANSWER, close=True)


class Request(NamedTuple):
    """One request a lean sink read whole."""

    method: str
    path: str  # the target without its query
    headers: list[tuple[str, str]]  # as sent, in order
    named: dict[str, str]  # the values by lower-case name (the last of a repeated one)
    body: bytes
    close: bool  # the connection closes after the answer


class LeanHttpProtocol(asyncio.Protocol):
    """One connection to a lean HTTP sink: HTTP/1.1 requests with a ``Content-Length``
    body (how every sender under test posts), any number in a row on one connection, each
    read whole before :meth:`answer` answers it. What it does not take, it answers with
    an error and closes: a malformed request line or header (400), a body without a
    length (411: chunked bodies are not read), a head past ``MAX_HEAD`` (431).

    An asyncio protocol of its own, not a web framework: on a 2-core machine the sinks
    share the cores with the senders under test and PostgreSQL, and every microsecond
    they spend is taken from them."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def answer(self, request: Request) -> bytes:
        """The whole HTTP answer to one request."""
        raise NotImplementedError

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._transport is not None and not self._transport.is_closing():
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD:
                    self._refuse("431 Request Header Fields Too Large", "head too large")
                return
            lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
            request = lines[0].split(" ")
            headers: list[tuple[str, str]] = []
            named: dict[str, str] = {}
            for line in lines[1:]:
                name, colon, value = line.partition(":")
                if not colon or not name or name != name.strip():
                    self._refuse("400 Bad Request", f"malformed header line {line[:40]!r}")
                    return
                headers.append((name, value.strip()))
                named[name.lower()] = value.strip()
            if len(request) != 3 or not request[2].startswith("HTTP/1."):
                self._refuse("400 Bad Request", f"malformed request line {lines[0][:40]!r}")
                return
            if "transfer-encoding" in named:
                self._refuse("411 Length Required", "only Content-Length bodies are read")
                return
            length = named.get("content-length", "0")
            if not length.isdigit():
                self._refuse("400 Bad Request", f"bad Content-Length {length[:20]!r}")
                return
            whole = end + 4 + int(length)
            if len(self._buffer) < whole:
                return  # the rest of the body is on its way
            body = bytes(self._buffer[end + 4 : whole])
            del self._buffer[:whole]
            method, target, version = request
            close = named.get("connection", "").lower() == "close" or version == "HTTP/1.0"
            path = target.split("?", 1)[0]
            answer = self.answer(Request(method, path, headers, named, body, close))
            self._transport.write(answer)
            if close:
                self._transport.close()

    def _refuse(self, status: str, why: str) -> None:
        assert self._transport is not None
        body = json.dumps({"error": why}).encode()
        self._transport.write(_answer(status, body, close=True))
        self._transport.close()
        self._buffer.clear()


class HookProtocol(LeanHttpProtocol):
    """The webhook sink: a ``POST`` to any path is counted (path, ``Idempotency-Key``, a
    sample) and gets a 200 with a small JSON document; another method a 405."""

    def __init__(self, counts: _Counts) -> None:
        super().__init__()
        self._counts = counts

    def answer(self, request: Request) -> bytes:
        if request.method != "POST":
            return _answer("405 Method Not Allowed", b"{}", close=request.close)
        self._counts.add("hook", _sampler(request.path, request.headers, request.body))
        self._counts.add_hook(request.path, request.named.get("idempotency-key"))
        return _ACCEPTED_CLOSE if request.close else _ACCEPTED


_MESSAGES_PATH = re.compile(r"/2010-04-01/Accounts/([^/]+)/Messages\.json")
_FORM = "application/x-www-form-urlencoded"


class TwilioProtocol(LeanHttpProtocol):
    """The fake Twilio Messages API (``POST /2010-04-01/Accounts/{sid}/Messages.json``)
    with the wire protocol of :mod:`tests.fakes.twilio`, which decides every answer (basic
    auth against the account's SID and token, the form's parameters, a 201 with the
    Message resource or Twilio's error document): only the HTTP around it is lean. The
    fake's own server (FastAPI on uvicorn, parsing with h11) answered about 2,100 requests
    a second, below the channel's client, so the SMS ratio measured the sink, not the
    pipeline. Every POST to the Messages resource is counted, as a real API bills it."""

    def __init__(self, counts: _Counts, twilio: FakeTwilio) -> None:
        super().__init__()
        self._counts = counts
        self._twilio = twilio

    def answer(self, request: Request) -> bytes:
        close = request.close
        found = _MESSAGES_PATH.fullmatch(request.path)
        if found is None:
            return _json_answer(404, error_body(404), close)
        if request.method != "POST":
            return _json_answer(405, error_body(405), close)
        self._counts.add("twilio", _sampler(request.path, request.headers, request.body))
        if request.named.get("content-type", "").split(";")[0].strip().lower() != _FORM:
            return _json_answer(400, error_body(400, 20001, "Expected a form body"), close)
        try:
            form = dict(parse_qsl(request.body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            return _json_answer(400, error_body(400, 20001, "The form is not UTF-8"), close)
        user = self._twilio.authorised(request.named.get("authorization"))
        if user is None:
            return _json_answer(401, error_body(401), close)
        account = found.group(1)
        if user != account:
            return _json_answer(404, error_body(404), close)
        status, payload = self._twilio.answer(account, form)
        return _json_answer(status, payload, close)


def _json_answer(status: int, payload: Any, close: bool) -> bytes:
    phrase = HTTPStatus(status).phrase
    return _answer(f"{status} {phrase}", json.dumps(payload).encode(), close=close)


SINK_CPU_ENV = "BENCH_SINK_CPU"
"""The CPU the sink process runs on, when set (``python -m bench --pin``)."""


def _serve() -> None:
    import socket

    cpu = os.environ.get(SINK_CPU_ENV)
    if cpu:  # first, so that every thread of the sinks inherits it
        os.sched_setaffinity(0, {int(cpu)})

    import uvicorn
    from aiosmtpd.controller import Controller

    counts = _Counts()
    twilio = FakeTwilio()

    class Handler:
        async def handle_EHLO(
            self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
        ) -> list[str]:
            # PIPELINING offered, as the relays in use offer it (aiosmtpd serves pipelined
            # commands in order; it only does not say so). The email channel uses it;
            # aiosmtplib, the baseline, does not.
            session.host_name = hostname
            return [*responses[:-1], "250-PIPELINING", responses[-1]]

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            content = envelope.original_content or envelope.content
            sender, recipients = envelope.mail_from, list(envelope.rcpt_tos)
            counts.add(
                "smtp",
                lambda: {
                    "from": sender,
                    "to": recipients,
                    "body": base64.b64encode(content).decode(),
                },
            )
            return "250 OK"

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        smtp_port = probe.getsockname()[1]
    controller = Controller(Handler(), hostname="127.0.0.1", port=smtp_port)
    controller.start()
    hook_listener = socket.socket()
    hook_listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    hook_listener.bind(("127.0.0.1", 0))
    hook_port = hook_listener.getsockname()[1]
    twilio_listener = socket.socket()
    twilio_listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    twilio_listener.bind(("127.0.0.1", 0))
    twilio_port = twilio_listener.getsockname()[1]
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    http_port = listener.getsockname()[1]
    config = uvicorn.Config(
        build_app(counts),
        log_level="warning",
        lifespan="off",
        access_log=False,
        backlog=4096,
    )
    server = uvicorn.Server(config)

    def watch_stdin() -> None:
        sys.stdin.read()
        server.should_exit = True

    threading.Thread(target=watch_stdin, daemon=True).start()
    print(
        json.dumps(
            {
                "http": http_port,
                "hook": hook_port,
                "twilio": twilio_port,
                "smtp": smtp_port,
                "twilio_sid": twilio.account_sid,
                "twilio_token": twilio.auth_token,
            }
        ),
        flush=True,
    )

    async def serve_both() -> None:
        loop = asyncio.get_running_loop()
        hooks = await loop.create_server(
            lambda: HookProtocol(counts), sock=hook_listener, backlog=4096
        )
        messages = await loop.create_server(
            lambda: TwilioProtocol(counts, twilio), sock=twilio_listener, backlog=4096
        )
        try:
            await server.serve(sockets=[listener])
        finally:
            hooks.close()
            messages.close()

    try:
        asyncio.run(serve_both())
    finally:
        controller.stop()


class Sinks:
    """The sink process, started on entry and stopped on exit."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self.http_port = 0
        self.hook_port = 0
        self.twilio_port = 0
        self.smtp_port = 0
        self.twilio_sid = ""
        self.twilio_token = ""

    @property
    def pid(self) -> int | None:
        """The sink process's id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def twilio_url(self) -> str:
        """The fake Twilio API's base URL (the SMS channel's ``base_url``)."""
        return f"http://127.0.0.1:{self.twilio_port}"

    @property
    def hook_url(self) -> str:
        return f"http://127.0.0.1:{self.hook_port}/hook"

    def __enter__(self) -> Sinks:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.sinks"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError("the sink process did not start")
        ports = json.loads(line)
        self.http_port = int(ports["http"])
        self.hook_port = int(ports["hook"])
        self.twilio_port = int(ports["twilio"])
        self.smtp_port = int(ports["smtp"])
        self.twilio_sid = str(ports["twilio_sid"])
        self.twilio_token = str(ports["twilio_token"])
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{self.base_url}/_stats", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        process = self._process
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.terminate()
            process.wait(timeout=10)
        finally:
            if process.stdout is not None:
                process.stdout.close()

    async def stats(self) -> dict[str, int]:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{self.base_url}/_stats")
            counts: dict[str, int] = response.json()
            return counts

    async def hook_stats(self) -> dict[str, Any]:
        """The webhook sink's requests per path, distinct idempotency keys, and the unix
        times of the first and last request since the last reset (None before any)."""
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{self.base_url}/_hook")
            response.raise_for_status()
            found: dict[str, Any] = response.json()
            return found

    async def sample(self, kind: str) -> dict[str, Any]:
        """The last request the ``kind`` sink received (hook, twilio, smtp)."""
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{self.base_url}/_sample/{kind}")
            response.raise_for_status()
            found: dict[str, Any] = response.json()
            found["body"] = base64.b64decode(found["body"])
            return found

    async def reset(self) -> None:
        async with httpx.AsyncClient() as client:
            await client.post(f"{self.base_url}/_reset")


if __name__ == "__main__":
    _serve()
