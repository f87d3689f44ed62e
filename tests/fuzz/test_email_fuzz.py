"""The email channel's hand-written MIME against arbitrary names, subjects, bodies and
header values: whatever goes in, the bytes are 7-bit clean with CRLF line endings and no
line past RFC 5322's 998 characters, exactly the expected headers come out (nothing in a
value starts a header of its own), and a receiver's parser reads every value back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage
from email.message import Message as Message_
from email.policy import SMTP, compat32

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.base import Message, Target
from channels.email import EmailChannel, EmailSettings, _recipient

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CHANNEL = EmailChannel(
    "email",
    EmailSettings.model_validate(
        {"security": "none", "from": "Opérations <ops@example.com>", "reply_to": "h@example.com"}
    ),
)
# Text without lone surrogates (not encodable, refused as a content fault, not fuzzed).
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=300)
# Header values: anything but the line boundaries the channel refuses.
ONE_LINE = TEXT.filter(lambda s: "".join(s.splitlines()) == s)
WORDY = st.lists(
    st.one_of(st.sampled_from(["a", "word", "ü", " ", "  ", "=?", '"', "\\", "x" * 90]), ONE_LINE),
    max_size=30,
).map("".join)
HEADER_NAMES = ["X-Broadcaster-Link", "X-Note", "List-Unsubscribe", "X-Broadcaster-Round"]
ATEXT = "abcxyzABCXYZ0189!#$%&'*+-/=?^_`{|}~"
DOT_ATOM = st.lists(st.text(st.sampled_from(ATEXT), min_size=1, max_size=12), min_size=1).map(
    ".".join
)


def lines(data: bytes) -> list[bytes]:
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert b"\n" not in data.replace(b"\r\n", b"")
    return data.split(b"\r\n")


def normalised(text: str) -> str:
    """The body as set_content stores it: line endings normalised, one at the end."""
    return "".join(line.decode() + "\n" for line in text.encode().splitlines()) or "\n"


def unfolded(email: Message_, name: str) -> str:
    """The header's text as sent, folds removed (compat32 keeps it undecoded)."""
    return str(email[name]).replace("\r\n", "")


def stdlib(name: str, value: str) -> str:
    """``value`` through the standard library's header policy, as the channel used to
    send every header, and read back undecoded."""
    reference = EmailMessage()
    reference[name] = value
    data = reference.as_bytes(policy=SMTP)
    return unfolded(message_from_bytes(data, policy=compat32), name)


def rfc2047(raw: str) -> str:
    """A header value decoded as RFC 2047 6.2 says (whitespace between encoded words
    dropped), which the policy.default parser does not do."""
    return str(make_header(decode_header(raw.replace("\r\n", ""))))


@FUZZ
@given(
    name=st.one_of(TEXT, WORDY),
    subject=st.one_of(ONE_LINE, WORDY),
    text=TEXT,
    html=st.one_of(st.none(), TEXT),
    values=st.lists(st.one_of(ONE_LINE, WORDY), min_size=len(HEADER_NAMES)).map(
        lambda v: v[: len(HEADER_NAMES)]
    ),
    key=TEXT,
)
def test_any_content_round_trips(
    name: str, subject: str, text: str, html: str | None, values: list[str], key: str
) -> None:
    headers = dict(zip(HEADER_NAMES, values, strict=True))
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    message = Message(subject, text, html, key, headers, created)

    built = CHANNEL.build(Target("customer@example.com", name), message)

    assert built.data.isascii() and not built.smtputf8
    assert max(len(line) for line in lines(built.data)) <= 998
    email = built.parse()
    expected = {"From", "To", "Reply-To", "Subject", "Date", "Message-ID", *headers}
    expected |= {"MIME-Version", "Content-Type"}
    if html is None:
        expected.add("Content-Transfer-Encoding")
    assert set(email.keys()) == expected
    assert email["Date"].datetime == created
    assert email["Message-ID"] == built.message_id
    assert str(email["From"]) == "Opérations <ops@example.com>"

    raw = message_from_bytes(built.data, policy=compat32)
    expected_name = " ".join(name.split())
    [to] = email["To"].addresses
    assert to.addr_spec == "customer@example.com"
    if not expected_name:
        assert unfolded(raw, "To") == "customer@example.com"
    elif expected_name.isascii() and expected_name.isprintable() and "=?" not in name:
        assert to.display_name == expected_name  # an atom phrase or a quoted string
    else:
        assert rfc2047(unfolded(raw, "To")) == f"{expected_name} <customer@example.com>"
        if len(expected_name.encode()) <= 45:  # one encoded word: policy.default agrees
            assert to.display_name == expected_name

    for header, value in [("Subject", subject), *headers.items()]:
        if value.isascii() and value.isprintable():
            # Written by the channel: the text as given (read without leading blanks).
            assert unfolded(raw, header) == value.lstrip(" ")
        else:
            # Rendered by the standard library, as before: the same as it ever was.
            assert rfc2047(unfolded(raw, header)) == rfc2047(stdlib(header, value))

    parts = [email] if html is None else list(email.iter_parts())
    contents = [text] if html is None else [text, html]
    for part, content in zip(parts, contents, strict=True):
        assert part.get_content() == normalised(content)
        assert part["Content-Transfer-Encoding"] in ("7bit", "quoted-printable", "base64")


@FUZZ
@given(local=DOT_ATOM, domain=DOT_ATOM)
def test_the_simple_address_shortcut_agrees_with_the_parser(local: str, domain: str) -> None:
    address = f"{local}@{domain}"
    try:
        parsed = Address(addr_spec=address).addr_spec
    except ValueError:
        parsed = None
    if len(address) <= 254:
        assert _recipient(Target(address)) == parsed
