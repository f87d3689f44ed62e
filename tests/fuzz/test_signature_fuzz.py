"""Forged and replayed signatures are refused, on both signed inbound paths.

- Signed JSON webhooks (``broadcaster.intake.signed_webhook.verify``): HMAC-SHA256 over
  ``timestamp.body`` with a five-minute replay window. Any change to the body, the secret or
  the timestamp, any replay outside the window, and any header soup fail with
  :class:`SignatureError` and nothing else.
- Twilio callbacks (``channels.twilio_sms.verify_twilio_signature``): HMAC-SHA1 over the URL
  and the sorted form fields. Any change to the URL, a field, the token, and any string as a
  signature, give ``False``; it never raises. Twilio signs no timestamp, so an identical
  replay verifies by design: what it carries (a status moving forward only, an opt-out) is
  idempotent, which tests/integration/test_web_hooks.py checks.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from broadcaster.intake.signed_webhook import (
    DEFAULT_TOLERANCE,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    sign,
    verify,
)
from channels.twilio_sms import verify_twilio_signature
from tests.fakes.twilio import twilio_signature

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
STAMP = int(NOW.timestamp())

secrets = st.text(min_size=1, max_size=40) | st.binary(min_size=1, max_size=40)
bodies = st.binary(max_size=512)
within = st.integers(
    -int(DEFAULT_TOLERANCE.total_seconds()), int(DEFAULT_TOLERANCE.total_seconds())
)


# Signed webhooks -------------------------------------------------------------------------


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


@FUZZ
@given(secret=secrets, body=bodies, skew=within)
def test_a_fresh_signature_verifies(secret: str | bytes, body: bytes, skew: int) -> None:
    verify(secret, sign(secret, body, STAMP + skew), body, NOW)


@FUZZ
@given(secret=secrets, body=bodies, skew=within, data=st.data())
def test_any_change_is_refused(
    secret: str | bytes, body: bytes, skew: int, data: st.DataObject
) -> None:
    headers = sign(secret, body, STAMP + skew)
    what = data.draw(st.sampled_from(["body", "secret", "timestamp", "signature"]))
    other_secret, other_body = secret, body
    if what == "body":
        other_body = data.draw(bodies.filter(lambda b: b != body))
    elif what == "secret":
        other_secret = data.draw(secrets)
        assume(_key(other_secret) != _key(secret))
    elif what == "timestamp":  # the old signature, a refreshed timestamp
        moved = data.draw(within.filter(lambda s: s != skew))
        headers[TIMESTAMP_HEADER] = str(STAMP + moved)
    else:
        digits = list(headers[SIGNATURE_HEADER][3:])
        at = data.draw(st.integers(0, len(digits) - 1))
        digits[at] = data.draw(
            st.sampled_from("0123456789abcdef").filter(lambda c: c != digits[at])
        )
        headers[SIGNATURE_HEADER] = "v1=" + "".join(digits)
    with pytest.raises(SignatureError):
        verify(other_secret, headers, other_body, NOW)


@FUZZ
@given(
    secret=secrets, body=bodies, age=st.integers(int(DEFAULT_TOLERANCE.total_seconds()) + 1, 10**9)
)
def test_a_replay_outside_the_window_is_refused(secret: str | bytes, body: bytes, age: int) -> None:
    headers = sign(secret, body, STAMP - age)
    with pytest.raises(SignatureError, match="replay window"):
        verify(secret, headers, body, NOW)
    later = sign(secret, body, STAMP + age)  # signed "in the future": refused alike
    with pytest.raises(SignatureError, match="replay window"):
        verify(secret, later, body, NOW)


header_values = st.text(max_size=80) | st.sampled_from(
    [str(STAMP), "v1=" + "0" * 64, "v1=" + "g" * 64, " " + str(STAMP), "0" * 13, "-1", "1e9"]
)


@FUZZ
@given(
    headers=st.dictionaries(
        st.sampled_from([TIMESTAMP_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER.lower(), "X-Other"]),
        header_values,
        max_size=4,
    ),
    body=bodies,
)
def test_header_soup_is_refused_with_signature_error_only(
    headers: dict[str, str], body: bytes
) -> None:
    with pytest.raises(SignatureError):
        verify("a-secret", headers, body, NOW)


# Twilio -----------------------------------------------------------------------------------

tokens = st.text("0123456789abcdef", min_size=32, max_size=32)
fields = st.dictionaries(
    st.sampled_from(["MessageSid", "MessageStatus", "To", "From", "Body", "ErrorCode", "X"]),
    st.text(max_size=40),
    max_size=6,
)
urls = st.builds(
    lambda path, query: (
        f"https://hooks.example.org/{path}" + (f"?delivery={query}" if query else "")
    ),
    st.text("abcdefghijklmnopqrstuvwxyz/-", max_size=30),
    st.text("abcdef0123456789-", max_size=20),
)


@FUZZ
@given(token=tokens, url=urls, params=fields)
def test_twilio_a_true_signature_verifies(token: str, url: str, params: dict[str, str]) -> None:
    assert verify_twilio_signature(token, url, params, twilio_signature(token, url, params))


@FUZZ
@given(token=tokens, url=urls, params=fields, data=st.data())
def test_twilio_any_change_is_refused(
    token: str, url: str, params: dict[str, str], data: st.DataObject
) -> None:
    signature = twilio_signature(token, url, params)
    what = data.draw(st.sampled_from(["token", "url", "field", "extra"]))
    if what == "token":
        other = data.draw(tokens.filter(lambda t: t != token))
        assert not verify_twilio_signature(other, url, params, signature)
    elif what == "url":
        other_url = data.draw(urls.filter(lambda u: u != url))
        assert not verify_twilio_signature(token, other_url, params, signature)
    elif what == "field" and params:
        name = data.draw(st.sampled_from(sorted(params)))
        changed = {
            **params,
            name: data.draw(st.text(max_size=40).filter(lambda v: v != params[name])),
        }
        assume(twilio_signature(token, url, changed) != signature)  # "ab"+"" == "a"+"b"
        assert not verify_twilio_signature(token, url, changed, signature)
    else:
        extra = {**params, "Injected": data.draw(st.text(min_size=1, max_size=10))}
        assert not verify_twilio_signature(token, url, extra, signature)


@FUZZ
@given(token=tokens, url=urls, params=fields, signature=st.text(max_size=60) | st.none())
def test_twilio_any_string_as_signature_is_false_not_an_error(
    token: str, url: str, params: dict[str, str], signature: str | None
) -> None:
    assume(signature != twilio_signature(token, url, params))
    assert verify_twilio_signature(token, url, params, signature) is False
