"""The aiohttp transport under the HTTP channels' httpx clients, against a real local server:
requests arrive as httpx built them, answers come back as httpx would give them, failures
are httpx's exceptions (which the channels' retry contracts are written against)."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from channels.http_common import pooled_client
from channels.http_transport import AiohttpTransport
from tests.fakes.http import serve


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    path = scope["path"]
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
    status = 200
    if path == "/echo":
        answer = json.dumps(
            {
                "method": scope["method"],
                "query": scope["query_string"].decode(),
                "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
                "body": body.decode(),
            }
        ).encode()
    elif path == "/gzip":
        answer = gzip.compress(b'{"zipped": true}')
        headers.append((b"content-encoding", b"gzip"))
    elif path == "/redirect":
        status, answer = 302, b"{}"
        headers.append((b"location", b"/echo"))
    elif path == "/slow":
        await asyncio.sleep(2)
        answer = b"{}"
    else:
        status, answer = 404, b'{"error": "no such path"}'
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve(_app) as url:
        yield url


async def test_pooled_client_posts_straight_over_aiohttp(base_url: str) -> None:
    client = pooled_client(5.0, 10)
    try:
        assert isinstance(client._direct, AiohttpTransport)
        response = await client.post(
            f"{base_url}/echo?a=1",
            content=b'{"x": 1}',
            headers={"Content-Type": "application/json", "X-Broadcaster-Delivery": "42"},
        )
    finally:
        await client.aclose()
    assert response.status_code == 200
    seen = response.json()
    assert seen["method"] == "POST"
    assert seen["query"] == "a=1"
    assert seen["body"] == '{"x": 1}'
    assert seen["headers"]["x-broadcaster-delivery"] == "42"
    assert seen["headers"]["content-type"] == "application/json"
    assert seen["headers"]["content-length"] == "8"
    # Only the channel's headers (and Host, Content-Length): no client defaults.
    assert set(seen["headers"]) == {
        "host",
        "content-length",
        "content-type",
        "x-broadcaster-delivery",
    }


async def test_pooled_client_answers_and_fails_as_httpx_does(base_url: str) -> None:
    client = pooled_client(0.3, 2)
    try:
        zipped = await client.post(f"{base_url}/gzip", content=b"", headers={})
        assert zipped.json() == {"zipped": True}  # decoded per Content-Encoding
        moved = await client.post(f"{base_url}/redirect", content=b"{}", headers={})
        assert moved.status_code == 302  # not followed
        assert moved.headers["location"] == "/echo"
        missing = await client.post(f"{base_url}/nowhere", content=b"{}", headers={})
        assert missing.status_code == 404
        assert missing.json() == {"error": "no such path"}
        with pytest.raises(httpx.ReadTimeout):
            await client.post(f"{base_url}/slow", content=b"{}", headers={})
        with pytest.raises(httpx.ConnectError):
            await client.post(f"http://127.0.0.1:{_closed_port()}/", content=b"", headers={})
    finally:
        await client.aclose()
    with pytest.raises(httpx.TransportError):  # closed: nothing more goes out
        await client.post(f"{base_url}/echo", content=b"{}", headers={})


async def test_pooled_client_with_a_transport_goes_through_httpx() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"ok": True})

    client = pooled_client(5.0, 10, httpx.MockTransport(answer))
    try:
        response = await client.post(
            "https://hooks.example/x", content=b"{}", headers={"X-Test": "1"}
        )
    finally:
        await client.aclose()
    assert response.status_code == 202
    assert [str(r.url) for r in seen] == ["https://hooks.example/x"]
    assert seen[0].headers["x-test"] == "1"


async def test_a_full_pool_bounds_direct_posts_by_the_pool_timeout(base_url: str) -> None:
    transport = AiohttpTransport(1)
    timeout = httpx.Timeout(5.0, pool=0.2)
    try:
        slow = transport.send("POST", f"{base_url}/slow", b"", {}, timeout)
        busy = asyncio.ensure_future(slow)
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.PoolTimeout):
            await transport.send("POST", f"{base_url}/echo", b"", {}, timeout)
        assert (await busy).status_code == 200
        echo = await transport.send("GET", f"{base_url}/echo", b"", {}, timeout)
        assert echo.json()["method"] == "GET"
    finally:
        await transport.aclose()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_answers_are_decoded_and_redirects_not_followed(base_url: str) -> None:
    async with httpx.AsyncClient(transport=AiohttpTransport(4)) as client:
        zipped = await client.get(f"{base_url}/gzip")
        assert zipped.json() == {"zipped": True}
        moved = await client.get(f"{base_url}/redirect")
        assert moved.status_code == 302
        assert moved.headers["location"] == "/echo"
        missing = await client.get(f"{base_url}/nowhere")
        assert missing.status_code == 404
        assert missing.json() == {"error": "no such path"}


async def test_failures_are_httpx_exceptions(base_url: str) -> None:
    closed_port = _closed_port()
    async with httpx.AsyncClient(transport=AiohttpTransport(4), timeout=0.3) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(f"{base_url}/slow")
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{closed_port}/")
    transport = AiohttpTransport(4)
    await transport.aclose()
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.TransportError):
            await client.get(f"{base_url}/echo")


async def test_many_requests_in_flight_share_the_pool(base_url: str) -> None:
    async with httpx.AsyncClient(transport=AiohttpTransport(5)) as client:
        answers = await asyncio.gather(
            *(client.post(f"{base_url}/echo", content=str(i).encode()) for i in range(200))
        )
    assert sorted(int(a.json()["body"]) for a in answers) == list(range(200))


async def test_waiting_for_a_free_connection_is_bounded_by_the_pool_timeout(
    base_url: str,
) -> None:
    timeout = httpx.Timeout(5.0, pool=0.2)
    async with httpx.AsyncClient(transport=AiohttpTransport(1), timeout=timeout) as client:
        busy = asyncio.ensure_future(client.get(f"{base_url}/slow"))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.PoolTimeout):
            await client.get(f"{base_url}/echo")
        assert (await busy).status_code == 200
        # The slot the slow request held is free again.
        assert (await client.get(f"{base_url}/echo")).status_code == 200
