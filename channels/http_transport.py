"""An httpx transport that sends over aiohttp: httpx's API, aiohttp's connection pool.

httpx 0.28's own pool (httpcore) rescans every connection for every queued request, so a
channel with a few hundred sends in flight spends its CPU there: the benchmarks measured
about 100-400 requests/s through it against several thousand through aiohttp, with the same
sink (docs/performance.md). The channels keep httpx as their one HTTP API (requests,
responses, errors, the mock transport in tests); only the wire below changes.

What this transport promises the channels:

- requests go out as built by httpx (method, URL, headers, body), never following redirects;
- the response body is handed back undecoded, so httpx decodes it per ``Content-Encoding``
  exactly as with its own transport;
- failures are httpx's exceptions: :class:`httpx.ConnectTimeout` / :class:`httpx.ReadTimeout`
  (both :class:`httpx.TimeoutException`), :class:`httpx.ConnectError`,
  :class:`httpx.RemoteProtocolError`, :class:`httpx.ReadError`, all
  :class:`httpx.TransportError`, as the channels' retry contracts expect;
- timeouts are httpx's per request: ``pool`` bounds waiting for a free connection
  (:class:`httpx.PoolTimeout`), ``connect`` opening one, ``read`` each wait for response
  data;
- requests get a connection in the order they asked for one. aiohttp's own pool is not
  fair: a task that releases a connection and sends again at once takes it back before the
  tasks already waiting, which then starve (a 100,000-request run with 200 in flight on 50
  connections saw 150 requests wait past a 20-second timeout). A FIFO semaphore of
  ``max_connections`` slots in front of it queues requests fairly, so aiohttp's pool never
  has waiters.

aiohttp is optional: :func:`aiohttp_transport` returns None when it is not installed, and
the caller keeps httpx's default transport.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    import aiohttp
    import yarl

_NOT_FORWARDED = frozenset({"host", "content-length", "transfer-encoding", "connection"})
"""Headers aiohttp sets itself from the URL and the body."""


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp session (created on first use, in the running loop) with a pool of at
    most ``max_connections`` connections."""

    def __init__(self, max_connections: int = 100) -> None:
        self._max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _client(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections)
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise httpx.ConnectError("the transport is closed", request=request)
        body = await request.aread()
        headers = [
            (name, value)
            for name, value in request.headers.multi_items()
            if name.lower() not in _NOT_FORWARDED
        ]
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        return await self._exchange(
            request.method, str(request.url), body, headers, _deadlines(timeouts), request
        )

    async def send(
        self,
        method: str,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout: httpx.Timeout,  # noqa: ASYNC109 - httpx's per-phase timeouts, as httpx takes them
    ) -> httpx.Response:
        """Send ``body`` to ``url`` with exactly ``headers`` (plus Host and Content-Length),
        without building an httpx request: the channels' hot path (see
        :class:`~channels.http_common.PostClient`). The answer, the failures and the
        timeouts are as :meth:`handle_async_request`'s."""
        if self._closed:
            raise httpx.ConnectError("the transport is closed")
        response = await self._exchange(method, url, body, headers, _deadlines(timeout.as_dict()))
        await response.aread()  # decoded per Content-Encoding, as httpx's client does
        return response

    async def _exchange(
        self,
        method: str,
        url: str,
        body: bytes,
        headers: Mapping[str, str] | list[tuple[str, str]],
        deadlines: tuple[float | None, aiohttp.ClientTimeout],
        request: httpx.Request | None = None,
    ) -> httpx.Response:
        pool, timeout = deadlines
        if self._slots.locked():
            try:
                async with asyncio.timeout(pool):
                    await self._slots.acquire()
            except TimeoutError as exc:
                raise httpx.PoolTimeout(
                    "no connection became free in time", request=request
                ) from exc
        else:
            await self._slots.acquire()  # a free slot is taken at once: no timer needed
        try:
            return await self._send(method, url, body, headers, timeout, request)
        finally:
            self._slots.release()

    async def _send(
        self,
        method: str,
        url: str,
        body: bytes,
        headers: Mapping[str, str] | list[tuple[str, str]],
        deadlines: aiohttp.ClientTimeout,
        request: httpx.Request | None,
    ) -> httpx.Response:
        import aiohttp

        try:
            async with self._client().request(
                method,
                _url(url),
                data=body or None,
                headers=headers,
                allow_redirects=False,
                timeout=deadlines,
                skip_auto_headers=_SKIPPED,
            ) as response:
                content = await response.read()
                status = response.status
                raw_headers = [
                    (k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers
                ]
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(_text(exc, "connect timed out"), request=request) from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise httpx.ReadTimeout(_text(exc, "read timed out"), request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(_text(exc, "connection failed"), request=request) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise httpx.RemoteProtocolError(
                _text(exc, "server disconnected"), request=request
            ) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(_text(exc, type(exc).__name__), request=request) from exc
        return httpx.Response(
            status,
            headers=raw_headers,
            stream=httpx.ByteStream(content),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _text(exc: BaseException, fallback: str) -> str:
    return str(exc) or fallback


_SKIPPED = frozenset({"User-Agent", "Accept-Encoding", "Accept", "Content-Type"})
"""Headers aiohttp would add of its own: only the caller's go out."""


@functools.lru_cache(maxsize=1024)
def _url(url: str) -> yarl.URL:
    """The parsed URL, cached: channels post to one or a few, and parsing one costs as much
    as sending."""
    import yarl

    return yarl.URL(url)


def _deadlines(timeouts: Mapping[str, float | None]) -> tuple[float | None, Any]:
    """httpx's per-request timeouts as (pool, aiohttp's ClientTimeout)."""
    key = (timeouts.get("pool"), timeouts.get("connect"), timeouts.get("read"))
    return _deadline_of(*key)


@functools.lru_cache(maxsize=64)
def _deadline_of(
    pool: float | None, connect: float | None, read: float | None
) -> tuple[float | None, Any]:
    import aiohttp

    return pool, aiohttp.ClientTimeout(
        total=None, connect=connect, sock_connect=connect, sock_read=read
    )


def aiohttp_transport(max_connections: int) -> AiohttpTransport | None:
    """The aiohttp transport when aiohttp is installed, else None (httpx's own)."""
    try:
        import aiohttp  # noqa: F401 - only whether it can be imported
    except ImportError:
        return None
    return AiohttpTransport(max_connections)
