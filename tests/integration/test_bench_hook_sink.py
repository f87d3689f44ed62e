"""The benchmarks' lean HTTP sinks: the webhook sink (:class:`bench.sinks.HookProtocol`)
speaks enough HTTP/1.1 for every sender under test, counts what it accepted, and refuses
what it cannot read; the fake Twilio API on the same protocol
(:class:`bench.sinks.TwilioProtocol`) answers as Twilio does."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import httpx
import pytest
from pydantic import SecretStr

from bench.sinks import HookProtocol, TwilioProtocol, _Counts
from channels.base import DeliveryError, Message, Target
from channels.twilio_sms import TwilioSettings, TwilioSmsChannel
from tests.fakes.twilio import FakeTwilio


@pytest.fixture
async def sink() -> AsyncIterator[tuple[int, _Counts]]:
    counts = _Counts()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HookProtocol(counts), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, counts
    finally:
        server.close()
        await server.wait_closed()


async def _exchange(port: int, raw: bytes, *, pieces: int = 1) -> bytes:
    """Write ``raw`` in ``pieces`` writes, then read until the server closes or goes quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    step = max(1, len(raw) // pieces)
    for start in range(0, len(raw), step):
        writer.write(raw[start : start + step])
        await writer.drain()
        await asyncio.sleep(0.01)
    answer = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 0.5):
            answer += chunk
    except TimeoutError:
        pass
    writer.close()
    return answer


def _post(path: str, key: str, body: bytes, *extra: str) -> bytes:
    head = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Idempotency-Key: {key}",
        f"Content-Length: {len(body)}",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def test_the_clients_under_test_post_over_kept_alive_connections(
    sink: tuple[int, _Counts],
) -> None:
    port, counts = sink
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2)) as session:
        for i in range(20):
            async with session.post(
                f"http://127.0.0.1:{port}/hook/d{i % 2}",
                data=b'{"n": %d}' % i,
                headers={"Idempotency-Key": f"delivery-{i}"},
            ) as response:
                assert response.status == 200
                assert await response.json() == {"status": "accepted"}
    async with httpx.AsyncClient() as client:
        repeat = await client.post(
            f"http://127.0.0.1:{port}/hook/d0?x=1",
            content=b"{}",
            headers={"Idempotency-Key": "delivery-3"},  # a repeat
        )
        assert repeat.status_code == 200
    stats = counts.hook_snapshot()
    assert stats["paths"] == {"/hook/d0": 11, "/hook/d1": 10}
    assert stats["distinct_keys"] == 20  # the repeat is one key, two requests
    sample = counts.samples["hook"]()
    assert sample["path"] == "/hook/d0"
    assert ["Idempotency-Key", "delivery-3"] in [list(pair) for pair in sample["headers"]]


async def test_requests_split_across_writes_or_sent_back_to_back_are_each_read_whole(
    sink: tuple[int, _Counts],
) -> None:
    port, counts = sink
    body = b'{"text": "' + b"x" * 5000 + b'"}'
    answer = await _exchange(port, _post("/hook/a", "delivery-1", body), pieces=7)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    two = _post("/hook/a", "delivery-2", b"{}") + _post("/hook/b", "delivery-3", b"{}")
    answer = await _exchange(port, two)
    assert answer.count(b"HTTP/1.1 200 OK") == 2
    assert counts.hook_snapshot()["paths"] == {"/hook/a": 2, "/hook/b": 1}
    assert counts.samples["hook"]()["body"] == "e30="  # b"{}", base64


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"POST /hook\r\nContent-Length: 0\r\n\r\n", b"400"),  # no HTTP version
        (b"POST /hook HTTP/1.1\r\nno colon here\r\n\r\n", b"400"),
        (b"POST /hook HTTP/1.1\r\nContent-Length: ten\r\n\r\n", b"400"),
        (b"POST /hook HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", b"411"),
        (b"POST /hook HTTP/1.1\r\nX: " + b"y" * 70_000, b"431"),
    ],
)
async def test_what_it_cannot_read_is_refused_and_not_counted(
    sink: tuple[int, _Counts], raw: bytes, status: bytes
) -> None:
    port, counts = sink
    answer = await _exchange(port, raw)
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:80]
    assert b"Connection: close" in answer
    assert counts.hook_snapshot()["paths"] == {}


async def test_other_methods_get_405_and_connection_close_is_honoured(
    sink: tuple[int, _Counts],
) -> None:
    port, counts = sink
    answer = await _exchange(port, b"GET /hook HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 405")
    raw = _post("/hook", "delivery-9", b"{}", "Connection: close") + _post("/hook", "k", b"{}")
    answer = await _exchange(port, raw)
    assert answer.count(b"HTTP/1.1 200 OK") == 1  # the second came after the close
    assert b"Connection: close" in answer
    assert counts.hook_snapshot()["paths"] == {"/hook": 1}


# -- the fake Twilio Messages API (bench.sinks.TwilioProtocol) ------------------------------


@pytest.fixture
async def twilio_sink() -> AsyncIterator[tuple[int, _Counts, FakeTwilio]]:
    counts = _Counts()
    fake = FakeTwilio()
    accepted: list[asyncio.Transport] = []

    class Tracked(TwilioProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            assert isinstance(transport, asyncio.Transport)
            accepted.append(transport)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Tracked(counts, fake), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, counts, fake
    finally:
        server.close()
        # The SMS channel's client (pyreqwest) closes its end on its own thread, perhaps
        # after this loop has ended, and 3.11's wait_closed does not wait for accepted
        # connections: close the sink's side here, or the loop closes with it open and
        # the garbage collector reports it during a later test.
        for transport in accepted:
            transport.abort()
        await server.wait_closed()
        await asyncio.sleep(0)  # connection_lost runs: each socket is closed in this loop


async def test_the_sms_channel_sends_through_the_lean_twilio_sink(
    twilio_sink: tuple[int, _Counts, FakeTwilio],
) -> None:
    """The real channel (basic auth, form body) gets Twilio's 201 and the Message SID; a
    number the fake knows as invalid gets Twilio's 21211, which the channel reads as a
    permanent failure of that address."""
    port, counts, fake = twilio_sink
    fake.invalid.add("+15005550001")
    channel = TwilioSmsChannel(
        "sms",
        TwilioSettings(
            account_sid=fake.account_sid,
            auth_token=SecretStr(fake.auth_token),
            from_number="+15005550006",
            base_url=f"http://127.0.0.1:{port}",
        ),
    )
    try:
        receipt = await channel.send(
            Target("+15005550009", "Ada"), Message("", "Line 4: no trains")
        )
        with pytest.raises(DeliveryError) as caught:
            await channel.send(Target("+15005550001", "Bob"), Message("", "Line 4: no trains"))
    finally:
        await channel.aclose()
    assert (receipt.provider_message_id or "").startswith("SM")
    assert "21211" in caught.value.reason and not caught.value.retryable
    assert counts.snapshot() == {"twilio": 2}
    sample = counts.samples["twilio"]()
    assert sample["path"] == f"/2010-04-01/Accounts/{fake.account_sid}/Messages.json"
    assert b"To=%2B15005550001" in base64.b64decode(sample["body"])


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"auth": ("AC" + "0" * 32, "wrong")}, 401, 20003),
        ({"path": "/2010-04-01/Accounts/AC{other}/Messages.json"}, 404, 20404),
        ({"path": "/2010-04-01/Accounts/{sid}/Calls.json"}, 404, 20404),
        ({"method": "GET"}, 405, None),
        ({"form": {"From": "+15005550006", "Body": "hi"}}, 400, 21604),
        ({"form": {"To": "+15005550009", "From": "+15005550006"}}, 400, 21602),
        ({"content_type": "application/json"}, 400, 20001),
    ],
)
async def test_the_twilio_sink_answers_twilio_errors(
    twilio_sink: tuple[int, _Counts, FakeTwilio],
    change: dict[str, Any],
    status: int,
    code: int | None,
) -> None:
    port, _counts, fake = twilio_sink
    path = change.get("path", "/2010-04-01/Accounts/{sid}/Messages.json").format(
        sid=fake.account_sid, other="f" * 32
    )
    form = change.get("form", {"To": "+15005550009", "From": "+15005550006", "Body": "hi"})
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        response = await client.request(
            change.get("method", "POST"),
            path,
            content=urlencode(form).encode(),
            headers={
                "Content-Type": change.get("content_type", "application/x-www-form-urlencoded")
            },
            auth=change.get("auth", (fake.account_sid, fake.auth_token)),
        )
    assert response.status_code == status
    document = response.json()
    assert document["status"] == status
    if code is not None:
        assert document["code"] == code
