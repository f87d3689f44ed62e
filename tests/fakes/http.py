"""Serving a fake provider (an ASGI app) on 127.0.0.1 from a background thread.

The fakes speak the providers' real protocols (paths, headers, JSON bodies, status codes) so
that channels are tested against HTTP, not against mocks of their own code.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test process owns the signals
        return None


@contextmanager
def serve(app: Any, *, certfile: str | None = None, keyfile: str | None = None) -> Iterator[str]:
    """Serve ``app`` (HTTP/1.1; TLS when a certificate is given); yield its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
    )
    server = _Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = 200
    while not server.started and thread.is_alive() and deadline:
        threading.Event().wait(0.025)
        deadline -= 1
    if not server.started:
        raise RuntimeError("fake server did not start")
    scheme = "https" if certfile else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def client_context(ca_pem: bytes) -> ssl.SSLContext:
    """A client TLS context that trusts a test CA (from trustme)."""
    context = ssl.create_default_context()
    context.load_verify_locations(cadata=ca_pem.decode())
    return context
