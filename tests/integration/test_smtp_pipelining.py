"""SMTP command pipelining (RFC 2920) in the email channel, against a scripted relay.

The relay below reads MAIL's following lines before it answers MAIL, and records which
commands came together: a client that waited for each reply would show one command per
group. It answers as scripted, refusals included, and writes its replies all at once or
a byte at a time, so the client's reading of several replies from one read (and of one
reply over many) is exercised. The channel against aiosmtpd, with and without
PIPELINING offered, is in test_email_channel.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import pytest
import trustme
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from broadcaster import eventloop
from broadcaster.devsmtp import SmtpSink
from broadcaster.eventloop import EventLoopChoice
from channels.base import ContactPointState, DeliveryError, Message, Target
from channels.email import EmailChannel, EmailSettings
from channels.smtp_pipelining import _data_lines

WAIT = 10.0
GROUP_WAIT = 0.5
"""How long the relay waits for RCPT and DATA after MAIL before it answers MAIL alone."""


@dataclass
class Relay:
    """A scripted SMTP relay on the test's own loop."""

    pipelining: bool = True
    mail_reply: bytes = b"250 2.1.0 Ok"
    rcpt_reply: bytes = b"250 2.1.5 Ok"
    data_reply: bytes | None = None
    """None: 354 when RCPT was accepted, else 554 (as a conforming relay answers)."""
    final_reply: bytes = b"250-2.0.0 Ok\r\n250 2.0.0 queued as 4F2A"
    split: bool = False
    """Write replies a byte at a time instead of all of a group's at once."""
    trickle: float = 0.0
    """Seconds between the bytes of a transaction's replies (a relay that stalls its
    client; the greeting and EHLO come at once)."""
    hang_up_after: int | None = None
    """Write only this many of a group's replies, then close the connection."""
    silent: bool = False
    """Read the commands and never answer them."""
    close_after_group: bool = False
    groups: list[list[str]] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), WAIT)

    async def _write(
        self, writer: asyncio.StreamWriter, replies: list[bytes], *, setup: bool = False
    ) -> None:
        data = b"".join(reply + b"\r\n" for reply in replies)
        if self.trickle and not setup:
            for i in range(len(data)):
                writer.write(data[i : i + 1])
                await writer.drain()
                await asyncio.sleep(self.trickle)
        elif self.split:
            for i in range(len(data)):
                writer.write(data[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0)
        else:
            writer.write(data)
            await writer.drain()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._write(writer, [b"220 relay.example ESMTP"], setup=True)
            accepted: list[bool] = [False]  # whether this transaction has a recipient
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    offered = [b"250-relay.example", b"250-SIZE 10240000"]
                    if self.pipelining:
                        offered.append(b"250-PIPELINING")
                    await self._write(writer, [*offered, b"250 8BITMIME"], setup=True)
                elif verb == b"QUIT":
                    await self._write(writer, [b"221 2.0.0 Bye"])
                    break
                elif verb in (b"RSET", b"NOOP"):
                    await self._write(writer, [b"250 2.0.0 Ok"])
                elif verb in (b"MAIL", b"RCPT", b"DATA"):
                    if not await self._transaction(line, reader, writer, accepted):
                        break
                else:
                    await self._write(writer, [b"502 5.5.2 Error: command not recognized"])
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _transaction(
        self,
        first: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        accepted: list[bool],
    ) -> bool:
        """MAIL, with the RCPT and DATA that came with it, or a lone command from a
        client that does not pipeline; False when the session should end."""
        group = [first]
        while first.upper().startswith(b"MAIL") and len(group) < 3:
            try:
                group.append(await asyncio.wait_for(reader.readline(), GROUP_WAIT))
            except TimeoutError:
                break
        self.groups.append([line[:4].decode().upper() for line in group])
        if self.silent:
            await reader.read()  # until the client gives up and closes
            return False
        if self.close_after_group:
            return False
        replies = []
        for line in group:
            verb = line[:4].upper()
            if verb == b"MAIL":
                accepted[0] = False
                replies.append(self.mail_reply)
            elif verb == b"RCPT":
                replies.append(self.rcpt_reply)
                accepted[0] = self.rcpt_reply.startswith(b"25")
            else:
                default = b"354 End data with <CR><LF>.<CR><LF>" if accepted[0] else None
                reply = self.data_reply or default or b"554 5.5.1 Error: no valid recipients"
                replies.append(reply)
            if self.hang_up_after is not None and len(replies) >= self.hang_up_after:
                await self._write(writer, replies)
                return False
            if replies[-1].startswith(b"354"):
                await self._write(writer, replies)
                lines = [await reader.readline()]
                while lines[-1] not in (b".\r\n", b""):
                    lines.append(await reader.readline())
                if lines[-1] == b"":  # the client went away before ending its data
                    return False
                self.messages.append(b"".join(lines))
                await self._write(writer, [self.final_reply])
                return True
        await self._write(writer, replies)
        return True


def target(n: int = 1) -> Target:
    return Target(address=f"customer{n}@example.com", name="Ada Lovelace", customer_id=f"c{n}")


def message(text: str = "Trains on line 4 are stopped.\n.Next update by 14:30.") -> Message:
    return Message(
        subject="Line 4: trains stopped",
        text=text,
        html=None,
        idempotency_key="delivery-1",
    )


ChannelFactory = Callable[..., EmailChannel]


@pytest.fixture
async def make_channel() -> AsyncIterator[ChannelFactory]:
    channels: list[EmailChannel] = []

    def make(port: int, **settings: Any) -> EmailChannel:
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": port,
            "security": "none",
            "timeout": WAIT,
            "from": "Operations <ops@example.com>",
            **settings,
        }
        channel = EmailChannel("email", EmailSettings.model_validate(values))
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        await channel.aclose()


@pytest.mark.parametrize("split", [False, True], ids=["replies-together", "byte-by-byte"])
async def test_mail_rcpt_and_data_go_together_and_the_message_arrives_as_built(
    make_channel: ChannelFactory, split: bool
) -> None:
    async with Relay(split=split) as relay:
        channel = make_channel(relay.port)
        outgoing = channel.build(target(), message())

        for n in (1, 2):
            await channel.send(target(n), message())
        # The pooled connection's data goes back to aiosmtplib after each transaction.
        [client] = list(channel._idle._queue)  # type: ignore[attr-defined]
        assert client.transport.get_protocol() is client.protocol
        await channel.aclose()  # QUIT through aiosmtplib, answered

    assert relay.groups == [["MAIL", "RCPT", "DATA"]] * 2
    # As sent: the line starting with a dot doubled on the wire (RFC 5321 4.5.2).
    body = relay.messages[0]
    assert body.endswith(b"\r\n.\r\n")
    assert b"\r\n..Next update" in body
    unstuffed = body[: -len(b".\r\n")].replace(b"\r\n..", b"\r\n.")
    assert unstuffed.split(b"\r\n\r\n", 1)[1] == outgoing.data.split(b"\r\n\r\n", 1)[1]


async def test_one_command_at_a_time_where_pipelining_is_not_offered_or_is_turned_off(
    make_channel: ChannelFactory,
) -> None:
    async with Relay(pipelining=False) as relay:
        await make_channel(relay.port).send(target(), message())
    assert relay.groups == [["MAIL"], ["RCPT"], ["DATA"]]
    assert len(relay.messages) == 1

    async with Relay() as relay:
        await make_channel(relay.port, pipelining=False).send(target(), message())
    assert relay.groups == [["MAIL"], ["RCPT"], ["DATA"]]
    assert len(relay.messages) == 1


async def test_a_refused_recipient_is_read_from_the_group_and_the_pool_recovers(
    make_channel: ChannelFactory,
) -> None:
    async with Relay(rcpt_reply=b"550 5.1.1 <customer1@example.com>: no such user") as relay:
        channel = make_channel(relay.port, pool_size=1)
        with pytest.raises(DeliveryError) as refused:
            await channel.send(target(1), message())
        relay.rcpt_reply = b"250 2.1.5 Ok"
        await channel.send(target(2), message())

    assert not refused.value.retryable
    assert refused.value.contact_point is ContactPointState.DISABLED
    assert "550" in str(refused.value) and "no such user" in str(refused.value)
    assert len(relay.messages) == 1


async def test_data_accepted_after_a_refused_recipient_is_ended_with_a_lone_dot(
    make_channel: ChannelFactory,
) -> None:
    """RFC 2920 3.1: a relay may accept DATA though every recipient was refused; the
    client sends no message then, only the dot that ends the data."""
    async with Relay(
        rcpt_reply=b"550 5.1.1 no such user",
        data_reply=b"354 go ahead",
        final_reply=b"554 5.5.1 no valid recipients",
    ) as relay:
        with pytest.raises(DeliveryError) as refused:
            await make_channel(relay.port).send(target(), message())

    assert relay.messages == [b".\r\n"]
    assert refused.value.contact_point is ContactPointState.DISABLED
    assert "550" in str(refused.value)


async def test_a_refused_sender_is_the_error_though_rcpt_and_data_were_refused_too(
    make_channel: ChannelFactory,
) -> None:
    async with Relay(
        mail_reply=b"451 4.3.0 try again later", rcpt_reply=b"503 5.5.1 need MAIL first"
    ) as relay:
        with pytest.raises(DeliveryError) as refused:
            await make_channel(relay.port).send(target(), message())

    assert refused.value.retryable
    assert "451" in str(refused.value) and "sender" in str(refused.value)
    assert relay.messages == []


@pytest.mark.parametrize(
    ("reply", "retryable"),
    [(b"452 4.3.1 insufficient storage", True), (b"554 5.6.0 content rejected", False)],
)
async def test_the_reply_to_the_message_maps_onto_the_retry_contract(
    make_channel: ChannelFactory, reply: bytes, retryable: bool
) -> None:
    async with Relay(final_reply=reply) as relay:
        with pytest.raises(DeliveryError) as refused:
            await make_channel(relay.port).send(target(), message())
    assert refused.value.retryable is retryable
    assert reply.decode()[:3] in str(refused.value)
    assert refused.value.contact_point is None


async def test_a_relay_that_hangs_up_or_never_answers_fails_the_send_as_retryable(
    make_channel: ChannelFactory,
) -> None:
    async with Relay(close_after_group=True) as relay:
        with pytest.raises(DeliveryError) as dropped:
            await make_channel(relay.port).send(target(), message())
    assert dropped.value.retryable

    async with Relay(silent=True) as relay:
        channel = make_channel(relay.port, timeout=0.5)
        async with asyncio.timeout(WAIT):
            with pytest.raises(DeliveryError) as silent:
                await channel.send(target(), message())
    assert silent.value.retryable
    assert relay.groups == [["MAIL", "RCPT", "DATA"]]


@pytest.mark.parametrize(
    ("script", "retryable", "disabled"),
    [
        ({"rcpt_reply": b"550 5.1.1 no such user", "hang_up_after": 2}, False, True),
        ({"mail_reply": b"552 5.3.4 message too big", "hang_up_after": 1}, False, False),
        ({"rcpt_reply": b"450 4.2.0 mailbox busy", "hang_up_after": 2}, True, False),
    ],
    ids=["recipient-refused", "too-large", "recipient-busy"],
)
async def test_a_refusal_stands_when_the_relay_hangs_up_before_the_rest_of_the_group(
    make_channel: ChannelFactory, script: dict[str, Any], retryable: bool, disabled: bool
) -> None:
    """One command at a time the client stops at the refusal; pipelined it has asked for
    more, and a relay that refuses and hangs up (an ACL that drops the session) must not
    turn a refused mailbox into a retried connection failure."""
    async with Relay(**script) as relay:
        with pytest.raises(DeliveryError) as refused:
            await make_channel(relay.port).send(target(), message())
    assert refused.value.retryable is retryable
    assert (refused.value.contact_point is ContactPointState.DISABLED) is disabled
    assert script.get("rcpt_reply", script.get("mail_reply", b""))[:3].decode() in str(
        refused.value
    )


@pytest.mark.parametrize(
    ("mail_reply", "reason"),
    [
        (b"250-\r\n" * 20_000 + b"250 2.1.0 Ok", "Response too long"),
        (b"250-" + b"x" * 9000 + b"\r\n250 Ok", "Response too long"),
        (b"hello there", "Malformed SMTP response line"),
    ],
    ids=["empty-continuation-lines", "over-long-line", "not-a-reply"],
)
async def test_what_is_not_a_bounded_smtp_reply_fails_the_send_as_retryable(
    make_channel: ChannelFactory, mail_reply: bytes, reason: str
) -> None:
    """The limits are aiosmtplib's: a reply over 32 KiB counts its lines as received
    (empty continuation lines too), a line over 8 KiB fails, as does a line without a
    code."""
    async with Relay(mail_reply=mail_reply) as relay:
        with pytest.raises(DeliveryError) as failed:
            await make_channel(relay.port).send(target(), message())
    assert failed.value.retryable
    assert reason in str(failed.value)
    assert relay.messages == []


async def test_a_reply_trickled_in_is_timed_as_a_whole(make_channel: ChannelFactory) -> None:
    """A relay that sends its replies a byte at a time, slowly, does not hold the send past
    its timeout: the deadline is the reply's, not each byte's."""
    slow = b"250-" + b"x" * 60 + b"\r\n250 2.1.0 Ok"
    async with Relay(mail_reply=slow, trickle=0.05) as relay:
        channel = make_channel(relay.port, timeout=0.5)
        async with asyncio.timeout(WAIT / 2):  # the whole reply would take 3.5 s
            with pytest.raises(DeliveryError) as stalled:
                await channel.send(target(), message())
    assert stalled.value.retryable
    assert "Timed out" in str(stalled.value)


async def test_a_send_cancelled_mid_transaction_drops_its_connection(
    make_channel: ChannelFactory,
) -> None:
    async with Relay(silent=True) as relay:
        channel = make_channel(relay.port, pool_size=1)
        sending = asyncio.create_task(channel.send(target(), message()))
        async with asyncio.timeout(WAIT):
            while not relay.groups:
                await asyncio.sleep(0.01)
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        assert channel._idle.empty()  # not back in the pool
    assert relay.groups == [["MAIL", "RCPT", "DATA"]]
    assert relay.messages == []


def test_the_scripted_relay_on_uvloop(tmp_path: Path) -> None:
    """The default event loop: the group, the message and a refusal read from it."""
    pytest.importorskip("uvloop")

    async def scenario() -> tuple[list[list[str]], list[bytes], DeliveryError]:
        async with Relay() as relay:
            channel = EmailChannel(
                "email",
                EmailSettings.model_validate(
                    {"host": "127.0.0.1", "port": relay.port, "security": "none"}
                ),
            )
            try:
                await channel.send(target(1), message())
                relay.rcpt_reply = b"550 5.1.1 no such user"
                with pytest.raises(DeliveryError) as refused:
                    await channel.send(target(2), message())
            finally:
                await channel.aclose()
        return relay.groups, relay.messages, refused.value

    groups, messages, refusal = eventloop.run(scenario(), "uvloop")
    assert groups == [["MAIL", "RCPT", "DATA"]] * 2
    assert len(messages) == 1
    assert refusal.contact_point is ContactPointState.DISABLED


@pytest.mark.parametrize("security", ["starttls", "tls"])
@pytest.mark.parametrize("loop", get_args(EventLoopChoice))
def test_pipelining_over_tls_on_either_event_loop(
    tmp_path: Path, loop: EventLoopChoice, security: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transaction's replies are read by swapping the connection's protocol, which a
    TLS connection (STARTTLS or implicit) and uvloop's transports must allow. Every send
    goes pipelined (counted), and the connection is back with aiosmtplib after each."""
    from channels.smtp_pipelining import pipelined_transaction as transact

    pipelined: list[bool] = []

    async def counted(client: Any, *args: Any, **kwargs: Any) -> Any:
        reply = await transact(client, *args, **kwargs)
        pipelined.append(client.transport.get_protocol() is client.protocol)
        return reply

    monkeypatch.setattr("channels.email.pipelined_transaction", counted)
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def send_three(port: int) -> None:
        channel = EmailChannel(
            "email",
            EmailSettings.model_validate(
                {
                    "host": "127.0.0.1",
                    "port": port,
                    "ca_file": ca_file,
                    "security": security,
                    "pool_size": 1,
                    "timeout": WAIT,
                    "from": "Operations <ops@example.com>",
                }
            ),
        )
        try:
            for n in (1, 2, 3):
                await channel.send(target(n), message())
        finally:
            await channel.aclose()

    implicit = security == "tls"
    with SmtpSink(
        tls_context=server_tls, require_starttls=not implicit, implicit_tls=implicit
    ) as sink:
        eventloop.run(send_three(sink.port), loop)
        mails = sink.wait_for(3, WAIT)
    assert [mail.recipients for mail in mails] == [(f"customer{n}@example.com",) for n in (1, 2, 3)]
    assert all(mail.tls for mail in mails)
    assert {mail.connection for mail in mails} == {1}
    assert "..Next update" not in mails[0].message.get_content()
    assert pipelined == [True, True, True]


async def test_the_development_sink_sends_each_answer_at_once(
    make_channel: ChannelFactory,
) -> None:
    """aiosmtpd answers pipelined commands one write each; with Nagle's algorithm on its
    sockets the second answer waited for the client's delayed acknowledgement (40 ms a
    message). The sink turns it off, as relays that offer PIPELINING answer a group at
    once."""
    with SmtpSink() as sink:
        channel = make_channel(sink.port, pool_size=1)
        await channel.send(target(), message())
        [session] = list(sink._live)
        assert session.raw_transport is not None
        sock = session.raw_transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        await channel.aclose()


@given(
    st.binary(max_size=200)
    | st.lists(st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n"])).map(b"".join)
)
def test_the_data_as_sent_is_what_aiosmtplib_would_send(data: bytes) -> None:
    """The shortcut for messages already in canonical form gives aiosmtplib's bytes for
    any input: CRLF line endings, leading dots doubled."""
    expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data))
    assert _data_lines(data) == expected
