"""The wire under the HTTP channels: pyreqwest (Rust's reqwest and hyper), behind httpx's API.

The channels speak httpx: requests as bytes and headers, answers read as an
:class:`httpx.Response` is read, failures as httpx's exceptions, a mock transport in tests.
Below that, the bytes go out
through pyreqwest, whose connection pool, HTTP/1.1 codec and TLS (rustls, with the system's
trust store) run in Rust, off the interpreter: the benchmarks measured about 50 µs of CPU
per request through it against about 110 µs through aiohttp and several hundred through
httpx's own pool with hundreds of sends in flight (docs/performance.md).

What this sender promises the channels:

- requests go out with exactly the caller's headers (plus Host, Content-Length and, where the
  caller sets none, ``Accept: */*`` and ``User-Agent: broadcaster``), never
  following redirects, never through a proxy from the environment, without cookies and
  without an ``Accept-Encoding`` of its own;
- the answer is an :class:`Answer` (what the channels read of :class:`httpx.Response`:
  ``status_code``, ``headers``, ``content``, ``text``, ``json()``), read whole; building
  an :class:`httpx.Response` for every send cost about 10 µs, a twentieth of a delivery's
  CPU. An answer with a ``Content-Encoding`` is handed to httpx to decode and comes back
  as its :class:`httpx.Response`;
- failures are httpx's exceptions, all :class:`httpx.TransportError`, as the channels'
  retry contracts expect: :class:`httpx.ReadTimeout`, :class:`httpx.WriteTimeout` and
  :class:`httpx.PoolTimeout` (the :class:`httpx.TimeoutException` kinds; reqwest reports a
  read that timed out as a connect timeout, so a connect timeout is a read timeout here,
  the reading under which the request may have arrived), :class:`httpx.ConnectError`,
  :class:`httpx.ReadError`, :class:`httpx.WriteError` and
  :class:`httpx.RemoteProtocolError`. Their text names the failure and its root cause, not
  the URL (paths often hold tokens);
- timeouts are httpx's, set once per sender: ``connect`` bounds opening a connection, ``read``
  each wait for response data, ``pool`` waiting for one of the ``max_connections`` slots
  (requests in flight); a request given a timeout of its own gets it as a deadline for the
  whole exchange;
- requests get a slot in the order they asked for one (Tokio's semaphore is fair), so a
  task that sends again at once cannot starve those already waiting.

One hazard comes with it, and :func:`exit_now` contains it. pyreqwest's native threads
take the GIL from time to time (a TLS connection's teardown, say), and CPython 3.11 aborts
the process (``Fatal Python error: PyGILState_Release``, SIGABRT) when one does so while
the interpreter finalizes: measured here, most processes that had made one HTTPS request
and exited right after aborted, and now and then one that had made only plain HTTP
requests. A process that has started pyreqwest therefore ends with :func:`exit_now` once
its own shutdown is done (the CLI, the dispatch processes, the benchmarks, the test
session), which flushes what it has to say and leaves without finalizing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import httpx
from pyreqwest import exceptions as reqwest_errors
from pyreqwest.client import Client, ClientBuilder

from channels.base import DeliveryError

USER_AGENT = "broadcaster"
"""Sent when a channel names no User-Agent of its own (instead of pyreqwest's)."""

_IDLE = timedelta(seconds=15)
"""How long an idle pooled connection is kept: below the keep-alive timeouts of most
servers, so a connection the server is about to close is seldom reused."""


_started = False
"""Whether this process has built a pyreqwest client (and so has its threads)."""


def exit_now(code: object = 0) -> None:
    """End the process with ``code`` (as ``SystemExit`` takes it) without finalizing the
    interpreter, if pyreqwest started in it; else return, for the usual exit. Log handlers
    and the standard streams are flushed first; everything else of the process's must be
    closed already."""
    if not _started:
        return
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # SystemExit("message"): printed, status 1, as the interpreter would
        print(code, file=sys.stderr)
        status = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed or gone: nothing to say
            stream.flush()
    os._exit(status)


def run_main(main: Callable[[], object]) -> None:
    """Run a process's ``main``, then end as :func:`exit_now` does (with its ``SystemExit``
    status, or 0), once pyreqwest started; else as usual."""
    try:
        main()
    except SystemExit as done:
        exit_now(done.code)
        raise
    exit_now(0)


class DirectSender:
    """One pyreqwest client (created on first use, in the running loop) with at most
    ``max_connections`` requests in flight."""

    def __init__(self, max_connections: int, timeout: httpx.Timeout) -> None:
        self._max_connections = max_connections
        self._timeout = timeout
        self._client: Client | None = None
        self._closed = False

    def _get(self) -> Client:
        if self._client is None:
            t = self._timeout
            builder = (
                ClientBuilder()
                .max_connections(self._max_connections)
                .follow_redirects(False)
                .no_proxy()
                .gzip(False)
                .brotli(False)
                .zstd(False)
                .deflate(False)
                .referer(False)
                .user_agent(USER_AGENT)
                .pool_idle_timeout(_IDLE)
            )
            if t.connect is not None:
                builder = builder.connect_timeout(timedelta(seconds=t.connect))
            if t.read is not None:
                builder = builder.read_timeout(timedelta(seconds=t.read))
            if t.pool is not None:
                builder = builder.pool_timeout(timedelta(seconds=t.pool))
            self._client = builder.build()
            global _started  # one flag per process, read at its exit
            _started = True
        return self._client

    async def send(
        self,
        method: str,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline for this request only
    ) -> Answer | httpx.Response:
        """Send ``body`` to ``url`` with exactly ``headers``; the answer read whole."""
        if self._closed:
            raise httpx.ConnectError("the HTTP client is closed")
        try:
            builder = self._get().request(method, url).headers(headers)
        except ValueError as exc:
            # pyreqwest names the offending value, which can be a credential (a token
            # ending in a newline): say what is wrong, never the value. Nothing was sent;
            # trying again cannot help until the configuration changes.
            raise DeliveryError(
                f"the request could not be built: a header {_which(headers, exc)} has a "
                "character a header cannot carry",
                retryable=False,
            ) from None
        if body:
            builder = builder.body_bytes(body)
        if timeout is not None:
            builder = builder.timeout(timedelta(seconds=timeout))
        try:
            response = await builder.build().send()
            content = bytes(await response.bytes())
        except reqwest_errors.PyreqwestError as exc:
            raise _translated(exc) from exc
        pairs = list(response.headers.items())
        if response.headers.get("content-encoding") is None:
            return Answer(response.status, pairs, content)
        encoded = httpx.Response(
            response.status,
            headers=pairs,
            stream=httpx.ByteStream(content),
            extensions={"http_version": b"HTTP/1.1"},
        )
        try:
            await encoded.aread()  # decoded per Content-Encoding, as httpx's client does
        except httpx.DecodingError:
            # A body that does not decode as it says: the status still stands (a receiver
            # that took the message with a 200 took it), and the body is what came, which
            # the channel reads as any answer it cannot parse.
            plain = [(k, v) for k, v in pairs if k.lower() != "content-encoding"]
            return Answer(response.status, plain, content)
        return encoded

    async def aclose(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.close()


def _which(headers: Mapping[str, str], exc: ValueError) -> str:
    """The name of the header whose value pyreqwest refused, if one can be told (never its
    value)."""
    for name, value in headers.items():
        if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
            return repr(name)
    return "value"


class Answer:
    """An HTTP answer read whole, without a ``Content-Encoding``: the parts of
    :class:`httpx.Response` the channels read, with httpx's headers and text built only
    when asked for."""

    __slots__ = ("_headers", "_pairs", "content", "status_code")

    def __init__(self, status_code: int, pairs: list[tuple[str, str]], content: bytes) -> None:
        self.status_code = status_code
        self.content = content
        self._pairs = pairs
        self._headers: httpx.Headers | None = None

    @property
    def headers(self) -> httpx.Headers:
        if self._headers is None:
            self._headers = httpx.Headers(self._pairs)
        return self._headers

    @property
    def text(self) -> str:
        """The body as text, decoded as httpx decodes it (the charset of its
        ``Content-Type``, else UTF-8, undecodable bytes replaced). UTF-8, what the
        providers answer, is decoded here directly: through an httpx.Response it cost
        about 18 µs an answer."""
        if _utf8(self.headers.get("content-type")):
            return self.content.decode("utf-8", errors="replace")
        return httpx.Response(self.status_code, headers=self._pairs, content=self.content).text

    def json(self, **kwargs: Any) -> Any:
        return json.loads(self.content, **kwargs)

    def __repr__(self) -> str:
        return f"<Answer [{self.status_code}]>"


def _utf8(content_type: str | None) -> bool:
    """Does httpx decode a body of this ``Content-Type`` (as httpx's headers give it,
    repeated headers joined) as UTF-8: none, one without a charset parameter, or one that
    names UTF-8? Anything else (another charset, an odd parameter list) is left to httpx."""
    if content_type is None:
        return True
    charsets = [
        v.strip().strip('"').lower()
        for k, _, v in (param.partition("=") for param in content_type.split(";")[1:])
        if k.strip().lower() == "charset"
    ]
    return not charsets or charsets == ["utf-8"] or charsets == ["utf8"]


_TRANSLATED: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (reqwest_errors.PoolTimeoutError, httpx.PoolTimeout),
    # reqwest times reads in its connector, so a read that timed out on an open connection
    # comes back as a connect timeout too: both are read timeouts here, the safe reading
    # (the request may have arrived).
    (reqwest_errors.WriteTimeoutError, httpx.WriteTimeout),
    (reqwest_errors.RequestTimeoutError, httpx.ReadTimeout),
    (reqwest_errors.ConnectError, httpx.ConnectError),
    (reqwest_errors.WriteError, httpx.WriteError),
    (reqwest_errors.ReadError, httpx.ReadError),
    (reqwest_errors.ClientClosedError, httpx.ConnectError),
)
"""pyreqwest's failures and the httpx exceptions they become, the first match winning."""


def _translated(exc: Exception) -> httpx.TransportError:
    """pyreqwest's failure as the httpx exception the channels' retry contracts expect."""
    for theirs, ours in _TRANSLATED:
        if isinstance(exc, theirs):
            return ours(_text(exc))
    return httpx.RemoteProtocolError(_text(exc))


def _text(exc: Exception) -> str:
    """The failure and its root cause (``connection error: Connection refused (os error
    111)``); the intermediate causes name the URL, which is left out."""
    message = str(exc.args[0]) if exc.args else type(exc).__name__
    details = getattr(exc, "details", None) or {}
    causes = details.get("causes") or []
    root = causes[-1].get("message", "") if causes else ""
    return f"{message}: {root}" if root and root != message else message
