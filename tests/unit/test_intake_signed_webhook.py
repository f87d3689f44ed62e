"""Signed JSON webhooks: HMAC verification with a replay window, and the payload schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broadcaster.intake import FeedError, SourceMapping
from broadcaster.intake.signed_webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    parse,
    sign,
    signature,
    verify,
)

OURS = Path(__file__).resolve().parents[1] / "fixtures" / "intake"
NOW = datetime(2026, 1, 5, 1, 10, 30, tzinfo=UTC)
STAMP = int(NOW.timestamp())
SECRET = "s3cret-shared-with-the-sender"
BODY = (OURS / "webhook-incident.json").read_bytes()


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    # Computed independently: printf '1767575430.{}' | openssl dgst -sha256 -hmac key
    assert signature("key", b"{}", 1767575430) == (
        "c82a2e28aca1e3a344162d2f930876a15a8c531e355facc50a172f46e63c6451"
    )
    headers = sign(SECRET, BODY, STAMP)
    assert headers[TIMESTAMP_HEADER] == str(STAMP)
    assert headers[SIGNATURE_HEADER] == f"v1={signature(SECRET, BODY, STAMP)}"


def test_a_fresh_valid_signature_passes() -> None:
    verify(SECRET, sign(SECRET, BODY, STAMP), BODY, NOW)
    verify(SECRET.encode(), sign(SECRET, BODY, STAMP - 299), BODY, NOW)
    lower = {k.lower(): v for k, v in sign(SECRET, BODY, STAMP).items()}
    verify(SECRET, lower, BODY, NOW)  # header names are case-insensitive


def test_rotation_accepts_either_secret_and_several_signatures() -> None:
    verify(["new-secret", SECRET], sign(SECRET, BODY, STAMP), BODY, NOW)
    headers = {
        TIMESTAMP_HEADER: str(STAMP),
        SIGNATURE_HEADER: f"v0=abc, v1={'0' * 64}, v1={signature(SECRET, BODY, STAMP)}",
    }
    verify(SECRET, headers, BODY, NOW)


def _reason(headers: dict[str, str], body: bytes = BODY, secret: Any = SECRET) -> str:
    with pytest.raises(SignatureError) as caught:
        verify(secret, headers, body, NOW)
    return caught.value.reason


def test_refusals_say_why() -> None:
    good = sign(SECRET, BODY, STAMP)
    assert _reason(good, secret="wrong") == "signature mismatch"
    assert _reason(good, body=BODY + b" ") == "signature mismatch"
    assert _reason(sign(SECRET, BODY, STAMP - 301)) == "timestamp outside the replay window"
    assert _reason(sign(SECRET, BODY, STAMP + 301)) == "timestamp outside the replay window"
    assert _reason({SIGNATURE_HEADER: good[SIGNATURE_HEADER]}) == (
        f"missing {TIMESTAMP_HEADER} header"
    )
    assert _reason({TIMESTAMP_HEADER: str(STAMP)}) == f"missing {SIGNATURE_HEADER} header"
    assert _reason({**good, TIMESTAMP_HEADER: "-5"}).startswith("malformed")
    assert _reason({**good, TIMESTAMP_HEADER: "1e9"}).startswith("malformed")
    assert _reason({**good, SIGNATURE_HEADER: "sha256=abc"}).startswith("malformed")
    assert _reason({**good, SIGNATURE_HEADER: "v1=xyz"}).startswith("malformed")


def test_the_timestamp_is_signed_too() -> None:
    headers = sign(SECRET, BODY, STAMP - 1000)
    headers[TIMESTAMP_HEADER] = str(STAMP)  # a replay with a refreshed timestamp
    assert _reason(headers) == "signature mismatch"


def test_configuration_errors_are_not_signature_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        verify("", sign("x", BODY, STAMP), BODY, NOW)
    with pytest.raises(ValueError, match="no webhook secret"):
        verify([], sign("x", BODY, STAMP), BODY, NOW)


# -- payload ---------------------------------------------------------------------------------


def _body(**changes: Any) -> bytes:
    body: dict[str, Any] = json.loads(BODY)
    body.update(changes)
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def test_fixture_payload() -> None:
    mapping = SourceMapping(components={"bus-n14": "route-n14"})
    (event,) = parse(BODY, mapping, source="ops", now=NOW).events
    assert event.idempotency_key == ("ops", "ops-2026-0105-07", "3")
    assert (event.status, event.severity) == ("identified", "major")
    assert event.title == "Night bus N14 diverted"
    assert event.components == ("route-n14",)  # renamed by the mapping
    assert event.regions == ("central",)  # unmapped names are ours already: kept
    assert event.labels == {"team": "night-network"}
    assert event.expires_at == datetime(2026, 1, 5, 5, 0, tzinfo=UTC)
    assert event.languages["fr"][0] == "Bus de nuit N14 dévié"
    assert event.url == "https://status.transit.example/incidents/ops-2026-0105-07"


def test_version_defaults_to_a_hash_of_the_body() -> None:
    first = parse(_body(version=None), SourceMapping(), source="ops", now=NOW).events[0]
    again = parse(_body(version=None), SourceMapping(), source="ops", now=NOW).events[0]
    edited = parse(_body(version=None, message="New text"), SourceMapping(), source="o", now=NOW)
    assert first.version == again.version
    assert first.version != edited.events[0].version


def test_severity_defaults_from_the_mapping() -> None:
    mapping = SourceMapping(default_severity="critical")
    (event,) = parse(_body(severity=None), mapping, source="o", now=NOW).events
    assert event.severity == "critical"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"status": "closed"}, "status: Input should be 'investigating', 'identified'"),
        ({"severity": "urgent"}, "severity: Input should be 'minor', 'major' or 'critical'"),
        ({"title": ""}, "title: String should have at least 1 character"),
        ({"id": 12}, "id: Input should be a valid string"),
        ({"starts_at": "2026-01-05T00:40:00"}, "starts_at: Input should have timezone info"),
        ({"url": "javascript:alert(1)"}, "url: Value error, must be an absolute http(s) URL"),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"components": "bus"}, "components: Input should be a valid list"),
        ({"translations": {"fr": {"title": "x"}}}, "translations.fr.message: Field required"),
    ],
)
def test_schema_errors_are_a_skip_naming_the_field(changes: dict[str, Any], reason: str) -> None:
    result = parse(_body(**changes), SourceMapping(), source="ops", now=NOW)
    assert result.events == []
    assert result.skipped[0].reason.startswith(reason)


def test_missing_fields_are_all_listed() -> None:
    result = parse(b"{}", SourceMapping(), source="ops", now=NOW)
    assert result.skipped[0].reason == (
        "id: Field required; title: Field required; message: Field required; status: Field required"
    )
    assert result.skipped[0].item_id is None


@pytest.mark.parametrize("data", [b"[]", b"null", b"", b"{", b'{"id": "x"' + b"}" * 3])
def test_bodies_that_are_not_objects_raise_feed_error(data: bytes) -> None:
    with pytest.raises(FeedError):
        parse(data, SourceMapping(), source="ops", now=NOW)
