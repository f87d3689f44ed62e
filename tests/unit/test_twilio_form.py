"""The Twilio channel's form encoding (channels.twilio_sms.form_urlencode) against the
standard library's, which it replaces on the send path."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode

from hypothesis import given
from hypothesis import strategies as st

from channels.twilio_sms import form_urlencode

# Any text the UTF-8 codec takes (no lone surrogates): SMS bodies carry emoji, accents,
# line breaks, and the characters forms must escape (& = + % # ?).
TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
VALUES = st.one_of(TEXT, st.lists(TEXT, max_size=3), st.integers(), st.booleans())


def _reference(values: dict[str, object]) -> str:
    as_text = {
        key: [str(v) for v in value] if isinstance(value, list) else str(value)
        for key, value in values.items()
    }
    return urlencode(as_text, doseq=True)


@given(st.dictionaries(TEXT, VALUES, max_size=6))
def test_matches_urlencode(values: dict[str, object]) -> None:
    assert form_urlencode(values) == _reference(values)


def test_an_sms_form_reads_back() -> None:
    values: dict[str, object] = {
        "To": "+15005550006",
        "Body": "Ligne 1 : trafic interrompu 🚧 & reprise ≈ 14:30 (100 % des trains)\nhttps://x.example/u?a=1&b=2",
        "StatusCallback": "https://hooks.example/twilio?delivery=delivery-7",
        "MediaUrl": ["https://a.example/1.png", "https://a.example/2.png"],
    }
    encoded = form_urlencode(values)
    assert encoded.isascii()
    assert "%F0%9F%9A%A7" in encoded  # the emoji's UTF-8 bytes, upper-case hex
    assert "Body=Ligne+1+%3A+trafic" in encoded  # spaces as +, ':' escaped
    decoded = parse_qs(encoded, keep_blank_values=True)
    assert decoded == {
        key: value if isinstance(value, list) else [value] for key, value in values.items()
    }


def test_nothing_to_encode() -> None:
    assert form_urlencode({}) == ""
    assert form_urlencode({"Body": ""}) == "Body="
