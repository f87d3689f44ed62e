"""SMTP command pipelining (RFC 2920) on a connection that aiosmtplib opened.

Without it each message costs four round trips to the relay: MAIL, RCPT, DATA and the
message, each sent only once the reply to the one before has come. A relay that offers
PIPELINING (Postfix, Exim, the large sending services) takes MAIL, RCPT and DATA in one
go and answers them in order, so a message costs two: the envelope with DATA, then the
message. To a relay 50 ms away that doubles what one connection sends a second (1.98×
measured by ``python -m bench.smtp_rtt``); on a loop busy with other work, each message
also waits for its turn on the loop half as often.

aiosmtplib cannot read more than one reply per command it wrote: its protocol parses one
reply at a time and drops what arrives while that one is unread. So for the length of a
pipelined transaction the connection's data goes to :class:`Replies` instead
(``transport.set_protocol``), which queues every reply it parses; the end of the
connection and flow control still reach aiosmtplib's protocol, and it gets the data back
when the transaction ends. Connecting, STARTTLS, EHLO, AUTH and QUIT stay aiosmtplib's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any, cast

import aiosmtplib
from aiosmtplib.protocol import (
    COMMAND_INJECTION_REGEX,
    MAX_LINE_LENGTH,
    MAX_RESPONSE_LENGTH,
    PERIOD_REGEX,
    normalize_message_line_endings,
)

__all__ = ["Replies", "pipelined_transaction"]


class Replies(asyncio.Protocol):
    """Takes a connection's data in place of aiosmtplib's protocol (``inner``) and keeps
    every complete reply, in order, until it is read with :meth:`next`.

    As aiosmtplib's: a line over ``MAX_LINE_LENGTH`` or a reply over
    ``MAX_RESPONSE_LENGTH`` bytes (its continuation lines counted whole, empty ones too)
    fails the connection's reading, as does a line that does not start with a code."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._buffer = bytearray()
        self._lines: list[bytes] = []
        self._reply_bytes = 0
        """Bytes of the reply being read so far (its lines as received)."""
        self._replies: collections.deque[aiosmtplib.SMTPResponse] = collections.deque()
        self._error: aiosmtplib.SMTPException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._expired = False

    # -- asyncio.Protocol --------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._error is not None:
            return
        self._buffer.extend(data)
        start = 0
        complete = len(self._replies)
        while (end := self._buffer.find(b"\n", start)) != -1:
            line = bytes(self._buffer[start : end + 1])
            start = end + 1
            self._reply_bytes += len(line)
            if len(line) > MAX_LINE_LENGTH or self._reply_bytes > MAX_RESPONSE_LENGTH:
                self._fail(aiosmtplib.SMTPResponseException(-1, "Response too long"))
                return
            try:
                code = int(line[:3])
            except ValueError:
                text = line.decode("utf-8", "replace").strip()
                self._fail(
                    aiosmtplib.SMTPResponseException(-1, f"Malformed SMTP response line: {text}")
                )
                return
            self._lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":  # the last line of a reply
                text = b"\n".join(self._lines).decode("utf-8", "surrogateescape")
                self._lines = []
                self._reply_bytes = 0
                self._replies.append(aiosmtplib.SMTPResponse(code, text))
        del self._buffer[:start]
        if len(self._buffer) > MAX_LINE_LENGTH:  # a line still without its end
            self._fail(aiosmtplib.SMTPResponseException(-1, "Response too long"))
            return
        if len(self._replies) > complete:  # a part of a reply wakes no one
            self._wake()

    def eof_received(self) -> bool | None:
        self._fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        result: bool | None = self._inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(aiosmtplib.SMTPServerDisconnected("Connection lost"))
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- reading -----------------------------------------------------------------------

    async def next(self, timeout: float | None) -> aiosmtplib.SMTPResponse:  # noqa: ASYNC109
        """The next reply; SMTPReadTimeoutError when it is not complete within ``timeout``
        seconds (one deadline for the whole reply, however it trickles in, as
        aiosmtplib's), SMTPServerDisconnected when the connection ends first,
        SMTPResponseException for what is not an SMTP reply.

        A reply already here is returned at once (the group's later replies mostly come
        with the first); the deadline is one timer handle, not ``asyncio.timeout``,
        which cost 40 µs of CPU a message over a transaction's four replies."""
        if self._replies:
            return self._replies.popleft()
        loop = asyncio.get_running_loop()
        self._expired = False
        timer = None if timeout is None else loop.call_later(timeout, self._expire)
        try:
            while not self._replies:
                if self._error is not None:
                    raise self._error
                if self._expired:
                    raise aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response")
                self._waiter = loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        finally:
            if timer is not None:
                timer.cancel()
        return self._replies.popleft()

    def _expire(self) -> None:
        self._expired = True
        self._wake()

    def _fail(self, error: aiosmtplib.SMTPException) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _data_lines(data: bytes) -> bytes:
    """``data`` as DATA sends it, as aiosmtplib's: line endings made CRLF, a last one
    added, lines starting with a dot doubled (RFC 5321 4.5.2). The channel's messages are
    already CRLF, ending in one, with no line starting with a dot, which a few scans in C
    tell; the regular expressions, which copy the message, then cost 19 µs a message for
    nothing."""
    crlf = data.count(b"\r\n")
    if data.count(b"\r") != crlf or data.count(b"\n") != crlf or not data.endswith(b"\r\n"):
        data = normalize_message_line_endings(data)
    if data.startswith(b".") or b"\n." in data:
        data = PERIOD_REGEX.sub(b"..", data)
    return data


def _write(transport: asyncio.Transport, data: bytes) -> None:
    """As aiosmtplib writes: SMTPServerDisconnected on a connection already closing
    (uvloop's transports would raise RuntimeError, asyncio's only log)."""
    if transport.is_closing():
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    transport.write(data)


async def pipelined_transaction(
    client: aiosmtplib.SMTP,
    mail: bytes,
    rcpt: bytes,
    data: bytes,
    *,
    sender: str,
    recipient: str,
    timeout: float | None,  # noqa: ASYNC109 - per reply, as aiosmtplib's
) -> aiosmtplib.SMTPResponse:
    """One mail transaction on ``client`` (connected, greeted, offering PIPELINING): the
    ``MAIL`` and ``RCPT`` arguments (``mail`` and ``rcpt``, with their parameters) and
    ``DATA`` in one write, then ``data`` (the message, with CRLF line endings) once DATA
    is accepted. Returns the relay's reply to the message.

    Raises what aiosmtplib's own calls would: SMTPSenderRefused, SMTPRecipientRefused or
    SMTPDataError for a refusal, SMTPServerDisconnected, SMTPReadTimeoutError or
    SMTPResponseException when the connection fails. ValueError, with nothing sent, for
    an argument holding a control character (aiosmtplib's check). Every reply of the
    group is read (RFC 2920 3.1), and the first refusal is the error, also when the
    connection fails before the later replies come (a relay that refuses and hangs up):
    replies come in order, so nothing after can undo it, and one command at a time the
    client would have stopped there. Where DATA was accepted although MAIL or RCPT was
    refused, the data is ended at once with a lone dot (RFC 2920 3.1).
    """
    for argument in (mail, rcpt):
        if COMMAND_INJECTION_REGEX.search(argument):
            raise ValueError("Command arg contains a prohibited control character")
    protocol = client.protocol
    # Typed as asyncio's; uvloop's transports have the same methods without the class.
    transport = cast(asyncio.Transport | None, client.transport)
    if protocol is None or transport is None or not client.is_connected:
        raise aiosmtplib.SMTPServerDisconnected("Server not connected")
    message = _data_lines(data)
    replies = Replies(protocol)
    transport.set_protocol(replies)
    try:
        _write(transport, b"MAIL " + mail + b"\r\nRCPT " + rcpt + b"\r\nDATA\r\n")
        refusal: aiosmtplib.SMTPResponseException | None = None
        to_data: aiosmtplib.SMTPResponse | None = None
        try:
            to_mail = await replies.next(timeout)
            if to_mail.code != aiosmtplib.SMTPStatus.completed:
                refusal = aiosmtplib.SMTPSenderRefused(to_mail.code, to_mail.message, sender)
            to_rcpt = await replies.next(timeout)
            if refusal is None and to_rcpt.code not in (
                aiosmtplib.SMTPStatus.completed,
                aiosmtplib.SMTPStatus.will_forward,
            ):
                refusal = aiosmtplib.SMTPRecipientRefused(to_rcpt.code, to_rcpt.message, recipient)
            to_data = await replies.next(timeout)
        except aiosmtplib.SMTPException as failed:
            if refusal is None:
                raise
            raise refusal from failed
        accepted = to_data.code == aiosmtplib.SMTPStatus.start_input
        if refusal is None and not accepted:
            refusal = aiosmtplib.SMTPDataError(to_data.code, to_data.message)
        if refusal is not None:
            if accepted:
                # DATA accepted with no transaction to send: ended at once. Its reply
                # (or its absence) changes nothing: the refusal is what happened.
                with contextlib.suppress(aiosmtplib.SMTPException):
                    _write(transport, b".\r\n")
                    await replies.next(timeout)
            raise refusal
        _write(transport, message + b".\r\n")
        reply = await replies.next(timeout)
        if reply.code != aiosmtplib.SMTPStatus.completed:
            raise aiosmtplib.SMTPDataError(reply.code, reply.message)
        return reply
    finally:
        if not transport.is_closing():
            transport.set_protocol(protocol)
