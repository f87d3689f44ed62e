"""The SMTP email channel against a real local server (aiosmtpd) with real TLS (trustme).

Nothing is mocked, so these pin what a real relay sees (envelope, MIME, TLS, AUTH, how
many connections the pool opens) and how each SMTP failure maps onto the retry contract.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any, get_args

import aiosmtplib
import pytest
import trustme
from aiosmtpd.controller import Controller

from broadcaster import eventloop
from broadcaster.devsmtp import ReceivedMail, SmtpSink
from broadcaster.eventloop import EventLoopChoice
from channels.base import ContactPointState, DeliveryError, Message, Target
from channels.email import EmailChannel, EmailSettings

WAIT = 10.0
"""Deadline for anything the sink should see soon; generous for a loaded CI machine."""

SinkFactory = Callable[..., SmtpSink]
ChannelFactory = Callable[..., EmailChannel]  # (port, **settings)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    """The sink's server context: a certificate for 127.0.0.1 and localhost, signed by ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(params=[True, False], ids=["pipelining", "no-pipelining"])
def make_sink(server_tls: ssl.SSLContext, request: pytest.FixtureRequest) -> Iterator[SinkFactory]:
    """Starts sinks (TLS-capable unless told otherwise) and stops them after the test.
    Each test runs twice: with the sink offering PIPELINING (the channel sends MAIL, RCPT
    and DATA together) and without (one command at a time)."""
    sinks: list[SmtpSink] = []

    def make(**kwargs: Any) -> SmtpSink:
        kwargs.setdefault("tls_context", server_tls)
        kwargs.setdefault("pipelining", request.param)
        sink = SmtpSink(**kwargs).start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.stop()


@pytest.fixture
async def make_channel(ca_file: Path) -> AsyncIterator[ChannelFactory]:
    """Email channels aimed at a port on 127.0.0.1, trusting the test CA; closed after the test.

    ``gc.collect()`` afterwards makes a leaked (never closed) SMTP connection show up as
    an unraisable ResourceWarning in this test, which ``-W error`` turns into a failure.
    """
    channels: list[EmailChannel] = []

    def make(port: int, **settings: Any) -> EmailChannel:
        values: dict[str, Any] = {"host": "127.0.0.1", "port": port, "ca_file": ca_file}
        values.update({"timeout": WAIT, "from": "Operations <ops@example.com>", **settings})
        channel = EmailChannel("email", EmailSettings.model_validate(values))
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        await channel.aclose()
    gc.collect()


def target(n: int = 1, name: str = "Ada Lovelace") -> Target:
    return Target(address=f"customer{n}@example.com", name=name, customer_id=f"c{n}")


def message(key: str = "round-1/c1/email", **kwargs: Any) -> Message:
    values: dict[str, Any] = {
        "subject": "Line 4: trains stopped",
        "text": "Trains on line 4 are stopped. Next update by 14:30.",
        "html": "<p>Trains on line 4 are stopped. <b>Next update by 14:30.</b></p>",
        "idempotency_key": key,
    }
    values.update(kwargs)
    return Message(**values)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def eventually(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll ``condition`` until it holds; fail at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.005)


def message_id(mail: ReceivedMail) -> str:
    """The Message-ID as sent. A long one is folded onto its own line (legal CFWS), and
    the stdlib parser keeps the fold's leading space in the value, hence the strip."""
    return str(mail.message["Message-ID"]).strip()


def parts(mail: ReceivedMail) -> dict[str, str]:
    return {part.get_content_type(): str(part.get_content()) for part in mail.message.iter_parts()}


# -- what arrives -------------------------------------------------------------------------


async def test_starttls_delivers_multipart_with_all_headers(
    make_sink: SinkFactory, make_channel: ChannelFactory
) -> None:
    sink = make_sink(require_starttls=True)
    channel = make_channel(sink.port, security="starttls", reply_to="Help desk <help@example.com>")
    msg = message(headers={"X-Broadcaster-Incident": "INC-42", "List-Unsubscribe": "<https://x/u>"})

    receipt = await channel.send(target(name='Ada "Countess" Lovelace, Jr.'), msg)

    [mail] = sink.wait_for(1, WAIT)
    email = mail.message
    assert mail.tls
    assert mail.sender == "ops@example.com"
    assert mail.recipients == ("customer1@example.com",)
    assert email.get_content_type() == "multipart/alternative"
    assert parts(mail) == {"text/plain": f"{msg.text}\n", "text/html": f"{msg.html}\n"}
    assert email["Subject"] == msg.subject
    assert email["From"].addresses[0].display_name == "Operations"
    [to] = email["To"].addresses
    assert to.display_name == 'Ada "Countess" Lovelace, Jr.'
    assert to.addr_spec == "customer1@example.com"
    assert str(email["Reply-To"]) == "Help desk <help@example.com>"
    assert email["Date"].datetime.tzinfo is not None
    assert email["X-Broadcaster-Incident"] == "INC-42"
    assert email["List-Unsubscribe"] == "<https://x/u>"
    assert receipt.provider_message_id == message_id(mail)
    assert "round-1.c1.email" in message_id(mail)


class _LateAcknowledgement:
    """aiosmtpd hook: keeps each message, then answers 250 only after ``delay`` seconds
    (a relay that queued the message but whose answer is lost to our timeout)."""

    def __init__(self) -> None:
        self.stored: list[bytes] = []
        self.delay = 0.0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.stored.append(envelope.original_content or b"")
        await asyncio.sleep(self.delay)
        return "250 2.0.0 OK: queued"


async def test_a_copy_sent_again_after_a_lost_answer_has_the_same_message_id(
    make_channel: ChannelFactory,
) -> None:
    """The relay takes the message, its 250 comes after ``timeout``: the send is retried
    (by a channel built anew, as after a restart) and the mailbox gets a second copy,
    which it can drop as a duplicate only if the Message-ID is the same."""
    hook = _LateAcknowledgement()
    controller = Controller(hook, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        msg = message("delivery-20", thread="incident-7")
        hook.delay = 3.0
        with pytest.raises(DeliveryError) as failed:
            await make_channel(controller.port, security="none", timeout=0.5).send(target(), msg)
        assert failed.value.retryable
        hook.delay = 0.0
        channel = make_channel(controller.port, security="none")
        receipt = await channel.send(target(), msg)
    finally:
        controller.stop()

    ids = [message_from_bytes(raw)["Message-ID"] for raw in hook.stored]
    assert ids == [receipt.provider_message_id] * 2


async def test_an_incidents_messages_arrive_as_one_thread(
    make_sink: SinkFactory, make_channel: ChannelFactory
) -> None:
    sink = make_sink()
    channel = make_channel(sink.port)
    for n in (1, 2):
        await channel.send(target(), message(f"delivery-{n}", thread="incident-7"))
    await channel.send(target(2), message("delivery-3", thread="incident-7"))

    first, second, other = sink.wait_for(3, WAIT)
    root = str(first.message["References"]).strip()
    assert str(second.message["References"]).strip() == root
    assert str(second.message["In-Reply-To"]).strip() == root
    assert str(other.message["References"]).strip() != root  # another customer's thread
    assert root not in {message_id(first), message_id(second)}


async def test_text_only_message_and_the_envelope(
    make_sink: SinkFactory, make_channel: ChannelFactory
) -> None:
    """No HTML: a plain text/plain message. A Cc or Bcc passed through
    ``Message.headers`` must not add envelope recipients: one message, one target."""
    sink = make_sink()
    channel = make_channel(sink.port)
    headers = {"Cc": "boss@example.com", "Bcc": "spy@example.com"}

    await channel.send(target(), message(html=None, headers=headers))

    [mail] = sink.wait_for(1, WAIT)
    assert mail.message.get_content_type() == "text/plain"
    assert "Reply-To" not in mail.message
    assert mail.recipients == ("customer1@example.com",)


async def test_non_ascii_name_subject_and_bodies_arrive_intact(
    make_sink: SinkFactory, make_channel: ChannelFactory
) -> None:
    sink = make_sink()
    channel = make_channel(sink.port)
    msg = message(
        subject="[Störung] Linie 4: keine Züge",
        text="Die Züge fahren nicht. " * 10 + "\n地铁停运。\n",
        html="<p>Die Züge fahren nicht · 地铁停运</p>\n",
    )

    await channel.send(target(name="Jürgen Müller"), msg)

    [mail] = sink.wait_for(1, WAIT)
    assert mail.message["Subject"] == msg.subject
    assert mail.message["To"].addresses[0].display_name == "Jürgen Müller"
    assert parts(mail) == {"text/plain": msg.text, "text/html": msg.html}


async def test_a_non_ascii_address_goes_with_smtputf8(
    make_sink: SinkFactory, make_channel: ChannelFactory
) -> None:
    sink = make_sink()
    channel = make_channel(sink.port)

    await channel.send(Target(address="kunde@bücher.example", name="Kunde"), message())

    [mail] = sink.wait_for(1, WAIT)
    assert mail.recipients == ("kunde@bücher.example",)


async def test_an_internationalised_local_part_goes_with_smtputf8(
    make_sink: SinkFactory, make_channel: ChannelFactory
) -> None:
    """RFC 6531: a local part that is not ASCII (the customer import accepts one) goes as
    it is where the relay offers SMTPUTF8. The standard library's address parser refuses
    it, and the channel used to disable such an address without trying it."""
    sink = make_sink()
    channel = make_channel(sink.port)

    await channel.send(Target(address="jörg@example.com", name="Jörg"), message())
    await channel.send(Target(address="用户@例子.广告", name="用户"), message())

    first, second = sink.wait_for(2, WAIT)
    assert first.recipients == ("jörg@example.com",)
    assert "SMTPUTF8" in first.mail_options
    assert second.recipients == ("用户@例子.广告",)


async def test_without_smtputf8_a_non_ascii_domain_goes_as_its_a_label(
    make_sink: SinkFactory, make_channel: ChannelFactory
) -> None:
    """A relay without SMTPUTF8 cannot take ``kunde@bücher.example``, but the domain has
    an ASCII form (IDNA, RFC 5891) every relay takes: in the envelope and in To. It used to
    fail as a broken connection, retried, with a healthy connection dropped each time."""
    sink = make_sink(tls_context=None, esmtp=False)
    channel = make_channel(sink.port, security="none", pool_size=1)

    await channel.send(Target(address="kunde@Bücher.example", name="Kunde"), message())

    [mail] = sink.wait_for(1, WAIT)
    assert mail.recipients == ("kunde@xn--bcher-kva.example",)
    assert mail.mail_options == ()
    [to] = mail.message["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Kunde", "kunde@xn--bcher-kva.example")


@pytest.mark.parametrize("address", ["jörg@example.com", "用户@例子.广告", "kunde@bü_cher.example"])
async def test_without_smtputf8_an_address_with_no_ascii_form_fails_and_is_kept(
    make_sink: SinkFactory, make_channel: ChannelFactory, address: str
) -> None:
    """A local part that is not ASCII (or a domain IDNA refuses) cannot go through a relay
    without SMTPUTF8: that delivery fails for good, so the customer's next channel is
    tried, but the relay is at fault, not the address, which stays enabled. Nothing was
    sent, so the pooled connection is kept."""
    sink = make_sink(tls_context=None, esmtp=False)
    channel = make_channel(sink.port, security="none", pool_size=1)
    await channel.send(target(1), message())

    with pytest.raises(DeliveryError) as caught:
        await channel.send(Target(address=address, name="X"), message())

    assert (caught.value.retryable, caught.value.contact_point) == (False, None)
    assert "does not offer" in caught.value.reason and "SMTPUTF8" in caught.value.reason
    await channel.send(target(2), message())
    first, second = sink.wait_for(2, WAIT)
    assert (first.recipients, second.recipients) == (
        ("customer1@example.com",),
        ("customer2@example.com",),
    )
    assert sink.connections == 1


async def test_the_envelope_declares_the_exact_size_and_smtputf8_only_when_needed(
    make_sink: SinkFactory, make_channel: ChannelFactory
) -> None:
    """MAIL FROM carries SIZE (RFC 1870: the octets as transmitted, CRLF included, the
    terminating dot and stuffed dots not) and SMTPUTF8 only for a non-ASCII address. A
    body line that starts with a dot arrives intact (dot-stuffed on the wire)."""
    sink = make_sink()
    channel = make_channel(sink.port)

    await channel.send(target(1), message(html=None, text="Line one\n.hidden dot\n..two"))
    await channel.send(Target(address="kunde@bücher.example", name="Kunde"), message())

    plain, utf8 = sink.wait_for(2, WAIT)
    assert plain.sender == "ops@example.com"
    assert plain.mail_options == (f"SIZE={plain.size}",)
    assert plain.message.get_content() == "Line one\n.hidden dot\n..two\n"
    assert sorted(utf8.mail_options) == sorted(("SMTPUTF8", f"SIZE={utf8.size}"))


async def test_a_quoted_local_part_goes_into_the_envelope_as_it_is(
    make_sink: SinkFactory, make_channel: ChannelFactory
) -> None:
    """Not a plain local@domain: quoted by aiosmtplib's own rules, after its checks."""
    sink = make_sink()
    channel = make_channel(sink.port, pool_size=1)

    await channel.send(Target(address='"ada lovelace"@example.com', name="Ada"), message())
    await channel.send(target(2), message())

    first, second = sink.wait_for(2, WAIT)
    assert first.recipients == ('"ada lovelace"@example.com',)
    assert second.recipients == ("customer2@example.com",)
    assert first.connection == second.connection


async def test_a_relay_that_refuses_ehlo_gets_helo_and_the_message(
    make_sink: SinkFactory, make_channel: ChannelFactory
) -> None:
    sink = make_sink(tls_context=None, esmtp=False)
    channel = make_channel(sink.port, security="none")

    await channel.send(target(), message())

    [mail] = sink.wait_for(1, WAIT)
    assert mail.recipients == ("customer1@example.com",)
    assert mail.mail_options == ()  # no extensions were offered: no SIZE


async def test_a_refused_sender_fails_the_message_not_the_address(
    make_sink: SinkFactory, make_channel: ChannelFactory
) -> None:
    """A relay that wants AUTH refuses MAIL FROM (530): the customer's address is not
    at fault, so the contact point stays enabled."""
    sink = make_sink(credentials={"relay-user": "s3cret"})
    channel = make_channel(sink.port)

    with pytest.raises(DeliveryError) as caught:
        await channel.send(target(), message())

    assert caught.value.contact_point is None
    assert caught.value.retryable  # once the relay or our settings are fixed, it goes out
    assert "530" in caught.value.reason
    assert sink.messages == []


async def test_implicit_tls(make_sink: SinkFactory, make_channel: ChannelFactory) -> None:
    sink = make_sink(implicit_tls=True)
    channel = make_channel(sink.port, security="tls")

    receipt = await channel.send(target(), message())

    [mail] = sink.wait_for(1, WAIT)
    assert mail.tls
    assert receipt.provider_message_id == message_id(mail)


# -- the pool -----------------------------------------------------------------------------


async def test_pool_of_one_reuses_one_connection(
    make_sink: SinkFactory, make_channel: ChannelFactory
) -> None:
    sink = make_sink()
    channel = make_channel(sink.port, pool_size=1)

    for n in range(5):
        await channel.send(target(n), message(f"r1/c{n}/email"))

    mails = sink.wait_for(5, WAIT)
    assert sink.connections == 1
    assert {mail.connection for mail in mails} == {1}


async def test_pool_of_four_sends_concurrently_each_exactly_once(
    make_sink: SinkFactory, make_channel: ChannelFactory
) -> None:
    sink = make_sink(delay=0.02)
    channel = make_channel(sink.port, pool_size=4)
    count = 40

    receipts = await asyncio.gather(
        *(channel.send(target(n), message(f"r1/c{n}/email")) for n in range(count))
    )

    mails = await sink.wait_for_async(count, WAIT)
    expected = {f"customer{n}@example.com" for n in range(count)}
    assert len(mails) == count
    assert {r for mail in mails for r in mail.recipients} == expected
    assert {message_id(mail) for mail in mails} == {r.provider_message_id for r in receipts}
    # The semaphore lets four sends in at once and none finds an idle connection.
    assert sink.connections == 4
    assert {mail.connection for mail in mails} == {1, 2, 3, 4}


async def test_aclose_closes_every_connection(
    make_sink: SinkFactory, make_channel: ChannelFactory
) -> None:
    sink = make_sink()
    channel = make_channel(sink.port, pool_size=2)
    await asyncio.gather(*(channel.send(target(n), message(f"k{n}")) for n in range(2)))
    assert sink.open_connections == 2

    await channel.aclose()

    await asyncio.to_thread(sink.wait_all_closed, WAIT)
    with pytest.raises(DeliveryError) as caught:
        await channel.send(target(), message())
    assert caught.value.retryable


async def test_aclose_during_a_send_closes_that_connection_too(
    make_sink: SinkFactory, make_channel: ChannelFactory
) -> None:
    sink = make_sink(delay=0.3)
    channel = make_channel(sink.port, pool_size=1)

    sending = asyncio.create_task(channel.send(target(), message()))
    await eventually(lambda: sink.open_connections == 1)  # the send holds the connection
    await channel.aclose()
    await sending

    await asyncio.to_thread(sink.wait_all_closed, WAIT)


# -- failures and the retry contract -------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "retryable", "contact_point"),
    [
        ("550 5.1.1 mailbox unavailable", False, ContactPointState.DISABLED),
        ("550 No such user here", False, ContactPointState.DISABLED),
        (
            "550 5.1.1 Recipient address rejected: User unknown in relay recipient table",
            False,
            ContactPointState.DISABLED,
        ),
        ("451 4.3.0 try later", True, None),
        # The relay's policy towards us: every message alike, no customer's fault.
        ("554 5.7.1 Relay access denied", True, None),
        ("550 5.7.1 Client host blocked using zen.spamhaus.org", True, None),
        ("530 5.7.0 Authentication required", True, None),
        # Our sender refused at RCPT (X.1.7, X.1.8, Postfix's wording): not the customer's.
        ("553 5.1.8 <ops@example.com>: Sender address rejected: Domain not found", True, None),
        ("550 5.1.8 Access denied, bad outbound sender", True, None),
        ("553 5.1.7 <ops@example.com>: Sender address rejected: bad syntax", True, None),
        ("550 5.1.0 <ops@example.com>: Sender address rejected: User unknown", True, None),
        ("550 <ops@example.com>: Sender address rejected: not owned by user", True, None),
        # The recipient's address (RFC 3463 X.1.1 to X.1.6, RFC 7505 X.1.10).
        ("550 5.1.2 Host unknown", False, ContactPointState.DISABLED),
        ("550 5.1.10 Recipient address has null MX", False, ContactPointState.DISABLED),
        # Refused for good, but nothing says the mailbox does not exist.
        ("552 5.2.2 Mailbox full", False, None),
        ("550 5.1.0 Address rejected", False, None),  # X.1.0: which address, it does not say
        ("554 Transaction failed", False, None),
    ],
)
async def test_recipient_reply_maps_to_the_retry_contract(
    make_sink: SinkFactory,
    make_channel: ChannelFactory,
    reply: str,
    retryable: bool,
    contact_point: ContactPointState | None,
) -> None:
    sink = make_sink(reject={"customer1@example.com": reply})
    channel = make_channel(sink.port, pool_size=1)

    with pytest.raises(DeliveryError) as caught:
        await channel.send(target(1), message())

    assert (caught.value.retryable, caught.value.contact_point) == (retryable, contact_point)
    assert reply.split()[0] in caught.value.reason
    # The channel is still usable for the next customer.
    await channel.send(target(2), message())
    [mail] = sink.wait_for(1, WAIT)
    assert mail.recipients == ("customer2@example.com",)


@pytest.mark.parametrize("loop", get_args(EventLoopChoice))
def test_a_refused_connection_is_dropped_at_once_on_either_event_loop(
    make_sink: SinkFactory, ca_file: Path, monkeypatch: pytest.MonkeyPatch, loop: EventLoopChoice
) -> None:
    """After a refused recipient the connection is aborted, not left to time out: the
    send returns long before the close grace (made a minute here). uvloop's transports
    are not ``asyncio.Transport`` subclasses; a check for that class skipped the abort
    and each refusal held its pool slot for the whole grace."""
    import channels.email as email_module

    monkeypatch.setattr(email_module, "_CLOSE_GRACE", 60.0)
    sink = make_sink(reject={"customer1@example.com": "550 5.1.1 mailbox unavailable"})

    async def refuse_then_send() -> None:
        channel = EmailChannel(
            "email",
            EmailSettings.model_validate(
                {
                    "host": "127.0.0.1",
                    "port": sink.port,
                    "ca_file": ca_file,
                    "pool_size": 1,
                    "timeout": WAIT,
                    "from": "Operations <ops@example.com>",
                }
            ),
        )
        try:
            async with asyncio.timeout(WAIT):
                with pytest.raises(DeliveryError):
                    await channel.send(target(1), message())
                await channel.send(target(2), message())
        finally:
            await channel.aclose()

    if loop == "uvloop":
        pytest.importorskip("uvloop")
    eventloop.run(refuse_then_send(), loop)
    [mail] = sink.wait_for(1, WAIT)
    assert mail.recipients == ("customer2@example.com",)


async def test_server_not_listening_is_retryable(make_channel: ChannelFactory) -> None:
    channel = make_channel(free_port(), timeout=2.0)

    with pytest.raises(DeliveryError) as caught:
        await channel.send(target(), message())

    assert (caught.value.retryable, caught.value.contact_point) == (True, None)


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_untrusted_certificate_is_retryable(
    make_sink: SinkFactory, make_channel: ChannelFactory, security: str
) -> None:
    """An unverifiable certificate is the relay's or our configuration (missing CA,
    expired or swapped certificate, interception), not the address or the message. Once
    an operator fixes it every waiting delivery can go, so: retryable, no contact point.
    Failing for good would drop every customer's update over an infrastructure fault."""
    sink = make_sink(implicit_tls=security == "tls")
    channel = make_channel(sink.port, security=security, ca_file=None)

    with pytest.raises(DeliveryError) as caught:
        await channel.send(target(), message())

    assert (caught.value.retryable, caught.value.contact_point) == (True, None)
    assert "certificate" in caught.value.reason.lower()
    assert sink.messages == []


@pytest.mark.parametrize(
    ("security", "mechanism"), [("starttls", "PLAIN"), ("starttls", "LOGIN"), ("tls", "PLAIN")]
)
async def test_auth(
    make_sink: SinkFactory, make_channel: ChannelFactory, security: str, mechanism: str
) -> None:
    sink = make_sink(
        require_starttls=security == "starttls",
        implicit_tls=security == "tls",
        credentials={"relay-user": "s3cret"},
        auth_mechanisms=[mechanism],
    )
    channel = make_channel(sink.port, security=security, username="relay-user", password="s3cret")

    await channel.send(target(), message())

    [mail] = sink.wait_for(1, WAIT)
    assert mail.tls
    assert (mail.auth_login, mail.auth_mechanism) == ("relay-user", mechanism)


async def test_wrong_password_is_retryable(
    make_sink: SinkFactory, make_channel: ChannelFactory
) -> None:
    """A refused login (535) is the channel's configuration, not the address or the
    message; the same delivery goes through once an operator fixes the secret. So:
    retryable (the dispatcher's backoff and attempt limit bound it), no contact point."""
    sink = make_sink(require_starttls=True, credentials={"relay-user": "s3cret"})
    channel = make_channel(sink.port, username="relay-user", password="wrong")

    with pytest.raises(DeliveryError) as caught:
        await channel.send(target(), message())

    assert (caught.value.retryable, caught.value.contact_point) == (True, None)
    assert "535" in caught.value.reason
    assert sink.messages == []
    await asyncio.to_thread(sink.wait_all_closed, WAIT)


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "",
        "no-domain",
        "a@@example.com",
        "<a@example.com>",
        "a@example.com> SIZE=1",
        '"x\\\r\\\nRCPT TO:<y@example.com>"@example.com',
        '"tab\there"@example.com',
        # Internationalised local parts (RFC 6531) are dot-atoms of printable characters.
        "jö rg@example.com",
        "jö..rg@example.com",
        "jörg.@example.com",
        "jörg\u2028x@example.com",
        "jörg\u200bx@example.com",
        "jörg@",
        "jörg@exa mple.com",
    ],
)
async def test_invalid_address_disables_the_contact_point(
    make_sink: SinkFactory, make_channel: ChannelFactory, address: str
) -> None:
    sink = make_sink()
    channel = make_channel(sink.port)

    with pytest.raises(DeliveryError) as caught:
        await channel.send(Target(address=address, name="X"), message())

    error = caught.value
    assert (error.retryable, error.contact_point) == (False, ContactPointState.DISABLED)
    assert sink.connections == 0


async def test_content_faults_do_not_condemn_the_address(
    make_sink: SinkFactory, make_channel: ChannelFactory
) -> None:
    """A header with a line break fails that message only; a line break in the stored
    name is folded away, so the customer still gets the email."""
    sink = make_sink()
    channel = make_channel(sink.port)

    with pytest.raises(DeliveryError) as caught:
        await channel.send(target(), message(headers={"X-Note": "two\nlines"}))
    assert (caught.value.retryable, caught.value.contact_point) == (False, None)

    await channel.send(target(name="Ada\r\nLovelace"), message())
    [mail] = sink.wait_for(1, WAIT)
    assert mail.message["To"].addresses[0].display_name == "Ada Lovelace"


def test_sink_restarts_on_its_port_and_wait_for_keeps_its_deadline() -> None:
    sink = SmtpSink()
    with sink:
        port = sink.port
    with sink:  # a new thread and loop on the same port
        assert sink.port == port
        with pytest.raises(TimeoutError):
            sink.wait_for(1, 0.05)


async def test_connection_is_renewed_after_messages_per_connection() -> None:
    with SmtpSink() as sink:
        channel = EmailChannel(
            "email",
            EmailSettings.model_validate(
                {
                    "host": "127.0.0.1",
                    "port": sink.port,
                    "security": "none",
                    "from": "Ops <ops@example.org>",
                    "pool_size": 1,
                    "messages_per_connection": 2,
                }
            ),
        )
        try:
            for n in range(5):
                await channel.send(Target(f"c{n}@example.org", "C"), Message(subject="s", text="t"))
        finally:
            await channel.aclose()
        sink.wait_for(5, timeout=10)
        assert sink.connections == 3  # 2 + 2 + 1


@pytest.mark.parametrize(
    ("code", "text", "retryable"),
    [
        (553, "5.1.8 Sender address rejected: domain not found", True),
        (550, "5.7.1 Sender not allowed to relay", True),
        (552, "Message size exceeds fixed maximum message size", False),
        (550, "5.3.4 Message too big for system", False),
    ],
)
def test_a_refused_sender_is_retried_unless_the_message_is_too_large(
    code: int, text: str, retryable: bool
) -> None:
    from channels.email import _sender_refused

    error = _sender_refused(code, text)
    assert (error.retryable, error.contact_point) == (retryable, None)
    assert error.reason == f"SMTP {code} for the sender: {text}"


def test_a_sender_refused_at_rcpt_says_so() -> None:
    from channels.email import _refused

    text = "5.1.8 <ops@example.com>: Sender address rejected: Domain not found"
    refused = aiosmtplib.SMTPRecipientRefused(553, text, "customer1@example.com")
    error = _refused([refused])
    assert (error.retryable, error.contact_point) == (True, None)
    assert error.reason == (
        f"SMTP 553 for customer1@example.com: {text}"
        " (our sender address was refused: check 'from' and its domain)"
    )


# -- a relay that refuses our rate ---------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "text", "throttled"),
    [
        # The sender's rate, in the words of the relays in use.
        (454, "Throttling failure: Maximum sending rate exceeded.", True),
        (450, "4.7.1 Error: too much mail from 127.0.0.1", True),
        (421, "4.7.0 mx.example.com Error: too many connections from 127.0.0.1", True),
        (
            421,
            "4.3.2 The maximum number of concurrent server connections has exceeded a limit, "
            "closing transmission channel",
            True,
        ),
        (421, "4.7.0 Too many concurrent SMTP connections from this IP address", True),
        (451, "4.7.1 Rate limit exceeded, try again later", True),
        (421, "4.7.28 Our system has detected an unusual rate of unsolicited mail", True),
        (421, "4.7.0 [TSS04] Messages temporarily deferred due to unexpected volume", True),
        (450, "4.2.1 Peak SMTP relay limit exceeded for customer", True),  # Google Workspace
        (451, "Sender rate overlimit - 120.0 / 1h / smtp", True),  # Exim's ratelimit ACL
        (450, "4.7.1 Error: too many recipients from 127.0.0.1", True),
        (421, "4.7.0 Error: too many new TLS sessions from 127.0.0.1", True),
        (432, "4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded", True),
        (421, "4.4.5 Server busy, concurrency limit reached", True),
        # One mailbox's rate (X.2.x, mailbox status): that recipient's message only.
        (
            450,
            "4.2.1 The user you are trying to contact is receiving mail at a rate that "
            "prevents additional messages from being delivered",
            False,
        ),
        # One recipient's rate, in words: that message only.
        (451, "Ratelimit exceeded for mailbox customer1@example.com", False),
        (451, "4.3.0 Too many messages queued for this recipient", False),
        # A limit of one connection: a new connection is all it takes.
        (421, "4.7.0 Too many messages for this session", False),
        (421, "4.7.0 Too many messages in one connection", False),
        (451, "4.3.0 Please send separate limits", False),  # not "rate limit"
        # Busy, or refused for another reason: no word of our rate.
        (421, "4.3.2 Service not available, closing transmission channel", False),
        (451, "4.3.0 try later", False),
        (452, "4.5.3 Too many recipients", False),
        # Never a permanent refusal.
        (554, "5.7.1 Throttling failure: Daily message quota exceeded", False),
    ],
)
def test_a_refusal_of_our_rate_is_told_from_other_refusals(
    code: int, text: str, throttled: bool
) -> None:
    from channels.email import _from_reply, _refused, _sender_refused, rate_refusal

    assert rate_refusal(code, text) is throttled
    refused = aiosmtplib.SMTPRecipientRefused(code, text, "customer1@example.com")
    for error in (_from_reply(code, text), _sender_refused(code, text), _refused([refused])):
        assert error.throttled is throttled
        assert error.throttled_scope is None  # one relay: the whole channel
        if throttled:
            assert error.retryable and error.contact_point is None
            assert error.reason.endswith("(the relay limits our rate)")


async def test_a_relay_that_refuses_our_rate_throttles_the_channel(
    make_sink: SinkFactory, make_channel: ChannelFactory
) -> None:
    """Refused at MAIL (or with MAIL, RCPT and DATA in one write where the relay pipelines):
    the send is throttled; the next one goes on the same channel once the relay takes mail."""
    sink = make_sink(mail_refusals=["450 4.7.1 Error: too much mail from 127.0.0.1"])
    channel = make_channel(sink.port, pool_size=1)

    with pytest.raises(DeliveryError) as caught:
        await channel.send(target(1), message())

    assert caught.value.throttled and caught.value.retryable
    assert caught.value.contact_point is None
    assert "450" in caught.value.reason and "too much mail" in caught.value.reason
    assert sink.mail_refusals_left == 0
    await channel.send(target(1), message())
    [mail] = sink.wait_for(1, WAIT)
    assert mail.recipients == ("customer1@example.com",)


async def test_a_greeting_that_refuses_our_rate_throttles_the_channel(
    make_channel: ChannelFactory,
) -> None:
    """A relay at its limit of connections says so in its greeting and closes: the send is
    throttled, and no socket is left open."""
    greeting = b"421 4.7.0 mx.example.com Error: too many connections from 127.0.0.1\r\n"
    greeted = 0

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal greeted
        greeted += 1
        writer.write(greeting)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        channel = make_channel(port, security="none", pool_size=1)
        with pytest.raises(DeliveryError) as caught:
            await channel.send(target(1), message())
    finally:
        server.close()
        await server.wait_closed()

    assert greeted == 1
    assert caught.value.throttled and caught.value.retryable
    assert "too many connections" in caught.value.reason


def test_the_sink_refuses_mail_replies_that_are_not_smtp_replies() -> None:
    with pytest.raises(ValueError, match=r"mail_refusals\[1\]"):
        SmtpSink(mail_refusals=["450 4.7.1 slow down", "slow down"])
