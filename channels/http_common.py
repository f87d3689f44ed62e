"""What every HTTP channel shares: which statuses a retry can help, Retry-After, and what of
an error answer may go into a reason.

Reasons end up in delivery rows and logs, so they carry only structured provider fields
(a code, a status, the provider's error message from its JSON error schema, cut short) or,
for a body that is not such a document, its content type and length: never the raw body,
which a proxy echoing the request would fill with our Authorization header.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import math
import re
from collections.abc import Iterable
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import httpx
import orjson

from channels.base import DeliveryError
from channels.http_transport import DirectSender
from channels.redact import redact

FIELD_LIMIT = 200
"""Characters of one provider field quoted in a reason."""

_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,64}")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


class HttpAnswer(Protocol):
    """What the channels read of an HTTP answer: an :class:`httpx.Response`, or the
    :class:`~channels.http_transport.Answer` of the direct sender."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> httpx.Headers: ...

    @property
    def content(self) -> bytes: ...

    @property
    def text(self) -> str: ...

    def json(self, **kwargs: Any) -> Any: ...


class PostClient:
    """The HTTP client of a channel that posts to one provider: pooled, never following a
    redirect (a redirected provider is a configuration error, not a hop to make blindly).

    Without an explicit ``transport`` it sends through pyreqwest
    (:class:`channels.http_transport.DirectSender`): its pool, codec and TLS run in Rust,
    at a fraction of the CPU of aiohttp or of httpx's own pool with hundreds of sends in
    flight, and without the cost of building httpx's request, URL and header models for
    each send. Failures are httpx's exceptions either way and answers are read as an
    :class:`httpx.Response` is (:class:`HttpAnswer`), so the channels are written against
    httpx alone; with a ``transport`` (a mock in tests) every request goes through httpx."""

    def __init__(
        self,
        timeout: float,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._timeout = httpx.Timeout(timeout)
        self._direct = DirectSender(max_connections, self._timeout) if transport is None else None
        self._client: httpx.AsyncClient | None = None
        if self._direct is None:  # a transport given: httpx's client over it
            self._client = httpx.AsyncClient(
                timeout=self._timeout,
                limits=httpx.Limits(max_connections=max_connections),
                follow_redirects=False,
                transport=transport,
            )

    async def post(self, url: str, *, content: bytes, headers: dict[str, str]) -> HttpAnswer:
        """POST ``content`` with ``headers`` (nothing else: no default Accept or User-Agent
        of the client's own)."""
        return await self.request("POST", url, content=content, headers=headers)

    async def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes = b"",
        headers: dict[str, str],
        timeout: float | None = None,  # noqa: ASYNC109 - httpx's, per request
    ) -> HttpAnswer:
        """Any method, the same way; ``timeout`` instead of the client's for this one."""
        if self._direct is not None:
            return await self._direct.send(method, url, content, headers, timeout)
        if self._client is None:  # cannot happen: one of the two is always set
            raise RuntimeError("PostClient has neither a direct sender nor an httpx client")
        limits = self._timeout if timeout is None else httpx.Timeout(timeout)
        return await self._client.request(
            method, url, content=content, headers=headers, timeout=limits
        )

    async def aclose(self) -> None:
        if self._direct is not None:
            await self._direct.aclose()
        if self._client is not None:
            await self._client.aclose()


def pooled_client(
    timeout: float, max_connections: int, transport: httpx.AsyncBaseTransport | None = None
) -> PostClient:
    """A channel's :class:`PostClient`."""
    return PostClient(timeout, max_connections, transport)


_DEFAULT_PORTS = {"http": 80, "https": 443}


@functools.lru_cache(maxsize=4096)
def origin_of(url: str) -> str | None:
    """The origin ``scheme://host[:port]`` of an absolute ``http``/``https`` URL, normalised
    so that one receiver has one origin however its URLs are written: scheme and host in
    lower case (an international name in its ASCII form, an IPv6 literal compressed and in
    brackets), the scheme's default port left out, user info, path, query and fragment
    dropped. None for anything else (not a URL, another scheme, no host).

    What reasons name a receiver by (paths and queries often hold tokens), and the scope
    of its throttles (:attr:`~channels.base.DeliveryError.throttled_scope`): the channels
    that reach several receivers name a throttle's scope with it, and the dispatcher finds
    the scope of each address with it. Pure, so cached: a round sends to few origins."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return None
    scheme = parsed.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parsed.raw_host:
        return None
    host = parsed.raw_host.decode("ascii", "replace").lower()
    if ":" in host:  # an IPv6 literal: one spelling of it
        with contextlib.suppress(ValueError):
            host = ipaddress.IPv6Address(host).compressed
        host = f"[{host}]"
    port = parsed.port
    shown = "" if port is None or port == _DEFAULT_PORTS[scheme] else f":{port}"
    return f"{scheme}://{host}{shown}"


def retryable_status(status: int) -> bool:
    """408 Request Timeout, 429 Too Many Requests and every 5xx: trying again can help."""
    return status in (408, 429) or status >= 500


MAX_RETRY_AFTER = 86_400.0
"""The longest wait a ``Retry-After`` is taken for, in seconds (a day): a message about a
disruption that waited longer would be news of the past; ``delivery.max_attempts`` ends it."""


def parse_retry_after(
    value: str | None, date: str | None = None, *, now: float | None = None
) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds, or an HTTP-date.

    An HTTP-date is measured against ``date`` (the response's own ``Date`` header: no
    clock skew) when given and readable, else against ``now`` (the caller's clock, unix
    seconds); with neither, or for anything unreadable, the answer is ``None``. A date
    without a zone is taken as GMT, as HTTP-dates always are. Never negative, and at most
    :data:`MAX_RETRY_AFTER` (RFC 9110 sets no bound: ``Retry-After: 100000000000000`` from a
    customer's own webhook must not become a date past what a datetime holds).
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        when = _timestamp(text)
        reference = _timestamp(date) if date else None
        if reference is None:
            reference = now
        if when is None or reference is None:
            return None
        seconds = when - reference
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _timestamp(http_date: str) -> float | None:
    try:
        when = parsedate_to_datetime(http_date)
        return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def clip(text: str, limit: int = FIELD_LIMIT, secrets: Iterable[str] = ()) -> str:
    """One line of at most ``limit`` characters: ``secrets`` redacted first (so a cut cannot
    leave part of one behind), whitespace runs and control characters become single spaces,
    and a cut is marked with an ellipsis."""
    text = " ".join(_UNPRINTABLE.sub(" ", redact(text, secrets)).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def json_object(content: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or ``None`` when it is not one."""
    try:
        document = json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def text_field(
    document: dict[str, Any],
    *names: str,
    limit: int = FIELD_LIMIT,
    secrets: Iterable[str] = (),
) -> str:
    """The first of ``names`` that holds a non-empty string or a number, :func:`clip`-ped;
    else ``""``."""
    for name in names:
        value = document.get(name)
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float) or (isinstance(value, str) and value.strip()):
            return clip(str(value), limit, secrets)
    return ""


def body_summary(content: bytes, content_type: str | None) -> str:
    """What may be said of a body that is not the provider's error document: its media type
    and length, never its text (``text/html body, 1234 bytes, not shown``)."""
    if not content:
        return "empty body"
    media = (content_type or "").split(";", 1)[0].strip()
    kind = f"{media.lower()} body" if _MEDIA_TYPE.fullmatch(media) else "untyped body"
    return f"{kind}, {len(content)} bytes, not shown"


def describe_body(response: HttpAnswer) -> str:
    """:func:`body_summary` of a response."""
    return body_summary(response.content, response.headers.get("content-type"))


def json_bytes(document: Any) -> bytes:
    """``document`` as compact UTF-8 JSON: byte for byte what ``json.dumps(document,
    ensure_ascii=False, separators=(",", ":")).encode()`` gives for documents of strings,
    integers, booleans, None, lists and dicts (a property test holds it to that), through
    orjson. The standard library's encoder built the 2.6 KB body of a push message in
    8.5 µs, orjson builds it in 1.6 µs (docs/performance.md, eighth round).

    Text that is not Unicode (a lone surrogate, which JSON input can carry as ``\\ud800``)
    cannot be sent and no retry will change that: a permanent :class:`DeliveryError`."""
    try:
        return orjson.dumps(document)
    except TypeError as exc:  # orjson.JSONEncodeError
        reason = f"the message cannot be encoded as JSON: {exc}"
        raise DeliveryError(reason, retryable=False) from exc
