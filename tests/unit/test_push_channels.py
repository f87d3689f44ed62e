"""The pure parts of the FCM and APNs channels: settings, key loading, error tables, text.

Everything that needs no server; the HTTP behaviour is in tests/integration/test_fcm.py
and tests/integration/test_apns.py.
"""

from __future__ import annotations

import re
import traceback
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from channels import http_common
from channels.apns import (
    PRODUCTION_URL,
    SANDBOX_URL,
    ApnsChannel,
    ApnsSettings,
    apns_error,
    apns_id_for,
)
from channels.base import (
    Channel,
    ContactPointState,
    DeliveryError,
    Message,
    Target,
    push_replaces,
    push_thread,
)
from channels.fcm import PAYLOAD_LIMIT, FcmChannel, FcmSettings
from channels.fcm_errors import fcm_error, token_error
from channels.http_common import parse_retry_after
from channels.push_common import shorten
from channels.redact import REDACTED
from tests.fakes.fcm import INVALID_TOKEN_MESSAGE, error_body
from tests.fakes.mobile_push import make_p8_key, make_service_account

DISABLED = ContactPointState.DISABLED

# --- FCM --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kwargs", "retryable", "contact_point"),
    [
        (400, {"field_violation": ("message.token", "bad")}, False, DISABLED),
        (400, {"fcm_code": "", "message": INVALID_TOKEN_MESSAGE}, False, DISABLED),
        (400, {"field_violation": ("message.data", "bad")}, False, None),
        (401, {"fcm_code": "THIRD_PARTY_AUTH_ERROR"}, False, None),
        (403, {"fcm_code": "SENDER_ID_MISMATCH"}, False, None),
        (404, {"fcm_code": ""}, False, None),  # NOT_FOUND alone: a wrong project_id
        (404, {"fcm_code": "", "message": "Project not found"}, False, None),
        (404, {}, False, DISABLED),  # errorCode UNREGISTERED
        (400, {"fcm_code": "UNREGISTERED"}, False, DISABLED),  # the code decides, not the status
        (408, {}, True, None),
        (429, {}, True, None),
        (500, {}, True, None),
        (503, {}, True, None),
    ],
)
def test_fcm_error_reads_the_details(
    status: int, kwargs: dict[str, Any], retryable: bool, contact_point: ContactPointState | None
) -> None:
    error = fcm_error(status, error_body(status, **kwargs))
    assert (error.retryable, error.contact_point) == (retryable, contact_point)


def test_fcm_error_without_a_google_body_never_disables() -> None:
    error = fcm_error(404, b"<html>Not Found</html>", content_type="text/html; charset=utf-8")
    assert (error.retryable, error.contact_point) == (False, None)
    assert error.reason == (
        "FCM 404 without a Google error (text/html body, 22 bytes, not shown)"
        " (configuration: check project_id and base_url)"
    )


def test_fcm_error_quotes_google_fields_cut_short_and_redacted() -> None:
    access = "ya29.a-long-access-token-0123456789"
    said = f"echo: Authorization: Bearer {access} " + "x" * 300
    error = fcm_error(500, error_body(500, message=said), secrets=[access])
    assert access not in error.reason
    assert error.reason.startswith(f"FCM 500 INTERNAL: echo: Authorization: Bearer {REDACTED} xxx")
    assert error.reason.endswith("x…") and len(error.reason) < 250


def test_token_error_quotes_oauth_fields_only() -> None:
    assertion = "eyJhbGciOiJSUzI1NiJ9.claims.signature"
    described = httpx.Response(400, json={"error": "invalid_grant", "error_description": assertion})
    error = token_error(described, None, secrets=(assertion,))
    assert error.reason == (
        f"OAuth2 token exchange refused: HTTP 400 invalid_grant: {REDACTED}"
        " (check the service account)"
    )
    proxy = httpx.Response(502, text=f"assertion={assertion}", headers={"Retry-After": "4"})
    error = token_error(proxy, 4.0, secrets=())
    assert (error.retryable, error.retry_after) == (True, 4.0)
    assert error.reason == (
        "OAuth2 token exchange refused: HTTP 502 (text/plain body, 47 bytes, not shown)"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("12", 12.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("Tue, 14 Nov 2023 22:15:20 GMT", 100.0),
        ("Tue, 14 Nov 2023 22:11:00 GMT", 0.0),
        ("soon", None),
        ("nan", None),
        ("1e400", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=1_700_000_020.0) == expected
    assert http_common.parse_retry_after(value, now=1_700_000_020.0) == expected  # for apns


@pytest.mark.parametrize("ttl", [-1, 2_419_201])
def test_fcm_ttl_is_at_most_fcm_s_four_weeks(ttl: int) -> None:
    with pytest.raises(ValidationError, match="ttl"):
        FcmSettings(service_account_json=SecretStr("{}"), ttl=ttl)
    assert FcmSettings(service_account_json=SecretStr("{}")).ttl == 3600


@pytest.mark.parametrize(
    ("subject", "text"),
    [
        ("運休のお知らせ" * 100, "止まっています。再開は未定です。" * 100),
        ("🚆" * 500, "😀 " * 2000),
        ("Line 4", "\x01" * 5000),  # escaped in JSON: six bytes a character
    ],
)
def test_fcm_payload_fits_fcm_s_4096_bytes(subject: str, text: str) -> None:
    """A thousand characters of CJK or emoji are 3,000 to 4,000 bytes of UTF-8: the body
    is cut further, and the title to 200 characters, until the payload fits."""
    account = make_service_account("p").json("http://127.0.0.1:9/token")
    channel = FcmChannel("fcm", FcmSettings(service_account_json=SecretStr(account)))
    built = channel.build(Target("token"), Message(subject, text, idempotency_key="d-1"))

    sent = built["message"]
    payload = {"notification": sent["notification"], "data": sent["data"]}
    assert len(http_common.json_bytes(payload)) <= PAYLOAD_LIMIT
    title, body = sent["notification"]["title"], sent["notification"]["body"]
    assert len(title) <= 200 and subject.startswith(title.removesuffix("…"))
    assert text.strip().startswith(body.removesuffix("…"))
    assert len(http_common.json_bytes(body)) > PAYLOAD_LIMIT // 3  # cut to fit, not to nothing
    assert sent["data"] == {"delivery": "d-1"}


def test_an_incidents_fcm_payload_fits_with_its_link_and_thread_as_ios_gets_it() -> None:
    """On iOS FCM adds the APNs payload's aps (the thread-id) to the notification and the
    data: the three together fit."""
    account = make_service_account("p").json("http://127.0.0.1:9/token")
    channel = FcmChannel("fcm", FcmSettings(service_account_json=SecretStr(account)))
    link = "https://status.example.org/incidents/7?" + "x" * 900
    message = Message(
        "運休のお知らせ" * 100,
        "止まっています。再開は未定です。" * 100,
        idempotency_key="d-1",
        headers={"X-Broadcaster-Link": link, "X-Broadcaster-Kind": "no_news"},
        thread="incident-7",
    )
    sent = channel.build(Target("token"), message)["message"]

    ios = {"notification": sent["notification"], "data": sent["data"], **sent["apns"]["payload"]}
    assert len(http_common.json_bytes(ios)) <= PAYLOAD_LIMIT
    assert sent["data"]["url"] == link
    assert len(http_common.json_bytes(sent["notification"]["body"])) > PAYLOAD_LIMIT // 4


def test_fcm_settings_need_exactly_one_credential(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        FcmSettings()
    with pytest.raises(ValidationError, match="exactly one"):
        FcmSettings(service_account_file=tmp_path / "a.json", service_account_json=SecretStr("{}"))


@pytest.mark.parametrize(
    "document",
    [
        '{"client_email": "x", "private_key": "-----BEGIN PRIVATE KEY-----\\nAAAA\\n"',
        '{"client_email": "x", "private_key": "-----BEGIN PRIVATE KEY-----\\nAAAA\\n"}',
        "[]",
        "{}",
    ],
)
def test_a_broken_service_account_fails_at_construction_without_echoing_it(document: str) -> None:
    settings = FcmSettings(service_account_json=SecretStr(document), project_id="p")
    with pytest.raises(ValueError, match="fcm channel 'push'") as info:
        FcmChannel("push", settings)
    assert "AAAA" not in "".join(traceback.format_exception(info.value))


def test_a_missing_service_account_file_fails_at_construction(tmp_path: Path) -> None:
    settings = FcmSettings(service_account_file=tmp_path / "missing.json")
    with pytest.raises(ValueError, match="cannot read service account file"):
        FcmChannel("push", settings)


# --- APNs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason", "retryable", "contact_point"),
    [
        (400, "BadDeviceToken", False, DISABLED),
        (400, "DeviceTokenNotForTopic", False, DISABLED),
        (400, "BadTopic", False, None),
        (400, "", False, None),
        (403, "ExpiredProviderToken", False, None),
        (403, "InvalidProviderToken", False, None),
        (410, "Unregistered", False, DISABLED),
        (410, "ExpiredToken", False, DISABLED),
        (413, "PayloadTooLarge", False, None),
        (429, "TooManyProviderTokenUpdates", True, None),
        (429, "TooManyRequests", True, None),
        (500, "InternalServerError", True, None),
        (503, "ServiceUnavailable", True, None),
        (503, "Shutdown", True, None),
    ],
)
def test_apns_error_table(
    status: int, reason: str, retryable: bool, contact_point: ContactPointState | None
) -> None:
    error = apns_error(status, reason, retry_after=5.0)
    assert (error.retryable, error.contact_point) == (retryable, contact_point)
    assert error.retry_after == (5.0 if retryable else None)
    assert error.reason.startswith(f"APNs {status} {reason or 'no reason'}")


@pytest.mark.parametrize("reason", ["BadDeviceToken", "DeviceTokenNotForTopic"])
def test_apns_keeps_a_token_it_may_blame_on_its_own_settings(reason: str) -> None:
    error = apns_error(400, reason, proven=False)
    assert (error.retryable, error.contact_point) == (False, None)
    assert error.reason.endswith(
        "(token kept: no notification accepted yet; check topic and environment)"
    )


def test_environment_picks_the_base_url() -> None:
    common: dict[str, Any] = {"team_id": "T", "key_id": "K", "private_key": SecretStr("x")}
    assert ApnsSettings(topic="x", **common).url == PRODUCTION_URL
    assert ApnsSettings(topic="x", environment="sandbox", **common).url == SANDBOX_URL
    override = ApnsSettings(topic="x", base_url="https://127.0.0.1:9/", **common)
    assert override.url == "https://127.0.0.1:9"


def test_apns_id_is_stable_per_delivery() -> None:
    assert apns_id_for("d-1") == apns_id_for("d-1") != apns_id_for("d-2")
    assert apns_id_for("") != apns_id_for("")
    assert str(uuid.UUID(apns_id_for("d-1"))) == apns_id_for("d-1")


def test_apns_settings_need_exactly_one_key(tmp_path: Path) -> None:
    common: dict[str, Any] = {"team_id": "T", "key_id": "K", "topic": "x"}
    with pytest.raises(ValidationError, match="exactly one"):
        ApnsSettings(**common)
    with pytest.raises(ValidationError, match="exactly one"):
        ApnsSettings(private_key_file=tmp_path / "k.p8", private_key=SecretStr("x"), **common)


def _p384_pem() -> str:
    key = ec.generate_private_key(ec.SECP384R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.mark.parametrize("pem", ["not a key AAAA", _p384_pem()])
def test_a_wrong_key_fails_at_construction_without_echoing_it(pem: str) -> None:
    settings = ApnsSettings(team_id="T", key_id="K", private_key=SecretStr(pem), topic="x")
    with pytest.raises(ValueError, match="apns channel 'apns'") as info:
        ApnsChannel("apns", settings)
    shown = "".join(traceback.format_exception(info.value))
    assert all(line not in shown for line in pem.splitlines() if "-----" not in line)


def test_a_missing_key_file_fails_at_construction(tmp_path: Path) -> None:
    settings = ApnsSettings(team_id="T", key_id="K", private_key_file=tmp_path / "k.p8", topic="x")
    with pytest.raises(ValueError, match="cannot read private key file"):
        ApnsChannel("apns", settings)


async def test_closed_channels_refuse_to_send_retryably() -> None:
    apns_settings = ApnsSettings(
        team_id="T", key_id="K", private_key=SecretStr(make_p8_key().pem), topic="x"
    )
    account = make_service_account("p").json("http://127.0.0.1:9/token")
    fcm_settings = FcmSettings(service_account_json=SecretStr(account))
    channels: list[Channel] = [ApnsChannel("apns", apns_settings), FcmChannel("fcm", fcm_settings)]
    assert [repr(c) for c in channels] == [
        "ApnsChannel(name='apns', topic='x')",
        "FcmChannel(name='fcm', project='p')",
    ]
    for channel in channels:
        await channel.aclose()
        with pytest.raises(DeliveryError, match="closed") as info:
            await channel.send(Target("ab" * 32), Message(subject="s", text="t"))
        assert info.value.retryable


# --- text -------------------------------------------------------------------------------------


def test_shorten_keeps_whole_sentences_or_cuts_at_a_word() -> None:
    assert shorten("One. Two. Three.", 10) == "One. Two."
    assert shorten("Short.", 10) == "Short."
    assert shorten("a" * 30, 10) == "a" * 9 + "…"
    assert shorten("word " * 10, 12) == "word word…"
    assert shorten("止まっています。再開は未定です。", 10) == "止まっています。"
    assert shorten("Version 3.14 is out today and more", 12) == "Version…"


@given(st.text(), st.integers(min_value=1, max_value=200))
def test_shorten_fits_and_is_a_prefix(text: str, limit: int) -> None:
    result = shorten(text, limit)
    stripped = text.strip()
    assert len(result) <= limit
    if len(stripped) <= limit:
        assert result == stripped
    else:
        assert stripped.startswith(result.removesuffix("…"))


# --- an incident's grouping -------------------------------------------------------------------


def kind_of(kind: str, thread: str = "incident-7") -> Message:
    return Message(subject="s", text="t", thread=thread, headers={"X-Broadcaster-Kind": kind})


@pytest.mark.parametrize(
    ("kind", "replaces"),
    [
        ("first", None),
        ("update", None),
        ("no_news", "incident-7-wait"),
        ("resolution", "incident-7-wait"),
        ("followup_task", None),
    ],
)
def test_only_no_news_and_the_resolution_replace_an_earlier_notification(
    kind: str, replaces: str | None
) -> None:
    assert push_thread(kind_of(kind)) == "incident-7"
    assert push_replaces(kind_of(kind)) == replaces


def test_a_message_outside_an_incident_is_neither_grouped_nor_replaced() -> None:
    message = Message(subject="s", text="t", headers={"X-Broadcaster-Kind": "no_news"})
    assert push_thread(message) is None
    assert push_replaces(message) is None


@given(st.text(min_size=1), st.text(min_size=1), st.sampled_from([32, 64]))
def test_push_ids_fit_their_header_and_tell_threads_apart(one: str, two: str, limit: int) -> None:
    """Within ``limit`` (APNs' 64 bytes for a collapse id, RFC 8030's 32 for a Topic), in
    the base64url alphabet every push header takes, and distinct for distinct threads."""
    ids = [push_replaces(kind_of("no_news", thread), limit) for thread in (one, two)]
    for value in ids:
        assert value is not None
        assert len(value.encode()) <= limit
        assert re.fullmatch(r"[A-Za-z0-9_-]+", value)
    assert (ids[0] == ids[1]) == (one == two)
