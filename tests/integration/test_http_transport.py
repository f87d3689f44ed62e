"""The pyreqwest sender under the HTTP channels' clients, against a real local server:
requests arrive with exactly the channel's headers, answers come back as httpx would give
them, failures are httpx's exceptions (which the channels' retry contracts are written
against)."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from channels.base import DeliveryError
from channels.http_common import pooled_client
from channels.http_transport import Answer, DirectSender
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
    elif path == "/badgzip":
        answer = b"not gzip at all"
        headers.append((b"content-encoding", b"gzip"))
    elif path == "/redirect":
        status, answer = 302, b"{}"
        headers.append((b"location", b"/echo"))
    elif path == "/slow":
        await asyncio.sleep(2)
        answer = b"{}"
    elif path == "/latin":
        answer = "café".encode("latin-1")
        headers = [(b"content-type", b"text/plain; charset=iso-8859-1"), (b"X-Trace", b"t-1")]
    elif path == "/pause":
        await asyncio.sleep(0.5)
        answer = b"{}"
    else:
        status, answer = 404, b'{"error": "no such path"}'
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve(_app) as url:
        yield url


async def test_pooled_client_posts_straight_through_pyreqwest(base_url: str) -> None:
    client = pooled_client(5.0, 10)
    try:
        assert isinstance(client._direct, DirectSender)
        response = await client.post(
            f"{base_url}/echo?a=1",
            content=b'{"x": 1}',
            headers={"Content-Type": "application/json", "X-Broadcaster-Delivery": "42"},
        )
        own = await client.post(f"{base_url}/echo", content=b"", headers={"User-Agent": "x/2"})
    finally:
        await client.aclose()
    assert own.json()["headers"]["user-agent"] == "x/2"
    assert response.status_code == 200
    seen = response.json()
    assert seen["method"] == "POST"
    assert seen["query"] == "a=1"
    assert seen["body"] == '{"x": 1}'
    assert seen["headers"]["x-broadcaster-delivery"] == "42"
    assert seen["headers"]["content-type"] == "application/json"
    assert seen["headers"]["content-length"] == "8"
    # Only the channel's headers (and Host, Content-Length, our User-Agent where the
    # channel sets none, and reqwest's Accept: */*): no Accept-Encoding of its own.
    assert set(seen["headers"]) == {
        "accept",
        "host",
        "content-length",
        "content-type",
        "user-agent",
        "x-broadcaster-delivery",
    }
    assert seen["headers"]["user-agent"] == "broadcaster"
    assert seen["headers"]["accept"] == "*/*"


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
        port = _closed_port()
        with pytest.raises(httpx.ConnectError) as refused:
            await client.post(f"http://127.0.0.1:{port}/token-in-path", content=b"", headers={})
        assert "refused" in str(refused.value).lower()
        assert "token-in-path" not in str(refused.value)  # the root cause, not the URL
    finally:
        await client.aclose()
    with pytest.raises(httpx.TransportError):  # closed: nothing more goes out
        await client.post(f"{base_url}/echo", content=b"{}", headers={})


async def test_a_request_of_its_own_timeout_gets_it_as_a_deadline(base_url: str) -> None:
    client = pooled_client(5.0, 2)
    try:
        with pytest.raises(httpx.TimeoutException):
            await client.request("POST", f"{base_url}/pause", headers={}, timeout=0.1)
        answer = await client.request("POST", f"{base_url}/pause", headers={}, timeout=3.0)
        assert answer.status_code == 200
    finally:
        await client.aclose()


async def test_pooled_client_with_a_transport_goes_through_httpx() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"ok": True})

    client = pooled_client(5.0, 10, httpx.MockTransport(answer))
    try:
        assert client._direct is None
        response = await client.post(
            "https://hooks.example/x", content=b"{}", headers={"X-Test": "1"}
        )
    finally:
        await client.aclose()
    assert response.status_code == 202
    assert [str(r.url) for r in seen] == ["https://hooks.example/x"]
    assert seen[0].headers["x-test"] == "1"


async def test_a_full_pool_bounds_waiting_by_the_pool_timeout(base_url: str) -> None:
    sender = DirectSender(1, httpx.Timeout(5.0, pool=0.2))
    try:
        busy = asyncio.ensure_future(sender.send("POST", f"{base_url}/slow", b"", {}))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.PoolTimeout):
            await sender.send("POST", f"{base_url}/echo", b"", {})
        assert (await busy).status_code == 200
        # The slot the slow request held is free again.
        echo = await sender.send("GET", f"{base_url}/echo", b"", {})
        assert echo.json()["method"] == "GET"
    finally:
        await sender.aclose()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_many_requests_in_flight_share_the_pool(base_url: str) -> None:
    sender = DirectSender(5, httpx.Timeout(10.0))
    try:
        answers = await asyncio.gather(
            *(sender.send("POST", f"{base_url}/echo", str(i).encode(), {}) for i in range(200))
        )
    finally:
        await sender.aclose()
    assert sorted(int(a.json()["body"]) for a in answers) == list(range(200))


async def test_slots_are_given_in_the_order_asked(base_url: str) -> None:
    """A sender that sends again at once does not overtake requests already waiting."""
    sender = DirectSender(1, httpx.Timeout(10.0))
    order: list[int] = []

    async def one(i: int) -> None:
        await sender.send("POST", f"{base_url}/echo", str(i).encode(), {})
        order.append(i)

    try:
        first = asyncio.ensure_future(one(0))
        await asyncio.sleep(0.01)
        rest = [asyncio.ensure_future(one(i)) for i in range(1, 20)]
        await asyncio.gather(first, *rest)
    finally:
        await sender.aclose()
    assert order == list(range(20))


async def test_answers_read_as_httpx_responses_do(base_url: str) -> None:
    sender = DirectSender(2, httpx.Timeout(5.0))
    try:
        latin = await sender.send("GET", f"{base_url}/latin", b"", {})
        echo = await sender.send("POST", f"{base_url}/echo", b"[1]", {})
        zipped = await sender.send("GET", f"{base_url}/gzip", b"", {})
    finally:
        await sender.aclose()
    assert isinstance(latin, Answer)  # no httpx.Response built for a plain answer
    assert latin.text == "café"  # the charset of its Content-Type, as httpx reads it
    assert latin.content == "café".encode("latin-1")
    assert latin.headers.get("x-trace") == latin.headers["X-Trace"] == "t-1"
    assert echo.json()["body"] == "[1]"
    # An encoded answer is decoded by httpx and comes back as its response.
    assert isinstance(zipped, httpx.Response)
    assert zipped.json() == {"zipped": True}


_TLS_PROBE = """
import asyncio, sys
import httpx
from channels import http_transport
from channels.http_transport import DirectSender

async def main() -> None:
    sender = DirectSender(2, httpx.Timeout(5.0))
    try:
        answer = await sender.send("POST", sys.argv[1] + "/echo", b"{}", {})
        print(answer.status_code)
    except httpx.ConnectError as exc:
        print("refused:", exc)
    finally:
        await sender.aclose()

asyncio.run(main())
http_transport.exit_now(0)  # as the CLI and the daemon's processes end
"""


def test_https_is_verified_against_the_systems_trust_store(tmp_path: Path) -> None:
    """TLS goes through rustls with the platform's trust store: a server whose CA is not
    trusted is refused; ``SSL_CERT_FILE`` names the CAs to trust instead, as with OpenSSL.
    Each in a process of its own (the trust store is read once per process) that exits
    right after its send, through :func:`~channels.http_transport.exit_now`: without it,
    most such processes aborted in the interpreter's finalization (SIGABRT, status -6)."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    root = Path(__file__).resolve().parents[2]
    with serve(_app, certfile=str(tmp_path / "cert.pem"), keyfile=str(tmp_path / "key.pem")) as url:

        def probe(**env: str) -> str:
            done = subprocess.run(
                [sys.executable, "-c", _TLS_PROBE, url],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=root,
                env={**os.environ, **env},
                check=False,
            )
            assert done.returncode == 0, done.stderr
            return done.stdout.strip()

        for _ in range(5):
            assert probe().startswith("refused:")
            assert probe(SSL_CERT_FILE=str(tmp_path / "ca.pem")) == "200"


_EXIT_PROBE = """
import sys
from channels import http_transport
http_transport._started = {started}  # as after a send through pyreqwest

def main() -> None:
    print("said before the end")  # buffered: stdout is a pipe
    {ending}

http_transport.run_main(main)
print("after run_main")
"""


@pytest.mark.parametrize(
    ("ending", "status", "err"),
    [("pass", 0, ""), ("sys.exit(3)", 3, ""), ("sys.exit('cannot go on')", 1, "cannot go on\n")],
)
@pytest.mark.parametrize("started", [True, False])
def test_a_process_ends_with_its_own_status_and_output(
    ending: str, status: int, err: str, started: bool
) -> None:
    """With pyreqwest started, :func:`run_main` ends the process itself (nothing after it
    runs) with the status ``SystemExit`` carried and everything printed; without, the
    process goes on to its usual exit."""
    source = _EXIT_PROBE.format(started=started, ending=ending)
    done = subprocess.run(
        [sys.executable, "-c", source],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert done.returncode == status
    assert done.stderr == err
    after = "after run_main\n" if started is False and status == 0 else ""
    assert done.stdout == "said before the end\n" + after


async def test_an_answer_whose_body_does_not_decode_keeps_its_status(base_url: str) -> None:
    """A receiver that took the message (200) with a body that is not the gzip it claims:
    the channel sees the 200 and the body as it came, not an exception (which the worker
    would have retried: the message sent twice)."""
    client = pooled_client(5.0, 2)
    try:
        answer = await client.post(f"{base_url}/badgzip", content=b"{}", headers={})
    finally:
        await client.aclose()
    assert answer.status_code == 200
    assert answer.content == b"not gzip at all"
    assert "content-encoding" not in answer.headers


async def test_a_header_value_a_header_cannot_carry_fails_for_good_without_the_value(
    base_url: str,
) -> None:
    client = pooled_client(5.0, 2)
    try:
        with pytest.raises(DeliveryError) as refused:
            await client.post(
                f"{base_url}/echo", content=b"", headers={"Authorization": "Bearer tk_s3cret\n"}
            )
    finally:
        await client.aclose()
    assert not refused.value.retryable
    assert refused.value.reason == (
        "the request could not be built: a header 'Authorization' has a character a header "
        "cannot carry"
    )
    assert "s3cret" not in repr(refused.value)
