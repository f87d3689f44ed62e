"""The email channel's message builder: the bytes it writes itself, read back by the
standard library's parser (``policy.default``) as a receiver would read them.

The channel serialises MIME without ``EmailMessage`` (see ``EmailChannel.build``), so these
pin what the standard library used to guarantee: both parts, every header, RFC 2047 for
non-ASCII names and subjects, 7-bit clean bodies, RFC 5322 line limits, and that nothing
in a name, subject, header or key can start a header of its own.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.policy import compat32
from typing import Any

import pytest

from channels.base import ContactPointState, DeliveryError, Message, Target
from channels.email import EmailChannel, EmailSettings, OutgoingEmail, _fold

CREATED = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def channel(**settings: Any) -> EmailChannel:
    values: dict[str, Any] = {"host": "127.0.0.1", "port": 25, "security": "none"}
    values.update({"from": "Operations <ops@example.com>", **settings})
    return EmailChannel("email", EmailSettings.model_validate(values))


def message(**kwargs: Any) -> Message:
    values: dict[str, Any] = {
        "subject": "Line 4: trains stopped",
        "text": "Trains on line 4 are stopped. Next update by 14:30.\n",
        "html": "<p>Trains on line 4 are stopped. <b>Next update by 14:30.</b></p>\n",
        "idempotency_key": "delivery-7",
        "created_at": CREATED,
    }
    values.update(kwargs)
    return Message(**values)


def build(
    name: str = "Ada Lovelace", address: str = "ada@example.com", **kwargs: Any
) -> tuple[OutgoingEmail, EmailMessage]:
    built = channel().build(Target(address=address, name=name), message(**kwargs))
    return built, built.parse()


def lines(data: bytes) -> list[bytes]:
    assert b"\r\n" in data
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", data) is None, "a bare CR or LF"
    return data.split(b"\r\n")


def parts(email: EmailMessage) -> dict[str, str]:
    if not email.is_multipart():
        return {email.get_content_type(): str(email.get_content())}
    return {part.get_content_type(): str(part.get_content()) for part in email.iter_parts()}


# -- what a receiver reads ----------------------------------------------------------------


def test_multipart_alternative_with_every_header() -> None:
    headers = {
        "X-Broadcaster-Delivery": "7",
        "List-Unsubscribe": "<https://status.example.org/u/tok>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "Cc": "Boss <boss@example.com>",
    }
    built = channel(reply_to="Help desk <help@example.com>").build(
        Target("customer1@example.com", 'Ada "Countess" Lovelace, Jr.'), message(headers=headers)
    )
    email = built.parse()

    assert email.get_content_type() == "multipart/alternative"
    assert parts(email) == {"text/plain": message().text, "text/html": message().html}
    assert [p["Content-Transfer-Encoding"] for p in email.iter_parts()] == ["7bit", "7bit"]
    assert email["MIME-Version"] == "1.0"
    assert str(email["From"]) == "Operations <ops@example.com>"
    [to] = email["To"].addresses
    assert (to.display_name, to.addr_spec) == (
        'Ada "Countess" Lovelace, Jr.',
        "customer1@example.com",
    )
    assert str(email["Reply-To"]) == "Help desk <help@example.com>"
    assert email["Subject"] == "Line 4: trains stopped"
    assert email["Date"].datetime == CREATED
    assert email["Message-ID"] == built.message_id
    assert re.fullmatch(r"<delivery-7\.[a-z2-7]{20}@example\.com>", built.message_id)
    for key, value in headers.items():
        assert str(email[key]) == value
    assert not email.defects
    assert not any(part.defects for part in email.iter_parts())
    assert built.data.isascii() and not built.smtputf8


def test_text_only_is_a_single_text_plain_part() -> None:
    built, email = build(html=None, text="No HTML here")

    assert email.get_content_type() == "text/plain"
    assert not email.is_multipart()
    assert email.get_content() == "No HTML here\n"  # a final line break, as set_content adds
    assert "Reply-To" not in email
    assert b"boundary" not in built.data


def test_line_endings_are_normalised_to_crlf() -> None:
    built, email = build(text="one\rtwo\r\nthree\nfour", html="<p>a</p>\r\n<p>b</p>")

    lines(built.data)  # no bare CR or LF anywhere
    assert parts(email) == {
        "text/plain": "one\ntwo\nthree\nfour\n",
        "text/html": "<p>a</p>\n<p>b</p>\n",
    }


def test_date_without_created_at_is_now() -> None:
    _, email = build(created_at=None)

    assert abs(email["Date"].datetime - datetime.now(UTC)) < timedelta(seconds=5)


def test_empty_name_is_the_bare_address() -> None:
    built, email = build(name="  ")

    assert b"\r\nTo: ada@example.com\r\n" in built.data
    assert email["To"].addresses[0].display_name == ""


def test_message_id_without_a_key_and_with_a_configured_domain() -> None:
    built = channel(message_id_domain="mail.example.net").build(
        Target("a@example.com"), message(idempotency_key="")
    )

    assert re.fullmatch(r"<\d+\.\d+\.\d+@mail\.example\.net>", built.message_id)


# -- the same message on every attempt, one thread per incident -----------------------------

POSTED = datetime(2026, 3, 4, 5, 0, tzinfo=UTC)
ANN = Target("ann@example.com", "Ann de Vries", customer_id="C001")
BOB = Target("bob@example.com", "Bob", customer_id="C002")


def incident_message(key: str = "delivery-7", **kwargs: Any) -> Message:
    """A round's message as the dispatcher hands it over: thread and posted time set."""
    values: dict[str, Any] = {"thread": "incident-7", "posted_at": POSTED}
    values.update(kwargs)
    return message(idempotency_key=key, **values)


def test_a_delivery_has_one_message_id_on_every_attempt_and_after_a_restart() -> None:
    """A copy sent again (the relay's 250 lost to a timeout, a lease that expired) is the
    same message to a mailbox, which may then drop it: same key, same Message-ID, though
    each attempt is composed at its own time and by a channel built anew."""
    first = channel().build(ANN, incident_message(created_at=CREATED))
    retried = channel().build(ANN, incident_message(created_at=CREATED + timedelta(minutes=9)))

    assert first.message_id == retried.message_id
    assert re.fullmatch(r"<delivery-7\.[a-z2-7]{20}@example\.com>", first.message_id)
    assert first.parse()["Message-ID"] == first.message_id


def test_message_ids_differ_per_delivery_per_domain_and_per_store() -> None:
    """Another delivery, another domain, or the same delivery id in a new store (whose ids
    start again at 1, its updates posted at other times): never a Message-ID a mailbox has
    seen, or it would drop the new message as a duplicate."""
    ids = {
        channel().build(ANN, incident_message()).message_id,
        channel().build(ANN, incident_message(key="delivery-8")).message_id,
        channel(message_id_domain="mail.example.net").build(ANN, incident_message()).message_id,
        channel().build(ANN, incident_message(posted_at=POSTED + timedelta(days=90))).message_id,
    }
    assert len(ids) == 4


def test_a_message_without_a_posted_time_is_salted_with_its_composition() -> None:
    """A staff notice says nothing of a posted update: its id is stable for one
    composition and a new one otherwise, so a new store's notice-1 is not an old one's."""
    again = channel().build(ANN, message()).message_id
    assert channel().build(ANN, message()).message_id == again
    later = message(created_at=CREATED + timedelta(seconds=1))
    assert channel().build(ANN, later).message_id != again


def test_the_message_id_holds_no_customer_data() -> None:
    built = channel().build(ANN, incident_message())
    email = built.parse()

    for secret in ("ann", "Ann", "Vries", "C001"):
        assert secret not in built.message_id
        assert secret not in str(email["References"])


def test_an_incidents_messages_to_a_customer_reply_to_one_thread() -> None:
    """First notice, no news and resolution of one incident: In-Reply-To and References
    name one id, which is no message's own Message-ID, so mail clients thread them."""
    built = [
        channel().build(ANN, incident_message(key=f"delivery-{n}", subject=subject))
        for n, subject in enumerate(["Signal failure", "Still working on it", "Resolved"])
    ]
    emails = [b.parse() for b in built]

    roots = {str(e["In-Reply-To"]) for e in emails} | {str(e["References"]) for e in emails}
    assert len(roots) == 1
    [root] = roots
    assert re.fullmatch(r"<incident-7\.[a-z2-7]{20}@example\.com>", root)
    assert root not in {b.message_id for b in built}
    assert len({b.message_id for b in built}) == 3
    assert all(not e.defects for e in emails)


def test_threads_are_per_customer_and_per_incident() -> None:
    def root(target: Target, **kwargs: Any) -> str:
        return str(channel().build(target, incident_message(**kwargs)).parse()["References"])

    assert root(ANN) == root(Target("ann.new@example.com", "Ann", customer_id="C001"))
    assert len({root(ANN), root(BOB), root(ANN, thread="incident-8")}) == 3
    # Without a customer id, the address names the customer.
    assert root(Target("x@example.com")) != root(Target("y@example.com"))


def test_a_message_outside_an_incident_replies_to_nothing() -> None:
    _, email = build()

    assert "In-Reply-To" not in email and "References" not in email


@pytest.mark.parametrize("key", ["In-Reply-To", "references"])
def test_an_incident_messages_thread_headers_cannot_be_passed_twice(key: str) -> None:
    with pytest.raises(ValueError, match="at most 1"):
        channel().build(ANN, incident_message(headers={key: "<other@example.com>"}))
    # A message outside an incident may carry its own.
    _, email = build(headers={key: "<other@example.com>"})
    assert str(email[key]) == "<other@example.com>"


def test_a_long_key_is_cut_in_the_message_id_and_still_told_apart() -> None:
    one = channel().build(ANN, incident_message(key="k" * 500 + "1")).message_id
    two = channel().build(ANN, incident_message(key="k" * 500 + "2")).message_id

    assert one != two
    assert len(one) < 120


# -- non-ASCII --------------------------------------------------------------------------


def rfc2047(data: bytes, name: str) -> str:
    """Header ``name`` unfolded and decoded as RFC 2047 section 6.2 says: whitespace
    between two encoded words is dropped. (The policy.default parser keeps it, so a name
    that needs more than one encoded word reads back with extra spaces there.)"""
    email = message_from_bytes(data, policy=compat32)
    return str(make_header(decode_header(str(email[name]).replace("\r\n", ""))))


@pytest.mark.parametrize(
    "name",
    ["Jürgen Müller-Lüdenscheidt", "Zoë", "王小明", "😀 Emoji", "Ada\x07Bell", "x=?y?="],
)
def test_non_ascii_or_unprintable_names_are_rfc2047_encoded(name: str) -> None:
    built, email = build(name=name)

    assert built.data.isascii()
    assert all(len(line) <= 78 for line in lines(built.data))
    [to] = email["To"].addresses
    assert (to.display_name, to.addr_spec) == (name, "ada@example.com")
    assert b"\r\nTo: =?utf-8?b?" in built.data


@pytest.mark.parametrize("name", ["Ωμέγα Δέλτα " * 8, "王" * 100, "A" * 1200])
def test_a_name_too_long_for_one_encoded_word_takes_several(name: str) -> None:
    name = name.strip()
    built, _ = build(name=name)

    assert built.data.isascii()
    assert all(len(line) <= 78 for line in lines(built.data))
    assert rfc2047(built.data, "To") == f"{name} <ada@example.com>"


def test_non_ascii_subject_and_bodies() -> None:
    subject = "[Störung] Linie 1: keine Züge — 地铁停运"
    text = "Liebe Kundin,\nDie Züge fahren nicht. Ersatzbusse ab Bahnhof.\n"
    html = "<p>Die Züge fahren nicht · 地铁停运</p>\n"
    built, email = build(subject=subject, text=text, html=html)

    assert built.data.isascii()  # 7-bit clean: no 8BITMIME needed on the relay
    assert email["Subject"] == subject
    assert parts(email) == {"text/plain": text, "text/html": html}
    assert {p["Content-Transfer-Encoding"] for p in email.iter_parts()} <= {
        "quoted-printable",
        "base64",
    }


def test_mostly_cjk_body_goes_as_base64_mostly_latin_as_quoted_printable() -> None:
    cjk = "地铁停运。" * 40 + "\n"
    latin = "Die Züge fahren nicht. " * 4 + "\n"
    _, email = build(text=cjk, html=latin)

    text, html = email.iter_parts()
    assert (text["Content-Transfer-Encoding"], text.get_content()) == ("base64", cjk)
    assert (html["Content-Transfer-Encoding"], html.get_content()) == ("quoted-printable", latin)


def test_non_ascii_domain_goes_with_smtputf8() -> None:
    built, email = build(address="kunde@bücher.example")

    assert built.smtputf8
    assert email["To"].addresses[0].addr_spec == "kunde@bücher.example"


def test_an_internationalised_local_part_is_utf8_in_to() -> None:
    """RFC 6532: with SMTPUTF8 the address is UTF-8 in To, as in the envelope (an
    addr-spec is never RFC 2047 encoded); the name is still encoded words."""
    built, email = build(name="Jörg Müller", address="jörg@bücher.example")

    assert built.smtputf8
    assert "<jörg@bücher.example>\r\n".encode() in built.data
    [to] = email["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Jörg Müller", "jörg@bücher.example")
    assert email["Subject"] == "Line 4: trains stopped"


# -- line lengths -------------------------------------------------------------------------


def test_long_lines_are_encoded_within_rfc5322_limits() -> None:
    text = "word " * 400 + "\n" + "x" * 3000 + "\n"
    html = "<p>" + "ü" * 2000 + "</p>\n"
    subject = "A subject with many words " * 12
    name = "Countess " * 30
    built, email = build(name=name.strip(), subject=subject.strip(), text=text, html=html)

    assert max(len(line) for line in lines(built.data)) <= 78
    assert email["Subject"] == subject.strip()
    assert email["To"].addresses[0].display_name == name.strip()
    assert parts(email) == {"text/plain": text, "text/html": html}


def test_long_unbreakable_header_values_go_unencoded() -> None:
    """A List-Unsubscribe URL longer than a line goes as it is (up to 998 characters):
    RFC 2369 clients look for the angle-bracketed URL, not an RFC 2047 encoded word."""
    url = "<https://status.example.org/u/" + "t" * 200 + ">"
    built, email = build(headers={"List-Unsubscribe": url})

    assert b"\r\nList-Unsubscribe: " + url.encode() + b"\r\n" in built.data
    assert email["List-Unsubscribe"] == url


def test_a_header_value_beyond_998_characters_is_still_deliverable() -> None:
    value = "v" * 1500
    built, email = build(headers={"X-Long": value})

    assert max(len(line) for line in lines(built.data)) <= 998
    assert email["X-Long"] == value


@pytest.mark.parametrize(
    "line",
    [
        "Subject: short",
        "Subject: " + "word " * 40,
        "X-Spaces:   leading and   inner runs   " + "y" * 90 + "  ",
        "X-Huge: " + "z" * 300 + " tail",
    ],
)
def test_fold_unfolds_to_the_same_line(line: str) -> None:
    folded = _fold(line)

    assert folded is not None
    assert folded.replace("\r\n", "") == line
    for part in folded.split("\r\n"):
        assert part.strip(), "a whitespace-only line"
        # Past 78 only for a word that no line of 78 could hold.
        assert len(part) <= 78 or max(len(word) for word in part.split(" ")) >= 78


def test_fold_gives_up_past_998() -> None:
    assert _fold("X: " + "q" * 996) == "X:\r\n " + "q" * 996
    assert _fold("X: " + "q" * 998) is None


# -- nothing can inject a header ------------------------------------------------------------


@pytest.mark.parametrize("brk", ["\r\n", "\n", "\r", "\x0b", "\x0c", "\x85", "\u2028"])
def test_a_line_break_in_subject_or_header_value_is_refused(brk: str) -> None:
    with pytest.raises(ValueError, match="linefeed"):
        build(subject=f"Hello{brk}Bcc: spy@example.com")
    with pytest.raises(ValueError, match="linefeed"):
        build(headers={"X-Note": f"one{brk}Bcc: spy@example.com"})


@pytest.mark.parametrize("key", ["X Note", "X-Note:", "X-Note\r\nBcc", "", "X-Nöte", "X-Note\n"])
def test_a_header_name_that_is_not_a_field_name_is_refused(key: str) -> None:
    with pytest.raises(ValueError, match="header field name"):
        build(headers={key: "value"})


def test_a_line_break_in_the_name_is_folded_away() -> None:
    _, email = build(name="Ada\r\nBcc: spy@example.com\n\rX-Evil: 1")

    assert "Bcc" not in email and "X-Evil" not in email
    assert email["To"].addresses[0].display_name == "Ada Bcc: spy@example.com X-Evil: 1"
    assert len(email["To"].addresses) == 1


def test_the_idempotency_key_cannot_break_the_message_id() -> None:
    built, email = build(idempotency_key="k/1\r\nX-Evil: <1@x> ü")

    assert "X-Evil" not in email
    assert email["Message-ID"] == built.message_id
    assert re.fullmatch(
        r"<k\.1\.\.X-Evil\.\.\.1\.x\.\.\.\.[a-z2-7]{20}@example\.com>", built.message_id
    )


@pytest.mark.parametrize("key", ["Subject", "from", "TO", "Date", "Message-ID"])
def test_headers_the_channel_sets_cannot_be_passed_twice(key: str) -> None:
    with pytest.raises(ValueError, match="at most 1"):
        build(headers={key: "x@example.com"})


def test_reply_to_may_be_passed_unless_configured() -> None:
    _, email = build(headers={"Reply-To": "other@example.com"})
    assert str(email["Reply-To"]) == "other@example.com"

    with pytest.raises(ValueError, match="at most 1"):
        channel(reply_to="help@example.com").build(
            Target("a@example.com"), message(headers={"Reply-To": "other@example.com"})
        )


def test_bcc_and_mime_headers_from_the_message_are_dropped() -> None:
    headers = {
        "Bcc": "spy@example.com",
        "Resent-Bcc": "spy2@example.com",
        "Content-Type": "text/x-evil",
        "Content-Transfer-Encoding": "binary",
        "MIME-Version": "2.0",
        "Cc": "boss@example.com",
    }
    built, email = build(headers=headers)

    assert b"spy" not in built.data and b"evil" not in built.data
    assert email.get_content_type() == "multipart/alternative"
    assert email.get_all("MIME-Version") == ["1.0"]
    assert str(email["Cc"]) == "boss@example.com"


def test_a_body_line_like_the_boundary_does_not_split_the_part(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The boundary is random; if it ever occurs in a 7bit body another one is drawn."""
    draws = iter([b"\x00" * 12, b"\x01" * 12])
    monkeypatch.setattr("channels.email.os.urandom", lambda n: next(draws))
    clash = "--=_" + "00" * 12
    text = f"before\n{clash}\nafter\n"

    built, email = build(text=text)

    assert f'boundary="=_{"01" * 12}"'.encode() in built.data
    assert parts(email)["text/plain"] == text


# -- configuration and addresses -----------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"reply_to": "help@example.com\r\nBcc: spy@example.com"},
        {"message_id_domain": "example.com>\r\nX-Evil: 1"},
        {"message_id_domain": "bad domain"},
    ],
)
def test_settings_that_would_break_a_header_are_refused_at_start(settings: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="email channel 'email'"):
        channel(**settings)


async def test_an_address_longer_than_smtp_allows_disables_the_contact_point() -> None:
    address = "a" * 64 + "@" + ".".join(["d" * 60] * 4) + ".example"
    assert len(address) > 254

    with pytest.raises(DeliveryError) as caught:
        await channel().send(Target(address), message())

    assert (caught.value.retryable, caught.value.contact_point) == (
        False,
        ContactPointState.DISABLED,
    )
