"""Email channel over SMTP (aiosmtplib): STARTTLS or implicit TLS, a small connection pool.

Messages are multipart text + HTML with a Message-ID, Date, From, To (with the
customer's name) and, when configured, Reply-To. The Message-ID is the same on every
attempt at one delivery, so a mailbox can drop a copy sent again; an incident's messages
to one customer reply to one thread id (In-Reply-To, References), so mail clients show
them as one conversation (:meth:`EmailChannel.message_id`, :meth:`EmailChannel.thread_id`).
SMTP replies map onto the retry
contract: 4xx and connection trouble are retryable, a 5xx on the recipient that says the
mailbox does not exist is permanent and disables the address. A 4xx that says the relay
refuses our *rate* (Amazon SES's "454 Throttling failure", Postfix's "too much mail from",
Microsoft 365's "concurrent server connections": :func:`rate_refusal`) is ``throttled``:
the dispatcher pauses the channel instead of spending every queued message's attempts on a
relay that refuses them all alike. Failures while setting up a
connection (TLS verification, AUTH) are retryable whatever their code: they are the
relay's or our configuration's fault, the same for every message, and deliveries should
go once it is fixed.

Internationalised addresses (RFC 6530): an address that is not ASCII goes with SMTPUTF8
(RFC 6531) and UTF-8 headers (RFC 6532) where the relay offers it. Where it does not, a
non-ASCII domain goes as its IDNA A-label (``xn--…``, RFC 5891) instead; a non-ASCII
local part has no ASCII form, and that delivery fails for good without blaming the address.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.policy
import functools
import hashlib
import os
import re
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes, message_from_string
from email.errors import HeaderParseError, MessageError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid, parseaddr
from pathlib import Path
from typing import Any, Literal

import aiosmtplib
import idna
from aiosmtplib.email import quote_address
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from channels.base import ContactPointState, DeliveryError, Message, Receipt, Target
from channels.smtp_pipelining import pipelined_transaction


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
    pipelining: bool = True
    """Where the relay offers PIPELINING (RFC 2920), send MAIL, RCPT and DATA together:
    two round trips a message instead of four. False keeps to one command at a time."""
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
        self.concurrency = settings.pool_size
        """Sends on the wire at once: one per pooled connection (see channels.base)."""
        self._idle: asyncio.LifoQueue[aiosmtplib.SMTP] = asyncio.LifoQueue()
        self._slots = asyncio.Semaphore(settings.pool_size)
        self._used: dict[int, int] = {}
        sender_name, sender_addr = parseaddr(settings.sender)
        if "@" not in sender_addr:
            raise ValueError(f"email channel {name!r}: 'from' is not an address: {settings.sender}")
        self._sender_addr = sender_addr
        try:  # aiosmtplib's check: nothing that could smuggle ESMTP parameters in
            self._mail_from = b"FROM:" + quote_address(sender_addr).encode("ascii")
        except (ValueError, UnicodeEncodeError) as exc:
            raise ValueError(f"email channel {name!r}: 'from' is not an address: {exc}") from exc
        self._sender = formataddr((sender_name, sender_addr))
        self._domain = settings.message_id_domain or sender_addr.rsplit("@", 1)[1]
        if not _DOMAIN.fullmatch(self._domain):
            raise ValueError(f"email channel {name!r}: not a Message-ID domain: {self._domain!r}")
        # The headers every message carries the same, rendered once. (formataddr above
        # refuses a sender address that is not ASCII, so From never needs SMTPUTF8.)
        try:
            self._from = _stdlib_header("From", self._sender)
            self._reply_to = (
                _stdlib_header("Reply-To", settings.reply_to) if settings.reply_to else ""
            )
        except ValueError as exc:
            raise ValueError(f"email channel {name!r}: {exc}") from exc
        reserved = ["from", "to", "subject", "date", "message-id"]
        self._reserved = (*reserved, "reply-to") if settings.reply_to else tuple(reserved)
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
            await _greet(client)
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

    def build(self, target: Target, message: Message) -> OutgoingEmail:
        """The message for one target as it goes on the wire (public so tests and previews
        can inspect it: :meth:`OutgoingEmail.parse`).

        Serialised here rather than through :class:`email.message.EmailMessage`: the
        standard library's header registry parses and refolds every header it is given,
        several milliseconds a message, most of a round's CPU. What varies per message
        (To, Date, Message-ID, the delivery headers, the bodies) is written directly;
        what does not (From, Reply-To) is rendered once by the standard library, and
        anything unusual (a non-ASCII subject, say) goes through it too, cached.
        """
        return self._compose(_recipient(target), target, message)

    def message_id(self, message: Message) -> str:
        """The Message-ID of ``message``: the same on every attempt at one delivery, so that
        a copy sent again (after a relay's answer was lost, or a lease expired) is the same
        message to a mailbox, which can drop it (Gmail, Dovecot's duplicate suppression).

        ``<key.digest@domain>``: the idempotency key (the delivery id; no customer data)
        and a digest of it with the domain, the thread and the time its content was posted
        (:attr:`~channels.base.Message.posted_at`). That time keeps it unique beyond one
        store: a new store, whose delivery ids start again at 1, must not repeat an earlier
        one's ids, or mailboxes would drop its messages as duplicates. A message that does
        not say when its content was posted (a staff notice) is salted with the time it was
        composed instead: unique, and stable only within one composition. Random without a
        key.
        """
        key = message.idempotency_key
        if not key:
            return make_msgid(domain=self._domain)
        when = message.posted_at or message.created_at
        digest = _digest("message", self._domain, key, message.thread, _instant(when))
        return f"<{_id_text(key)}.{digest}@{self._domain}>"

    def thread_id(self, target: Target, message: Message) -> str | None:
        """The id every message of one thread (one incident, told to one customer) replies
        to: In-Reply-To and References name it, so that mail clients show the incident's
        messages as one conversation (Thunderbird, Apple Mail and Outlook by References;
        Gmail when the subjects match too). No message is sent with it as its own
        Message-ID: the first notice may not be the customer's first email of the incident
        (it went by SMS, or the address came later), and a store started anew, whose
        incident ids repeat, could otherwise send a Message-ID that mailboxes have seen.
        None for a message that stands alone."""
        if not message.thread:
            return None
        person = target.customer_id or target.address
        digest = _digest("thread", self._domain, message.thread, person)
        return f"<{_id_text(message.thread)}.{digest}@{self._domain}>"

    def _compose(self, recipient: str, target: Target, message: Message) -> OutgoingEmail:
        """:meth:`build` for the addr-spec ``recipient``: with SMTPUTF8 and UTF-8 headers
        (RFC 6532: the address as it is in To, never encoded) if it is not ASCII."""
        # A line break in a stored name must not stop the email (or condemn the address).
        name = " ".join(target.name.split())
        smtputf8 = not recipient.isascii()
        parts = [self._from, _to_header(name, recipient)]
        if self._reply_to:
            parts.append(self._reply_to)
        parts.append(_header("Subject", message.subject))
        # The daemon's clock (message.created_at) dates the message, so a fake clock shows.
        created = message.created_at if message.created_at is not None else datetime.now(UTC)
        parts.append(_date_header(int(created.timestamp())))
        message_id = self.message_id(message)
        parts.append(f"Message-ID: {message_id}\r\n")
        counts = dict.fromkeys(self._reserved, 1)
        thread = self.thread_id(target, message)
        if thread is not None:
            parts.append(f"In-Reply-To: {thread}\r\nReferences: {thread}\r\n")
            counts["in-reply-to"] = counts["references"] = 1
        for key, value in message.headers.items():
            lowered = key.lower()
            if lowered in _DROPPED or lowered.startswith("content-"):
                # Bcc is never transmitted; the MIME structure is the channel's to write.
                continue
            header = _header(key, value)  # validates the name and the value
            limit = _max_count(lowered)
            if limit is not None and counts.get(lowered, 0) >= limit:
                raise ValueError(f"There may be at most {limit} {key} headers in a message")
            counts[lowered] = counts.get(lowered, 0) + 1
            parts.append(header)
        head = "".join(parts).encode("utf-8" if smtputf8 else "ascii")
        text = _text_part("plain", message.text)
        if message.html is None:
            data = head + _MIME_VERSION + text
        else:
            html = _text_part("html", message.html)
            boundary = _boundary(text, html)
            data = b"".join(
                (
                    head,
                    _MIME_VERSION,
                    b'Content-Type: multipart/alternative;\r\n boundary="%s"\r\n\r\n' % boundary,
                    b"--%s\r\n" % boundary,
                    text,
                    b"\r\n--%s\r\n" % boundary,
                    html,
                    b"\r\n--%s--\r\n" % boundary,
                )
            )
        return OutgoingEmail(data, message_id, smtputf8)

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
            outgoing = self.build(target, message)
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
                    # Retry, so the deliveries go out once an operator fixes it; a greeting
                    # or EHLO that refuses our rate ("421 too many connections") pauses.
                    reason = f"SMTP connection failed: {exc}"
                    if isinstance(exc, aiosmtplib.SMTPResponseException) and rate_refusal(
                        exc.code, exc.message
                    ):
                        raise _throttled(reason) from exc
                    raise DeliveryError(reason, retryable=True) from exc
            if outgoing.smtputf8 and not client.supports_extension("smtputf8"):
                try:
                    recipient, outgoing = self._without_smtputf8(recipient, target, message)
                except DeliveryError:
                    await self._checkin(client)  # nothing was sent: the session is clean
                    raise
            try:
                await self._transact(client, recipient, outgoing)
            except aiosmtplib.SMTPRecipientRefused as exc:
                await _discard(client)
                raise _refused([exc]) from exc
            except aiosmtplib.SMTPSenderRefused as exc:
                await _discard(client)
                raise _sender_refused(exc.code, exc.message) from exc
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
        return Receipt(provider_message_id=outgoing.message_id)

    def _without_smtputf8(
        self, recipient: str, target: Target, message: Message
    ) -> tuple[str, OutgoingEmail]:
        """The recipient and message for a relay that does not offer SMTPUTF8: the domain
        as its IDNA A-label (RFC 5891), which any relay takes, in the envelope and in To.

        A local part that is not ASCII has no such form: that delivery fails for good (the
        next channel is tried) and the address is kept, as is a domain IDNA refuses. The
        relay is at fault, not the customer, and the address works through one that offers
        SMTPUTF8."""
        local, _, domain = recipient.rpartition("@")
        if not local.isascii():
            raise DeliveryError(
                f"cannot send to {recipient!r}: its local part is not ASCII, which needs "
                "SMTPUTF8 (RFC 6531), and the relay does not offer it (the address is kept)",
                retryable=False,
            )
        try:
            ascii_domain = _a_label(domain)
        except ValueError as exc:
            raise DeliveryError(
                f"cannot send to {recipient!r}: the relay does not offer SMTPUTF8 (RFC 6531) "
                f"and the domain has no IDNA A-label: {exc} (the address is kept)",
                retryable=False,
            ) from exc
        ascii_recipient = f"{local}@{ascii_domain}"
        try:
            return ascii_recipient, self._compose(ascii_recipient, target, message)
        except (ValueError, MessageError) as exc:
            raise DeliveryError(f"cannot build the email: {exc}", retryable=False) from exc

    async def _transact(
        self, client: aiosmtplib.SMTP, recipient: str, outgoing: OutgoingEmail
    ) -> None:
        """One mail transaction (RFC 5321 3.3): MAIL, RCPT, DATA; the three in one write
        where the relay offers PIPELINING (:mod:`channels.smtp_pipelining`).

        The envelope names the target only: headers (Cc, Bcc passed through
        Message.headers) must not add recipients. aiosmtplib's ``sendmail`` would parse
        each address twice with the standard library's lenient parser and scan the
        whole message an extra time for SIZE, 40-70 µs a message; the addresses are
        checked once instead (the sender when the channel is built, the recipient by
        :func:`_recipient` and here, with aiosmtplib's own check where it is not a plain
        dot-atom address), before anything is sent, so that a bad one leaves no
        half-open transaction on a pooled connection (a ValueError, as from
        ``sendmail``). The message is already in canonical form (CRLF line endings), so
        its length is its SIZE (RFC 1870).
        """
        # _recipient has refused control characters, which no SMTP command may carry.
        if _SIMPLE_ADDRESS.fullmatch(recipient):
            quoted = f"<{recipient}>"
        else:
            quoted = quote_address(recipient)
        rcpt_to = b"TO:" + quoted.encode("utf-8" if outgoing.smtputf8 else "ascii")
        options: list[bytes] = []
        if client.supports_extension("size"):
            options.append(b"SIZE=%d" % len(outgoing.data))
        if outgoing.smtputf8:
            if not client.supports_extension("smtputf8"):  # send() has seen to it
                raise aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported by this server")
            options.append(b"SMTPUTF8")
        if self._settings.pipelining and client.supports_extension("pipelining"):
            await pipelined_transaction(
                client,
                b" ".join((self._mail_from, *options)),
                rcpt_to,
                outgoing.data,
                sender=self._sender_addr,
                recipient=recipient,
                timeout=client.timeout,
            )
            return
        reply = await client.execute_command(b"MAIL", self._mail_from, *options)
        if reply.code != aiosmtplib.SMTPStatus.completed:
            raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, self._sender_addr)
        reply = await client.execute_command(b"RCPT", rcpt_to)
        if reply.code not in (
            aiosmtplib.SMTPStatus.completed,
            aiosmtplib.SMTPStatus.will_forward,
        ):
            raise aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)
        # sendmail's data step: the bytes are ready, nothing to re-flatten.
        await client.data(outgoing.data)

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
        _abort_transport(transport)
        await _socket_closed(sock, _CLOSE_GRACE)
    client.close()


async def _greet(client: aiosmtplib.SMTP) -> None:
    """EHLO, or HELO where the relay refuses EHLO, unless this session already did
    (STARTTLS and AUTH do, and STARTTLS forgets the extensions it was told before):
    the extensions (SIZE, SMTPUTF8) must be known before the first MAIL."""
    if client.is_ehlo_or_helo_needed:
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError:
            if not client.is_connected:
                raise
            await client.helo()


def _abort(client: aiosmtplib.SMTP) -> None:
    """Drop a connection at once (no await: for cancellation and failed setup)."""
    _abort_transport(client.transport)
    client.close()


def _abort_transport(transport: object) -> None:
    """``transport.abort()`` where it has one. Not ``isinstance(…, asyncio.Transport)``:
    uvloop's transports do not derive from it, and with that check every connection
    dropped after a refused recipient waited out the whole close grace (2 s) under uvloop."""
    abort = getattr(transport, "abort", None)
    if callable(abort):
        abort()


async def _socket_closed(sock: Any, grace: float) -> bool:
    """Poll until the socket is closed (fileno -1) or ``grace`` seconds have passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while sock.fileno() != -1:
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.005)
    return True


@dataclass(frozen=True, slots=True)
class OutgoingEmail:
    """One message ready for the wire: RFC 5322 bytes with CRLF line endings, 7-bit clean
    unless ``smtputf8`` (an address that is not ASCII, sent with the SMTPUTF8 extension)."""

    data: bytes
    message_id: str
    smtputf8: bool = False

    def parse(self) -> EmailMessage:
        """The message as a receiver's standard library reads it (wire CRLFs as local
        line endings, as a mail store keeps them)."""
        data = self.data.replace(b"\r\n", b"\n")
        if self.smtputf8:  # UTF-8 headers: read as text, as an SMTPUTF8 receiver does
            return message_from_string(data.decode("utf-8"), policy=email.policy.default)
        return message_from_bytes(data, policy=email.policy.default)


_SHOULD = 78
"""RFC 5322 2.1.1: lines SHOULD be at most 78 characters (folded where a space allows)..."""
_MUST = 998
"""...and MUST be at most 998."""
_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~"
_FIELD_NAME = re.compile(r"[!-9;-~]+")
"""RFC 5322 ftext: printable ASCII but the colon."""
_ATOMS = re.compile(rf"[{_ATEXT}]+(?: [{_ATEXT}]+)*")
"""A display name that needs no quoting: atoms separated by single spaces."""
_DOT_ATOM = rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*"
_UTF8_DOT_ATOM = re.compile(rf"[{_ATEXT}\x80-\U0010ffff]+(?:\.[{_ATEXT}\x80-\U0010ffff]+)*")
"""RFC 6531's local part: dot-atom text that may hold any non-ASCII character too."""
_SIMPLE_ADDRESS = re.compile(rf"{_DOT_ATOM}@{_DOT_ATOM}")
_DOMAIN = re.compile(rf"{_DOT_ATOM}|\[[!-Z^-~]*\]")
_ID_UNSAFE = re.compile(rf"[^{_ATEXT}.]")
_ID_TEXT_LIMIT = 64
"""Characters of a key shown in a Message-ID: the line stays far within 998."""
_CONTROL = re.compile("[\x00-\x1f\x7f]")
"""What no address may carry: no SMTP command line can hold it."""
_LINE_BREAK = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
"""The line boundaries of str.splitlines."""
_DROPPED = frozenset({"bcc", "resent-bcc", "mime-version"})
_MIME_VERSION = b"MIME-Version: 1.0\r\n"
_ADDRESS_MAX = 254
"""RFC 5321 4.5.3.1.3: a path is at most 256 octets with its angle brackets."""
_ENCODED_WORD_BYTES = 45
"""UTF-8 bytes per RFC 2047 encoded word: 60 base64 characters, 72 with the markers."""


def _check_value(value: str) -> None:
    # Every line boundary str.splitlines knows (CR, LF, VT, FF, NEL, U+2028...), as the
    # standard library's header policy refuses them: nothing may start a new header.
    if _LINE_BREAK.search(value):
        raise ValueError("Header values may not contain linefeed or carriage return characters")


def _fold(line: str) -> str | None:
    """A header line folded before spaces so that lines keep to 78 characters where a
    space allows it; None if a line would still pass 998. Unfolding (removing each CRLF)
    gives ``line`` back.

    A word too long for any 78-character line stays where it is if the line can take it
    (a long URL in List-Unsubscribe goes on the header's own line, as RFC 2369 shows it).
    """
    if len(line) <= _SHOULD:
        return line
    words = line.split(" ")
    lines: list[str] = []
    current = words[0]
    for word in words[1:]:
        length = len(current) + 1 + len(word)
        # An empty word is one of a run of spaces: never folded, so no blank lines.
        if not word or length <= _SHOULD or (len(word) >= _SHOULD and length <= _MUST):
            current += " " + word
        else:
            lines.append(current)
            current = " " + word
    lines.append(current)
    if any(len(folded) > _MUST for folded in lines):
        return None
    return "\r\n".join(lines)


@functools.lru_cache(maxsize=1024)
def _stdlib_header(name: str, value: str) -> str:
    """``name: value`` rendered by the standard library's SMTP policy (RFC 2047 for
    non-ASCII text, structured headers refolded), ending in CRLF. Slow; cached."""
    _check_value(value)
    policy = email.policy.SMTP
    return str(policy.fold(*policy.header_store_parse(name, value)))


@functools.lru_cache(maxsize=4096)
def _header(name: str, value: str) -> str:
    """One header line (folded, ending in CRLF); ValueError for a name that is not a
    field name or a value with a line break. Cached: most of a round's headers (Subject,
    the round, kind and severity, the link) are the same in every message."""
    if not _FIELD_NAME.fullmatch(name):
        raise ValueError(f"not a header field name: {name!r}")
    _check_value(value)
    if value.isascii() and value.isprintable():
        folded = _fold(f"{name}: {value}")
        if folded is not None:
            return folded + "\r\n"
    return _stdlib_header(name, value)


@functools.lru_cache(maxsize=64)
def _date_header(timestamp: int) -> str:
    """The Date header for a POSIX time, in UTC (+0000); cached: a round's messages are
    composed within a few seconds of each other."""
    return f"Date: {format_datetime(datetime.fromtimestamp(timestamp, UTC))}\r\n"


@functools.lru_cache(maxsize=256)
def _max_count(name: str) -> int | None:
    """How many ``name`` headers a message may carry: the standard library's registry, and
    RFC 5322 3.6's one In-Reply-To and one References, which the registry does not count."""
    if name in ("in-reply-to", "references"):
        return 1
    return email.policy.default.header_max_count(name)


def _encoded_words(text: str) -> list[str]:
    """``text`` as RFC 2047 'B' encoded words, each of whole characters and at most 75
    characters long."""
    data = text.encode("utf-8")
    if len(data) <= _ENCODED_WORD_BYTES:
        chunks = [data]
    else:
        chunks, chunk = [], b""
        for char in text:
            encoded = char.encode("utf-8")
            if len(chunk) + len(encoded) > _ENCODED_WORD_BYTES:
                chunks.append(chunk)
                chunk = b""
            chunk += encoded
        chunks.append(chunk)
    return [f"=?utf-8?b?{base64.b64encode(chunk).decode('ascii')}?=" for chunk in chunks]


def _to_header(name: str, address: str) -> str:
    """The To header: the customer's name (atoms, a quoted string, or RFC 2047 encoded
    words if it is not printable ASCII) and the address."""
    if not name:
        line: str | None = f"To: {address}"
    else:
        line = None
        if name.isascii() and name.isprintable() and "=?" not in name:
            if _ATOMS.fullmatch(name):
                phrase = name
            else:
                phrase = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
            line = _fold(f"To: {phrase} <{address}>")
        if line is None:  # not printable ASCII, or a word too long for one line
            line = _fold(f"To: {' '.join(_encoded_words(name))} <{address}>")
    if line is None:
        raise ValueError("the To header does not fit in 998 characters")
    return line + "\r\n"


def _id_text(key: str) -> str:
    """A key as Message-ID text: '/' and anything outside dot-atom text become '.', so a
    key can neither break the header nor the msg-id syntax; cut to
    :data:`_ID_TEXT_LIMIT` characters (the digest beside it covers the whole key)."""
    return _ID_UNSAFE.sub(".", key.replace("/", "."))[:_ID_TEXT_LIMIT]


def _digest(*parts: str) -> str:
    """A digest of ``parts`` for a Message-ID: 100 bits of SHA-256 in lower-case base32."""
    data = "\x00".join(parts).encode("utf-8", "surrogatepass")
    return base64.b32encode(hashlib.sha256(data).digest()).decode("ascii")[:20].lower()


def _instant(when: datetime | None) -> str:
    """``when`` as text for a digest: the same instant gives the same text in any zone (a
    naive time is taken as UTC, as the store keeps times)."""
    if when is None:
        return ""
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return when.isoformat()


def _text_part(subtype: str, text: str) -> bytes:
    """A text/<subtype> UTF-8 body part: its headers, a blank line, the body ending in CRLF.

    Line endings are normalised and a final one added, as the standard library's
    ``set_content`` does. ASCII with lines of at most 78 octets goes as 7bit; anything
    else as quoted-printable or base64, whichever is shorter (as the standard library
    chooses), so the message is 7-bit clean and every line within 76 octets.
    """
    data = text.encode("utf-8")
    lines = data.splitlines()
    if data.isascii() and max(map(len, lines), default=0) <= _SHOULD:
        encoding, body = b"7bit", b"\r\n".join(lines) + b"\r\n"
    else:
        normal = b"\n".join(lines) + b"\n"
        quoted = binascii.b2a_qp(normal, istext=True)
        base64_length = (len(normal) + 2) // 3 * 4
        base64_length += (base64_length + 75) // 76  # a newline per 76 characters
        if len(quoted) <= base64_length:
            encoding, body = b"quoted-printable", quoted.replace(b"\n", b"\r\n")
        else:
            encoding, body = b"base64", base64.encodebytes(normal).replace(b"\n", b"\r\n")
    return b'Content-Type: text/%s; charset="utf-8"\r\nContent-Transfer-Encoding: %s\r\n\r\n%s' % (
        subtype.encode("ascii"),
        encoding,
        body,
    )


def _boundary(*parts: bytes) -> bytes:
    """A multipart boundary found in none of ``parts``. The '=_' cannot occur in quoted-
    printable or base64, so only a 7bit body could ever collide; checked all the same."""
    while True:
        boundary = b"=_" + os.urandom(12).hex().encode("ascii")
        if not any(b"--" + boundary in part for part in parts):
            return boundary


def _recipient(target: Target) -> str:
    """The target's address as an addr-spec; raises on anything that is not one.

    A local part that is not ASCII (RFC 6531, ``jörg@example.com``, as the customer import
    accepts) is a dot-atom of printable characters, split from the domain at the last
    ``@``: the standard library's parser refuses it (NonASCIILocalPartDefect)."""
    if len(target.address) > _ADDRESS_MAX:
        raise ValueError(f"an email address has at most {_ADDRESS_MAX} characters")
    if _SIMPLE_ADDRESS.fullmatch(target.address):
        return target.address  # dot-atom@dot-atom: what the parser below would return
    if _CONTROL.search(target.address):  # the parser lets a tab in a quoted local part by
        raise ValueError("an email address cannot hold a control character")
    local, _, domain = target.address.rpartition("@")
    if not local.isascii():
        # isprintable: no line separator, format character or lone surrogate either.
        if not _UTF8_DOT_ATOM.fullmatch(local) or not target.address.isprintable():
            raise ValueError("a local part that is not ASCII must be printable dot-atom text")
        return f"{local}@{_address_domain(domain)}"
    address = Address(addr_spec=target.address)
    if not address.username or not address.domain:
        raise ValueError("an email address needs a local part and a domain")
    return address.addr_spec


def _address_domain(domain: str) -> str:
    """``domain`` as the standard library's parser reads an address's domain (the same
    rules as for an address with an ASCII local part); raises if it is not one."""
    parsed = Address(addr_spec=f"x@{domain}").domain if domain else ""
    if not parsed:
        raise ValueError("an email address needs a local part and a domain")
    return parsed


def _a_label(domain: str) -> str:
    """``domain`` in ASCII: each label that is not ASCII as its IDNA 2008 A-label (RFC
    5891, ``bücher.example`` → ``xn--bcher-kva.example``), after the UTS 46 mapping that
    email_validator (the customer import) normalises with; ValueError if it has none."""
    try:
        ascii_domain = idna.encode(domain, uts46=True, transitional=False).decode("ascii")
    except UnicodeError as exc:  # idna.IDNAError
        raise ValueError(str(exc) or type(exc).__name__) from None
    if not _DOMAIN.fullmatch(ascii_domain):
        raise ValueError(f"{ascii_domain!r} is not a domain")
    return ascii_domain


def _from_reply(code: int, text: str) -> DeliveryError:
    """A refusal by its code; what is not an SMTP reply at all (aiosmtplib's code -1: a
    malformed or over-long reply) is the relay's fault, as a dropped connection is, and
    is retried."""
    if code < 200:
        return DeliveryError(f"SMTP connection failed: {text}", retryable=True)
    reason = f"SMTP {code}: {text}"
    if rate_refusal(code, text):
        return _throttled(reason)
    if 400 <= code < 500 or code in _AUTH_CODES:
        return DeliveryError(reason, retryable=True)
    return DeliveryError(reason, retryable=False)


_RATE_WORDS = re.compile(
    r"throttl"  # Amazon SES: "454 Throttling failure: Maximum sending rate exceeded."
    r"|\brate[ -]?limit"  # "451 4.7.1 Rate limit exceeded", "ratelimited"
    r"|(sending|message|submission|send|sender) rate"  # Exim: "Sender rate overlimit"
    r"|\brate (of|exceeded)\b"  # Gmail: "421 4.7.28 ... an unusual rate of unsolicited mail"
    # Postfix's anvil: "too much mail from", "too many connections from", "too many
    # recipients from" (the client's recipient rate), "too many new TLS sessions from".
    r"|too (many|much) (new )?(tls )?(mail|messages|e-?mails|connections|requests|sessions)\b"
    r"|too many recipients from"
    r"|(concurrent|simultaneous)( \w+)? connections"  # Microsoft 365: "421 4.3.2 The maximum
    # number of concurrent server connections has exceeded a limit"
    r"|(concurrency|thread|relay) limit"  # "sender thread limit exceeded" (Microsoft 365),
    # "Peak SMTP relay limit exceeded for customer" (Google Workspace's relay)
    r"|unexpected volume",  # Yahoo: "421 4.7.0 [TSS04] ... deferred due to unexpected volume"
    re.I,
)
"""What a relay's reply says when it refuses the *sender's* rate: its messages, connections or
requests per unit of time. Not a count within one message ("too many recipients")."""

_OUR_LIMIT = re.compile(r"relay limit", re.I)
"""Google Workspace's relay says our limit with a mailbox status code ("450 4.2.1 Peak SMTP
relay limit exceeded for customer"): ours all the same."""

_PER_CONNECTION = re.compile(
    r"\b(per|for this|in this|on this|in one|in a single) (connection|session)\b", re.I
)
"""A limit of messages on one connection ("421 4.7.0 Too many messages for this session"):
a new connection is all it takes, which the retry opens; no pause (see the channel's
``messages_per_connection``)."""

_ONE_RECIPIENT = re.compile(
    r"\b(for|to) (this |the |that )?(recipient|user|mailbox|address|rcpt)\b", re.I
)
"""A rate said to be one recipient's ("451 Ratelimit exceeded for mailbox …", "Too many
messages queued for this recipient") without the X.2.x code that would say so: only that
message waits."""


def rate_refusal(code: int, text: str) -> bool:
    """A temporary refusal (4xx) whose text says the relay refuses our rate, not this
    message or recipient: every message would meet it alike for a while, so the channel
    pauses (``throttled``) rather than spend the attempts of every queued message. A
    mailbox's own rate (enhanced code X.2.x, "mailbox status": Gmail's "450 4.2.1 The user
    you are trying to contact is receiving mail at a rate that prevents additional
    messages", or words that say so: "for this recipient") is that one recipient's: only
    its message waits. A bare 421 ("service not
    available") says no more than a busy relay does, and is retried as any 4xx. SMTP
    carries no Retry-After: the pause is the dispatcher's default, doubling while the relay
    refuses again."""
    if not 400 <= code < 500:
        return False
    if _subject(text) == "2" and _OUR_LIMIT.search(text) is None:
        return False
    return (
        _RATE_WORDS.search(text) is not None
        and _PER_CONNECTION.search(text) is None
        and _ONE_RECIPIENT.search(text) is None
    )


def _throttled(reason: str) -> DeliveryError:
    """The relay refused our rate (:func:`rate_refusal`): the whole channel pauses, one relay
    being all it reaches."""
    return DeliveryError(f"{reason} (the relay limits our rate)", retryable=True, throttled=True)


_ENHANCED = re.compile(r"\s*([245])\.(\d{1,3})\.(\d{1,3})(?!\d)")
"""An enhanced status code (RFC 3463) at the start of a reply's text: class.subject.detail."""

_AUTH_CODES = frozenset({530, 534, 535, 538})
"""Authentication required, too weak, failed, or encryption required (RFC 4954): our
settings, for every message alike."""

_RELAY_DENIED = re.compile(r"relay(ing)? (access )?(denied|not permitted|prohibited)", re.I)
"""The relay refuses to relay for us ("Relay access denied", "Relaying denied")."""

_BAD_MAILBOX = frozenset({550, 551, 553})
"""Without an enhanced code: mailbox unavailable, user not local, mailbox name not allowed."""

_NO_SUCH_RECIPIENT = frozenset({"1", "2", "3", "4", "5", "6", "10"})
"""The details of an enhanced X.1.y code that are about the recipient's address (RFC 3463,
RFC 7505): bad mailbox (1), bad system (2), bad syntax (3), ambiguous (4), "valid" (5,
which a refusal can only use for the recipient), moved without a forwarding address (6),
null MX (10). Not X.1.0 (other status: nothing says which address), nor X.1.7 and X.1.8,
which are about the sender's: ours."""

_OUR_SENDER = frozenset({"7", "8"})
"""X.1.7 bad sender's mailbox address syntax, X.1.8 bad sender's system address (RFC 3463):
relays check the sender at RCPT too (Postfix's smtpd_delay_reject, Exchange Online's
"550 5.1.8 Access denied, bad outbound sender")."""

_SENDER_REJECTED = re.compile(r"sender address rejected", re.I)
"""Postfix's wording for a refusal by its sender restrictions, whatever the code."""


def _subject(text: str) -> str | None:
    """The enhanced code's subject (``"1"`` for 5.1.1: addressing), if the reply has one."""
    found = _ENHANCED.match(text)
    return found.group(2) if found else None


def _detail(text: str) -> str | None:
    """The enhanced code's detail (``"1"`` for 5.1.1), if the reply has one; without
    leading zeros."""
    found = _ENHANCED.match(text)
    return str(int(found.group(3))) if found else None


def _our_sender(text: str) -> bool:
    """A refusal at RCPT of our sender address (X.1.7, X.1.8, "Sender address rejected"),
    not of the recipient's: every message meets it alike until an operator fixes the
    ``from`` address or its domain's DNS."""
    if _SENDER_REJECTED.search(text) is not None:
        return True
    return _subject(text) == "1" and _detail(text) in _OUR_SENDER


def _ours_to_fix(code: int, text: str) -> bool:
    """A refusal of the relay's policy towards us rather than of this address or message:
    authentication, relaying denied, our address or IP on a blocklist (5.7.x, RFC 3463
    "security or policy status"). Every message meets it alike until an operator acts, so
    it is retried (up to ``delivery.max_attempts``) and condemns no customer's address."""
    return code in _AUTH_CODES or _subject(text) == "7" or _RELAY_DENIED.search(text) is not None


def _sender_refused(code: int, text: str) -> DeliveryError:
    """MAIL FROM refused: our sender address or the relay's settings are at fault, not the
    customer's (retried), unless the message itself is too large (552, 5.3.4)."""
    reason = f"SMTP {code} for the sender: {text}"
    if rate_refusal(code, text):
        return _throttled(reason)
    found = _ENHANCED.match(text)
    too_large = code == 552 or (found is not None and found.group(2, 3) == ("3", "4"))
    return DeliveryError(reason, retryable=not too_large)


def _refused(recipients: list[aiosmtplib.SMTPRecipientRefused]) -> DeliveryError:
    """RCPT TO refused: a temporary refusal is retried; a refusal of our sender address
    (:func:`_our_sender`) is retried and leaves the address; a permanent one that says the
    mailbox does not exist (5.1.1 to 5.1.6, 5.1.10, or 550/551/553 without an enhanced
    code) fails the message and disables the address; the relay's policy towards us is
    retried (:func:`_ours_to_fix`); anything else fails the message and leaves the address."""
    first = recipients[0] if recipients else None
    if first is None:
        return DeliveryError("recipient refused", retryable=False)
    reason = f"SMTP {first.code} for {first.recipient}: {first.message}"
    if rate_refusal(first.code, first.message):
        return _throttled(reason)
    if 400 <= first.code < 500:
        return DeliveryError(reason, retryable=True)
    if _our_sender(first.message):
        reason += " (our sender address was refused: check 'from' and its domain)"
        return DeliveryError(reason, retryable=True)
    subject = _subject(first.message)
    if subject == "1" and _detail(first.message) in _NO_SUCH_RECIPIENT:
        # No such mailbox or domain, whatever else the text says.
        return DeliveryError(reason, retryable=False, contact_point=ContactPointState.DISABLED)
    if _ours_to_fix(first.code, first.message):
        return DeliveryError(reason, retryable=True)
    if subject is None and first.code in _BAD_MAILBOX:
        return DeliveryError(reason, retryable=False, contact_point=ContactPointState.DISABLED)
    return DeliveryError(reason, retryable=False)
