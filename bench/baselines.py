"""The baselines: the same messages sent to the same sinks with no persistence.

Each replays, ``n`` times, the very request the pipeline's channel last sent to a sink
(method, path, headers and body bytes; for SMTP the envelope and the message bytes), so
size and shape are the pipeline's own. ``raw_httpx`` with the channel's own client and
``raw_smtp_pipelined`` use the client stack the channels use (the ``PostClient`` of the
webhook and Twilio channels, over pyreqwest, each with the channel's pool limit; the email
channel's pipelined transactions on aiosmtplib's connections, as many as its pool);
``raw_smtp`` is ``aiosmtplib``'s ``sendmail`` on as many connections, one command at a
time (aiosmtplib does not pipeline), the raw client the issue names; ``raw_httpx`` with
its default client is plain httpx, for comparison; ``raw_aiohttp`` is aiohttp, which the
issue names the fastest Python client and the practical limit (pyreqwest, whose work is
done in Rust, is faster still); ``raw_twilio_sdk`` is the Twilio SDK on its own async
client, which the SMS channel also calls (on the channels' client); ``apprise_json`` is
Apprise's ``json://`` notifier, one ``notify()`` per message, as an application using
Apprise would send.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import aiosmtplib
import httpx
from twilio.base.exceptions import TwilioException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client as TwilioClient

from broadcaster.config.settings import DeliverySettings
from channels.http_common import PostClient
from channels.smtp_pipelining import pipelined_transaction
from channels.twilio_sms import NO_TWILIO_ENVIRONMENT

DEFAULT_CONCURRENCY = DeliverySettings().workers * DeliverySettings().batch_size
"""Requests in flight: the daemon's default ``delivery.workers`` × ``delivery.batch_size``."""

_HOP_HEADERS = {
    "host",
    "content-length",
    "connection",
    "transfer-encoding",
    "accept",
    "accept-encoding",
    "keep-alive",
}


@dataclass(frozen=True)
class Timed:
    """``ok`` of ``count`` messages accepted by the sink in ``seconds``; ``errors`` raised
    (a timeout, a refused connection: counted, not fatal, and named in ``first_error``)."""

    count: int
    ok: int
    seconds: float
    errors: int = 0
    first_error: str = ""

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, float | str]:
        return {
            "count": self.count,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "rate": round(self.rate, 1),
            "errors": self.errors,
            "first_error": self.first_error,
        }


def replay_headers(sample: dict[str, Any]) -> dict[str, str]:
    """The request headers worth replaying (the client adds its own hop-by-hop ones)."""
    return {k: v for k, v in sample["headers"] if k.lower() not in _HOP_HEADERS}


async def _blast(n: int, concurrency: int, one: Callable[[], Awaitable[bool]]) -> Timed:
    todo: Iterator[int] = iter(range(n))
    ok = 0
    errors: list[str] = []

    async def worker() -> None:
        nonlocal ok
        for _ in todo:
            try:
                if await one():
                    ok += 1
            except (httpx.HTTPError, aiohttp.ClientError, OSError, TwilioException) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    seconds = time.perf_counter() - started
    return Timed(n, ok, seconds, len(errors), errors[0] if errors else "")


async def raw_aiohttp(
    url: str,
    sample: dict[str, Any],
    n: int,
    *,
    connections: int = 50,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> Timed:
    headers = replay_headers(sample)
    body: bytes = sample["body"]
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> bool:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                return 200 <= response.status < 300

        return await _blast(n, concurrency, one)


async def raw_httpx(
    url: str,
    sample: dict[str, Any],
    n: int,
    *,
    client: httpx.AsyncClient | PostClient | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> Timed:
    """Through ``client`` (closed afterwards); by default httpx with its own transport and
    the webhook channel's pool size (50)."""
    headers = replay_headers(sample)
    body: bytes = sample["body"]
    sender = client or httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=50))

    async def one() -> bool:
        response = await sender.post(url, content=body, headers=headers)
        return 200 <= response.status_code < 300

    try:
        return await _blast(n, concurrency, one)
    finally:
        await sender.aclose()


async def raw_smtp(port: int, sample: dict[str, Any], n: int, *, connections: int = 4) -> Timed:
    sender: str = sample["from"]
    recipients: list[str] = sample["to"]
    content: bytes = sample["body"]

    async def send(client: aiosmtplib.SMTP) -> bool:
        errors, _reply = await client.sendmail(sender, recipients, content)
        return not errors

    return await _over_smtp(port, n, connections, send)


async def raw_smtp_pipelined(
    port: int, sample: dict[str, Any], n: int, *, connections: int = 4
) -> Timed:
    """The email channel's own SMTP stack replaying the same envelope and bytes: an
    aiosmtplib connection, and each message's MAIL, RCPT and DATA in one write
    (:func:`~channels.smtp_pipelining.pipelined_transaction`, as the channel sends where
    the relay offers PIPELINING, which the benchmark's sink does), SIZE declared."""
    sender: str = sample["from"]
    recipients: list[str] = sample["to"]
    content: bytes = sample["body"]
    if len(recipients) != 1:
        raise ValueError(f"the channel sends to one recipient, not {len(recipients)}")
    [recipient] = recipients
    mail = b"FROM:<%s> SIZE=%d" % (sender.encode(), len(content))
    rcpt = b"TO:<%s>" % recipient.encode()

    async def greet(client: aiosmtplib.SMTP) -> None:
        await client.ehlo()
        if not client.supports_extension("pipelining"):
            raise RuntimeError("the SMTP sink does not offer PIPELINING")

    async def send(client: aiosmtplib.SMTP) -> bool:
        await pipelined_transaction(
            client, mail, rcpt, content, sender=sender, recipient=recipient, timeout=30
        )
        return True

    return await _over_smtp(port, n, connections, send, greet=greet)


async def _over_smtp(
    port: int,
    n: int,
    connections: int,
    send: Callable[[aiosmtplib.SMTP], Awaitable[bool]],
    *,
    greet: Callable[[aiosmtplib.SMTP], Awaitable[None]] | None = None,
) -> Timed:
    """``n`` calls of ``send`` (True when the message went) shared by ``connections``
    connections to the SMTP sink on ``port``, each ``greet``-ed first when given."""
    todo: Iterator[int] = iter(range(n))
    ok = 0

    async def connection() -> None:
        nonlocal ok
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=30)
        await client.connect()
        try:
            if greet is not None:
                await greet(client)
            for _ in todo:
                if await send(client):
                    ok += 1
        finally:
            await client.quit()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    return Timed(n, ok, time.perf_counter() - started)


def apprise_json(url: str, title: str, body: str, n: int) -> Timed:
    """Apprise's ``json://`` notifier to ``url`` (``json://host:port/path``), ``n`` times."""
    with warnings.catch_warnings():  # Apprise 2.2's plugins import imghdr (deprecated)
        warnings.simplefilter("ignore", DeprecationWarning)
        import apprise

        notifier = apprise.Apprise()
        if not notifier.add(url):  # loads the plugins
            raise ValueError(f"Apprise does not accept {url!r}")
    ok = 0
    started = time.perf_counter()
    for _ in range(n):
        if notifier.notify(body=body, title=title):
            ok += 1
    return Timed(n, ok, time.perf_counter() - started)


async def raw_twilio_sdk(
    base_url: str,
    account_sid: str,
    auth_token: str,
    form: dict[str, str],
    n: int,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> Timed:
    """The Twilio SDK as its documentation shows it, on its own async HTTP client (aiohttp):
    ``messages.create_async`` with the parameters of ``form`` (a request the SMS channel
    sent), against the API at ``base_url``."""
    http = AsyncTwilioHttpClient()
    make: Callable[..., TwilioClient] = TwilioClient  # not annotated in twilio
    client = make(
        account_sid,
        auth_token,
        http_client=http,
        environment=NO_TWILIO_ENVIRONMENT,
    )
    client.api.base_url = base_url

    async def one() -> bool:
        message = await client.messages.create_async(
            to=form["To"],
            from_=form["From"],
            body=form["Body"],
            status_callback=form.get("StatusCallback"),
        )
        return bool(message.sid)

    try:
        with warnings.catch_warnings():  # one context for the whole run: it is not per task
            # The SDK's client authenticates the way aiohttp 3.13 deprecates.
            for deprecated in ("BasicAuth is deprecated", "The 'auth' parameter is deprecated"):
                warnings.filterwarnings("ignore", deprecated, DeprecationWarning)
            return await _blast(n, concurrency, one)
    finally:
        await http.close()  # type: ignore[no-untyped-call]
