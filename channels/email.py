"""Email channel over SMTP (aiosmtplib): STARTTLS or implicit TLS, a small connection pool.

Messages are multipart text + HTML with a Message-ID, Date, From, To (with the
customer's name) and, when configured, Reply-To. SMTP replies map onto the retry
contract: 4xx and connection trouble are retryable, 5xx on the recipient is permanent
and disables the address. Failures while setting up a connection (TLS verification,
AUTH) are retryable whatever their code: they are the relay's or our configuration's
fault, the same for every message, and deliveries should go once it is fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from datetime import UTC
from email.errors import HeaderParseError, MessageError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, formatdate, make_msgid, parseaddr
from pathlib import Path
from typing import Any, Literal

import aiosmtplib
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from channels.base import ContactPointState, DeliveryError, Message, Receipt, Target


class EmailSettings(BaseModel):
    """Settings of the SMTP email channel."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["email"] = "email"
    contact: str = "email"
    host: str = "127.0.0.1"
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    """``starttls`` upgrades a plain connection (port 587), ``tls`` is implicit TLS (465)."""
    username: str | None = None
    password: SecretStr | None = None
    sender: str = Field(default="Broadcaster <noreply@localhost>", alias="from")
    reply_to: str | None = None
    pool_size: int = Field(default=4, ge=1, le=64)
    messages_per_connection: int = Field(default=100, ge=1, le=100_000)
    """Relays limit messages per session; after this many the connection is closed and a
    new one opened."""
    timeout: float = Field(default=30.0, gt=0)
    ca_file: Path | None = None
    """Trust this CA bundle instead of the system's (private relays, tests)."""
    verify: bool = True
    message_id_domain: str | None = None


class EmailChannel:
    """Sends one email per call over a pooled, reused SMTP connection."""

    def __init__(self, name: str, settings: EmailSettings) -> None:
        self.name = name
        self.contact = settings.contact
        self._settings = settings
        self._idle: asyncio.LifoQueue[aiosmtplib.SMTP] = asyncio.LifoQueue()
        self._slots = asyncio.Semaphore(settings.pool_size)
        self._used: dict[int, int] = {}
        sender_name, sender_addr = parseaddr(settings.sender)
        if "@" not in sender_addr:
            raise ValueError(f"email channel {name!r}: 'from' is not an address: {settings.sender}")
        self._sender_addr = sender_addr
        self._sender = formataddr((sender_name, sender_addr))
        self._domain = settings.message_id_domain or sender_addr.rsplit("@", 1)[1]
        self._closed = False

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(
            cafile=str(self._settings.ca_file) if self._settings.ca_file else None
        )
        if not self._settings.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def _connect(self) -> aiosmtplib.SMTP:
        """A connected, secured and logged-in client; closed again if any step fails."""
        s = self._settings
        client = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            timeout=s.timeout,
            use_tls=s.security == "tls",
            start_tls=False,
            tls_context=self._tls_context() if s.security != "none" else None,
        )
        try:
            await client.connect()
            if s.security == "starttls":
                await client.starttls()
            if s.username:
                password = s.password.get_secret_value() if s.password else ""
                await client.login(s.username, password)
        except Exception:
            # Without this a failed STARTTLS or login leaves an open socket behind.
            await _discard(client)
            raise
        except BaseException:
            _abort(client)
            raise
        self._used[id(client)] = 0  # a new connection; forget any reused id
        return client

    def build(self, target: Target, message: Message) -> EmailMessage:
        """The MIME message for one target (public so tests and previews can inspect it)."""
        email = EmailMessage()
        email["From"] = self._sender
        # A line break in a stored name must not stop the email (or condemn the address).
        name = " ".join(target.name.split())
        email["To"] = Address(display_name=name, addr_spec=_recipient(target))
        if self._settings.reply_to:
            email["Reply-To"] = self._settings.reply_to
        email["Subject"] = message.subject
        # The daemon's clock (message.created_at) dates the message, so a fake clock shows.
        if message.created_at is not None:
            email["Date"] = format_datetime(message.created_at.astimezone(UTC), usegmt=True)
        else:
            email["Date"] = formatdate(localtime=False, usegmt=True)
        idstring = message.idempotency_key.replace("/", ".") or None
        email["Message-ID"] = make_msgid(idstring=idstring, domain=self._domain)
        for key, value in message.headers.items():
            email[key] = value
        email.set_content(message.text)
        if message.html is not None:
            email.add_alternative(message.html, subtype="html")
        return email

    async def send(self, target: Target, message: Message) -> Receipt:
        if self._closed:
            raise DeliveryError("email channel is closed", retryable=True)
        try:
            recipient = _recipient(target)
        except (ValueError, IndexError, HeaderParseError) as exc:
            raise DeliveryError(
                f"cannot address {target.address!r}: {exc}",
                retryable=False,
                contact_point=ContactPointState.DISABLED,
            ) from exc
        try:
            email = self.build(target, message)
        except (ValueError, MessageError) as exc:
            # The message is at fault (a header with a line break, a duplicate unique
            # header), not the address: fail it without condemning the contact point.
            raise DeliveryError(f"cannot build the email: {exc}", retryable=False) from exc
        async with self._slots:
            client = self._idle.get_nowait() if not self._idle.empty() else None
            if client is not None and not client.is_connected:
                await _discard(client)  # the relay closed it while it was idle
                client = None
            if client is None:
                try:
                    client = await self._connect()
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                    # Connecting, TLS (an unverifiable certificate included) and AUTH
                    # (a refused password included) fail for every message alike: the
                    # relay or our settings are at fault, never this address or message.
                    # Retry, so the deliveries go out once an operator fixes it.
                    raise DeliveryError(f"SMTP connection failed: {exc}", retryable=True) from exc
            try:
                # The envelope names the target only: headers (Cc, Bcc passed through
                # Message.headers) must not add recipients.
                await client.send_message(email, sender=self._sender_addr, recipients=[recipient])
            except aiosmtplib.SMTPRecipientsRefused as exc:
                await _discard(client)
                raise _refused(exc.recipients) from exc
            except aiosmtplib.SMTPResponseException as exc:
                await _discard(client)
                raise _from_reply(exc.code, exc.message) from exc
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                await _discard(client)
                raise DeliveryError(f"SMTP connection failed: {exc}", retryable=True) from exc
            except ValueError as exc:
                # aiosmtplib refused to put the address on the wire; nothing was sent.
                await self._checkin(client)
                raise DeliveryError(
                    f"cannot address {target.address!r}: {exc}",
                    retryable=False,
                    contact_point=ContactPointState.DISABLED,
                ) from exc
            except BaseException:
                # Cancelled mid-transaction: the session state is unknown, drop it.
                _abort(client)
                raise
            await self._checkin(client)
        return Receipt(provider_message_id=str(email["Message-ID"]))

    async def _checkin(self, client: aiosmtplib.SMTP) -> None:
        """Back to the pool; closed instead if it broke, aclose() ran during the send, or it
        carried ``messages_per_connection`` messages."""
        used = self._used.get(id(client), 0) + 1
        if (
            client.is_connected
            and not self._closed
            and used < self._settings.messages_per_connection
        ):
            self._used[id(client)] = used
            self._idle.put_nowait(client)
        else:
            self._used.pop(id(client), None)
            await _discard(client, polite=client.is_connected)

    async def aclose(self) -> None:
        self._closed = True
        idle: list[aiosmtplib.SMTP] = []
        while not self._idle.empty():
            idle.append(self._idle.get_nowait())
        await asyncio.gather(*(_discard(client, polite=True) for client in idle))


_CLOSE_GRACE = 2.0
"""Seconds a connection gets to finish a polite close (QUIT, TLS close_notify)."""


async def _discard(client: aiosmtplib.SMTP, *, polite: bool = False) -> None:
    """Close a connection and return once its socket is closed.

    Only a clean session ends politely (QUIT, then the TLS close handshake); after an
    error the connection is aborted. Waiting for the socket matters at shutdown:
    aiosmtplib's close() only starts closing, and a loop that ends before the TLS
    close handshake finishes leaves the socket open (a ResourceWarning here, a
    half-closed connection on the relay).
    """
    transport = client.transport  # quit() and close() forget it
    sock = transport.get_extra_info("socket") if transport is not None else None
    if polite and client.is_connected:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            await client.quit()
    if sock is not None and not await _socket_closed(sock, _CLOSE_GRACE if polite else 0.0):
        if isinstance(transport, asyncio.Transport):
            transport.abort()
        await _socket_closed(sock, _CLOSE_GRACE)
    client.close()


def _abort(client: aiosmtplib.SMTP) -> None:
    """Drop a connection at once (no await: for cancellation and failed setup)."""
    if isinstance(client.transport, asyncio.Transport):
        client.transport.abort()
    client.close()


async def _socket_closed(sock: Any, grace: float) -> bool:
    """Poll until the socket is closed (fileno -1) or ``grace`` seconds have passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while sock.fileno() != -1:
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.005)
    return True


def _recipient(target: Target) -> str:
    """The target's address as an addr-spec; raises on anything that is not one."""
    address = Address(addr_spec=target.address)
    if not address.username or not address.domain:
        raise ValueError("an email address needs a local part and a domain")
    return address.addr_spec


def _from_reply(code: int, text: str) -> DeliveryError:
    reason = f"SMTP {code}: {text}"
    if 400 <= code < 500:
        return DeliveryError(reason, retryable=True)
    return DeliveryError(reason, retryable=False)


def _refused(recipients: list[aiosmtplib.SMTPRecipientRefused]) -> DeliveryError:
    first = recipients[0] if recipients else None
    if first is None:
        return DeliveryError("recipient refused", retryable=False)
    reason = f"SMTP {first.code} for {first.recipient}: {first.message}"
    if 400 <= first.code < 500:
        return DeliveryError(reason, retryable=True)
    return DeliveryError(reason, retryable=False, contact_point=ContactPointState.DISABLED)
