"""The FastAPI application and the uvicorn server that runs it inside the daemon's loop."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator, Sequence

import uvicorn
from fastapi import FastAPI

from broadcaster import __version__
from broadcaster.web import (
    console,
    errors,
    intake,
    metrics,
    pages,
    preferences,
    public,
    statuspage,
    twilio,
)
from broadcaster.web.api import customers, incidents, unreached, work
from broadcaster.web.inputs import NulGuard
from broadcaster.web.limits import BodyLimit
from broadcaster.web.state import WebState

DESCRIPTION = """Tells every affected customer about a disruption, on a promised schedule.

Authenticate with `Authorization: Bearer <token>` (`broadcaster tokens create --role
viewer|operator|admin`). Errors are JSON: `{"error": {"message": ..., "field": ...}}`.
"""


def create_app(state: WebState) -> FastAPI:
    app = FastAPI(
        title="Broadcaster",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
    )
    app.state.broadcaster = state
    errors.install(app)
    app.add_middleware(NulGuard)
    app.add_middleware(
        BodyLimit,
        limit=state.settings.http.max_body_bytes,
        exempt=[("POST", "/api/v1/customers/import")],
    )
    for router in (
        incidents.router,
        unreached.router,
        customers.router,
        work.router,
        statuspage.router,
        metrics.router,
        public.router,
        preferences.router,
        pages.router,
        twilio.router,
        intake.router,
        console.router,
    ):
        app.include_router(router)
    return app


class EmbeddedServer(uvicorn.Server):
    """uvicorn in an existing event loop; the daemon owns the signals, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class StartupError(RuntimeError):
    """The daemon cannot start as configured (e.g. its HTTP port is taken)."""


def bind(host: str, port: int) -> socket.socket:
    """Listen before anything else starts, so a taken port fails start-up with a clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"http: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.listen(128)
    sock.setblocking(False)
    return sock


def make_server(
    app: FastAPI, host: str, port: int, *, trusted_proxies: Sequence[str] | None = None
) -> EmbeddedServer:
    """The server for ``app``. ``X-Forwarded-For`` / ``-Proto`` are believed only from
    ``trusted_proxies`` (default: the app's ``http.trusted_proxies``, empty unless set):
    uvicorn on its own believes them from 127.0.0.1, so any local process could write
    any source address into the audit log."""
    if trusted_proxies is None:
        state: WebState | None = getattr(app.state, "broadcaster", None)
        trusted_proxies = state.settings.http.trusted_proxies if state is not None else []
    trusted = list(trusted_proxies)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted,
    )
    return EmbeddedServer(config)
