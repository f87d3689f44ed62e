"""A local SMTP sink (aiosmtpd) that keeps what it receives, for ``broadcaster demo`` and tests.

The demo and the tests drive the real email channel (SMTP, STARTTLS or implicit TLS,
AUTH, the connection pool) against a real server, and simulate awkward relays: slow ones
(``delay``) and ones that refuse chosen recipients with a chosen reply (``reject``).

Why a thread and event loop of its own, and not ``aiosmtpd.controller.Controller``:

- ``start()``/``stop()`` are synchronous, so the sink works the same from sync tests,
  async tests, end-to-end tests where the daemon is another process, and inside
  ``broadcaster demo`` next to the daemon. A server in the caller's loop would freeze
  whenever the caller blocks (``wait_for`` in an async test would deadlock).
- Port 0: the socket is bound in the calling thread before the server thread starts,
  so ``.port`` is known at once, with no "find a free port, hope it stays free" race.
  ``Controller`` needs a concrete port (its readiness probe connects to it), the probe
  is an extra session that would spoil connection counts, and its ``stop()`` cancels
  tasks without awaiting them. aiosmtpd's ``SMTP`` protocol on our own
  ``asyncio.run()`` loop avoids all three.

No warnings, so tests run with ``-W error``: the protocol gets its loop explicitly (no
``get_event_loop()`` deprecation); AUTH is enforced in our MAIL hook, not with
``auth_required`` (aiosmtpd warns when AUTH is required without ``auth_require_tls``,
which implicit TLS needs since aiosmtpd counts only STARTTLS as TLS); and the legacy
``Session.login_data`` setter, which logs a deprecation on every AUTH, is replaced.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import email.policy
import itertools
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from types import TracebackType
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

_REPLY = re.compile(r"^[45]\d\d [^\r\n]*$")
_PARSER = BytesParser(policy=email.policy.default)
_STOP_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class ReceivedMail:
    """One message the sink accepted, with its envelope and how it arrived."""

    sender: str  # envelope MAIL FROM, not the From header
    recipients: tuple[str, ...]  # envelope RCPT TO the sink accepted
    message: EmailMessage
    received_at: datetime  # UTC
    tls: bool  # STARTTLS or implicit TLS
    connection: int  # 1, 2, ... in accept order: shows pooling and reuse
    auth_login: str | None = None  # the user the session authenticated as
    auth_mechanism: str | None = None  # PLAIN or LOGIN
    mail_options: tuple[str, ...] = ()  # MAIL FROM parameters (SIZE=…, SMTPUTF8)
    size: int = 0  # octets of the message as received (CRLF line endings, dots unstuffed)


class _QuietSession(Session):
    """aiosmtpd's Session whose legacy ``login_data`` does not log a deprecation warning."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class _SinkProtocol(SMTP):
    """aiosmtpd's SMTP protocol that knows its connection number and raw transport."""

    def __init__(self, sink: SmtpSink, number: int, **kwargs: Any) -> None:
        super().__init__(_Handler(sink), **kwargs)
        self.connection_number = number
        self._sink = sink
        self.raw_transport: asyncio.BaseTransport | None = None

    def _create_session(self) -> Session:
        return _QuietSession(self.loop)

    async def smtp_EHLO(self, hostname: str) -> None:
        if not self._sink.esmtp:  # an old relay: HELO only, no extensions
            await self.push("502 5.5.1 Command not implemented")
            return
        await super().smtp_EHLO(hostname)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called again with the TLS transport after STARTTLS; keep the socket's own.
        if self.raw_transport is None:
            self.raw_transport = transport
            # aiosmtpd answers pipelined commands one write each. With Nagle's algorithm
            # on (asyncio leaves it on for the sockets of a server socket made with
            # socket.create_server, whose protocol number is 0), the second answer waits
            # for the client's acknowledgement of the first, which the client delays
            # (40 ms on Linux) having nothing to send: every pipelined message stalled.
            # Relays that offer PIPELINING send a group's answers together (RFC 2920).
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._sink._cond:
                self._sink._live.add(self)
                self._sink._drained.clear()
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        with self._sink._cond:
            self._sink._live.discard(self)
            self._sink._cond.notify_all()
            if not self._sink._live:
                self._sink._drained.set()  # on the sink's loop, as connection_lost is
        super().connection_lost(error)


class _Handler:
    """aiosmtpd hooks: enforce AUTH, refuse chosen recipients, slow down, record."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_EHLO(
        self,
        server: _SinkProtocol,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # what aiosmtpd does itself when there is no hook
        if not self._sink.pipelining:
            return responses
        # aiosmtpd reads one command line at a time, so it serves pipelined commands in
        # order; it only does not say so. The last line ("250 HELP") stays last.
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_MAIL(
        self,
        server: _SinkProtocol,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self._sink._credentials is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        refusal = self._sink._next_mail_refusal()
        if refusal is not None:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: _SinkProtocol,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self._sink.reject.get(address.lower())
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: _SinkProtocol, session: Session, envelope: Envelope) -> str:
        if self._sink.delay > 0:
            await asyncio.sleep(self._sink.delay)
        transport = server.transport
        tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        auth = session.auth_data if isinstance(session.auth_data, tuple) else (None, None)
        mail = ReceivedMail(
            sender=str(envelope.mail_from),
            recipients=tuple(envelope.rcpt_tos),
            # SMTP carries CRLF; parse with the platform's "\n" so contents compare plainly.
            message=_PARSER.parsebytes((envelope.original_content or b"").replace(b"\r\n", b"\n")),
            received_at=datetime.now(UTC),
            tls=tls,
            connection=server.connection_number,
            auth_mechanism=auth[0],
            auth_login=auth[1],
            mail_options=tuple(envelope.mail_options),
            size=len(envelope.original_content or b""),
        )
        self._sink._record(mail)
        return "250 2.0.0 OK: queued"


class SmtpSink:
    """An SMTP server on a thread of its own that keeps every message it accepts.

    ``tls_context`` is a *server* context (``ssl.Purpose.CLIENT_AUTH``) with the
    certificate loaded. With it the sink offers STARTTLS, or, with ``implicit_tls``,
    speaks TLS from the first byte. ``credentials`` (user -> password) makes AUTH
    mandatory, offered only over TLS, with the ``auth_mechanisms`` listed. ``reject``
    maps a recipient address to the reply RCPT gets instead of 250, e.g.
    ``"550 5.1.1 mailbox unavailable"`` or ``"451 4.3.0 try later"``. ``mail_refusals``
    are the replies the first MAIL commands get instead of 250, one each, in order: a
    relay that refuses our rate for a while (``"450 4.7.1 Error: too much mail from
    127.0.0.1"``), then takes the messages again. With ``esmtp``
    False it plays an old relay that refuses EHLO: HELO only, no extensions. It offers
    PIPELINING (RFC 2920), as the relays in use do, unless ``pipelining`` is False.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        implicit_tls: bool = False,
        delay: float = 0.0,
        reject: Mapping[str, str] | None = None,
        mail_refusals: Iterable[str] = (),
        credentials: Mapping[str, str] | None = None,
        auth_mechanisms: Iterable[str] = ("PLAIN", "LOGIN"),
        esmtp: bool = True,
        pipelining: bool = True,
    ) -> None:
        if (implicit_tls or require_starttls) and tls_context is None:
            raise ValueError("implicit_tls and require_starttls need a tls_context")
        if credentials is not None and tls_context is None:
            raise ValueError("credentials need a tls_context: AUTH is only offered over TLS")
        if delay < 0:
            raise ValueError("delay must be >= 0")
        for address, reply in (reject or {}).items():
            if not _REPLY.match(reply):
                raise ValueError(f"reject[{address!r}]: want '4xx text' or '5xx text': {reply!r}")
        refusals = list(mail_refusals)
        for n, reply in enumerate(refusals):
            if not _REPLY.match(reply):
                raise ValueError(f"mail_refusals[{n}]: want '4xx text' or '5xx text': {reply!r}")
        self.host = host
        self.port = port
        self.tls_context = tls_context
        self.require_starttls = require_starttls
        self.implicit_tls = implicit_tls
        self.delay = delay
        self.reject: dict[str, str] = {k.lower(): v for k, v in (reject or {}).items()}
        self._mail_refusals = collections.deque(refusals)
        self.esmtp = esmtp
        self.pipelining = pipelining
        self._credentials = dict(credentials) if credentials is not None else None
        self._mechanisms = {m.upper() for m in auth_mechanisms}
        self._cond = threading.Condition()
        self._messages: list[ReceivedMail] = []
        self._numbers = itertools.count(1)
        self._connections = 0
        self._live: set[_SinkProtocol] = set()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._drained = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> SmtpSink:
        """Bind, start serving on the sink's thread, and return once it accepts connections."""
        if self._thread is not None:
            raise RuntimeError("SmtpSink already started")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, self.port), family=family)  # SO_REUSEADDR
        self.port = sock.getsockname()[1]
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(sock, started), name=f"devsmtp:{self.port}", daemon=True
        )
        self._thread.start()
        try:
            started.result(timeout=_STOP_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close the listener and every open session; wait for the thread to end."""
        thread, loop, event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and event is not None:
            # RuntimeError: the loop is already closed, so the thread is ending anyway.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)
        thread.join(_STOP_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError("SmtpSink thread did not stop")
        self._thread = self._loop = self._stop_event = None

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what arrived ------------------------------------------------------------------

    @property
    def messages(self) -> list[ReceivedMail]:
        """A snapshot of the accepted messages, in arrival order."""
        with self._cond:
            return list(self._messages)

    @property
    def connections(self) -> int:
        """How many client connections the sink has accepted since it started."""
        with self._cond:
            return self._connections

    @property
    def open_connections(self) -> int:
        """How many client connections are open right now."""
        with self._cond:
            return len(self._live)

    def wait_all_closed(self, timeout: float) -> None:
        """Block until no client connection is open (a client closed its pool, say)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._live:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"SmtpSink still has {len(self._live)} open connection(s)")
                self._cond.wait(remaining)

    def clear(self) -> None:
        """Forget the messages received so far (the connection count stays)."""
        with self._cond:
            self._messages.clear()

    def wait_for(self, count: int, timeout: float) -> list[ReceivedMail]:
        """Block until at least ``count`` messages arrived; TimeoutError at the deadline."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"SmtpSink got {len(self._messages)} of {count} messages in {timeout}s"
                    )
                self._cond.wait(remaining)
            return list(self._messages)

    async def wait_for_async(self, count: int, timeout: float) -> list[ReceivedMail]:  # noqa: ASYNC109
        """:meth:`wait_for` without blocking the caller's event loop.

        The deadline is kept by the waiting thread itself, which ``asyncio.timeout``
        could not interrupt; hence a ``timeout`` argument.
        """
        return await asyncio.to_thread(self.wait_for, count, timeout)

    # -- the sink's thread ---------------------------------------------------------------

    @property
    def mail_refusals_left(self) -> int:
        """How many of ``mail_refusals`` no MAIL command has met yet."""
        with self._cond:
            return len(self._mail_refusals)

    def _next_mail_refusal(self) -> str | None:
        with self._cond:
            return self._mail_refusals.popleft() if self._mail_refusals else None

    def _record(self, mail: ReceivedMail) -> None:
        with self._cond:
            self._messages.append(mail)
            self._cond.notify_all()

    def _run(self, sock: socket.socket, started: concurrent.futures.Future[None]) -> None:
        try:
            asyncio.run(self._serve(sock, started))
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            else:
                raise
        finally:
            sock.close()

    async def _serve(self, sock: socket.socket, started: concurrent.futures.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop_event = asyncio.Event()
        self._drained = asyncio.Event()  # one per loop: start() after stop() gets a new loop
        server = await loop.create_server(
            lambda: self._protocol(loop),
            sock=sock,
            ssl=self.tls_context if self.implicit_tls else None,
        )
        started.set_result(None)
        try:
            await self._stop_event.wait()
        finally:
            server.close()
            with self._cond:
                live = list(self._live)
            for protocol in live:
                transport = protocol.raw_transport
                if isinstance(transport, asyncio.Transport):
                    transport.abort()
                elif transport is not None:
                    transport.close()
            if self.open_connections:  # let the aborted sessions finish closing
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._drained.wait(), _STOP_TIMEOUT)
            await server.wait_closed()

    def _protocol(self, loop: asyncio.AbstractEventLoop) -> _SinkProtocol:
        with self._cond:
            self._connections += 1
            number = next(self._numbers)
        return _SinkProtocol(
            self,
            number,
            loop=loop,
            hostname="localhost",
            ident="Broadcaster devsmtp",
            enable_SMTPUTF8=True,
            tls_context=None if self.implicit_tls else self.tls_context,
            require_starttls=self.require_starttls,
            # aiosmtpd only counts STARTTLS as TLS; under implicit TLS every session is.
            auth_require_tls=not self.implicit_tls,
            auth_exclude_mechanism=[m for m in ("PLAIN", "LOGIN") if m not in self._mechanisms],
            authenticator=self._authenticate,
        )

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: object,
    ) -> AuthResult:
        if self._credentials is None or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode(errors="replace")
        if self._credentials.get(login) != auth_data.password.decode(errors="replace"):
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=(mechanism, login))
