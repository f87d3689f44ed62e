"""``broadcaster channels test`` against real local servers: ntfy, a webhook receiver, SMTP.

The command builds the channel from a config file exactly as the daemon does, so each test
writes a config whose channels point at the fakes, runs the command with CliRunner, and
checks both what it printed and what the server received.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr
from typer.testing import CliRunner

from broadcaster.cli.channels import REDACTED, SUBJECT, app, redact, secret_values
from broadcaster.devsmtp import SmtpSink
from channels.ntfy import NtfySettings
from tests.fakes.control import Scripted
from tests.fakes.http import serve
from tests.fakes.ntfy import NtfyServer
from tests.fakes.webhook import WebhookReceiver

NTFY_TOKEN = "tk_clichannels0123456789abcdefgh"
HOOK_SECRET = "whsec-cli-channels-0123456789abcdef"
SMTP_PASSWORD = "smtp-password-never-shown"


@pytest.fixture(scope="module")
def ntfy_served() -> Iterator[tuple[NtfyServer, str]]:
    server = NtfyServer(tokens=[NTFY_TOKEN], anonymous_write=False)
    with serve(server.app) as url:
        yield server, url


@pytest.fixture
def ntfy(ntfy_served: tuple[NtfyServer, str]) -> Iterator[NtfyServer]:
    server = ntfy_served[0]
    server.faults.clear()
    yield server
    server.faults.clear()


@pytest.fixture(scope="module")
def hook_url() -> Iterator[str]:
    receiver = WebhookReceiver(HOOK_SECRET)
    receiver.gone.add("/hooks/removed")
    with serve(receiver.app) as url:
        yield url


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as server:
        yield server


@pytest.fixture
def config(
    tmp_path: Path, ntfy_served: tuple[NtfyServer, str], hook_url: str, sink: SmtpSink
) -> Path:
    """A config whose channels point at the local servers (and one that cannot be built)."""
    path = tmp_path / "config.yaml"
    path.write_text(
        f"""
database:
  url: sqlite+aiosqlite:///{tmp_path / "store.db"}
delivery:
  channels: [mail]
channels:
  mail:
    type: email
    host: 127.0.0.1
    port: {sink.port}
    security: none
    password: {SMTP_PASSWORD}
    from: "Example Transit <service@example.org>"
  ntfy:
    type: ntfy
    base_url: {ntfy_served[1]}
    token: {NTFY_TOKEN}
  hook:
    type: webhook
    url: {hook_url}/hooks/broadcaster
    secret: {HOOK_SECRET}
  gone-hook:
    type: webhook
    url: {hook_url}/hooks/removed
    secret: {HOOK_SECRET}
  push:
    type: fcm
    service_account_file: {tmp_path / "missing-service-account.json"}
""",
        encoding="utf-8",
    )
    return path


def invoke(config: Path, *args: str) -> Any:
    return CliRunner().invoke(app, ["test", *args, "--config", str(config)])


def assert_no_secrets(result: Any) -> None:
    for secret in (NTFY_TOKEN, HOOK_SECRET, SMTP_PASSWORD):
        assert secret not in result.output


def lines(text: str) -> dict[str, str]:
    """``key: value`` lines of a report, keyed by their key."""
    pairs = (line.strip().partition(": ") for line in text.splitlines() if ": " in line)
    return {key: value for key, _, value in pairs}


# Success ----------------------------------------------------------------------------------


def test_a_message_through_ntfy_prints_the_receipt(config: Path, ntfy: NtfyServer) -> None:
    before = len(ntfy.published)
    result = invoke(config, "ntfy", "--to", "ops-alerts")

    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    [published] = ntfy.published[before:]
    assert published.topic == "ops-alerts"
    assert published.user is not None  # the configured token was accepted
    assert published.message["title"] == SUBJECT
    assert published.message["message"].startswith("This is a test message from Broadcaster")
    report = lines(result.stdout)
    assert result.stdout.startswith("sent: channel 'ntfy' (ntfy) accepted the test message\n")
    assert report["provider message id"] == published.message["id"]
    assert report["idempotency key"].startswith("test-")
    assert report["idempotency key"] == published.message["sequence_id"]
    assert "ops-alerts" not in result.output  # addresses are not echoed
    assert_no_secrets(result)


def test_an_email_through_smtp_prints_the_message_id(config: Path, sink: SmtpSink) -> None:
    before = len(sink.messages)
    result = invoke(config, "mail", "--to", "ops@example.org")

    assert result.exit_code == 0, result.output
    [mail] = sink.messages[before:]
    assert mail.recipients == ("ops@example.org",)
    assert mail.message["Subject"] == SUBJECT
    assert "No action is needed." in mail.message.get_content()
    assert lines(result.stdout)["provider message id"] == mail.message["Message-ID"]
    assert_no_secrets(result)


# Delivery errors: exit 1 ------------------------------------------------------------------


def test_a_gone_fixed_webhook_url_is_blamed_not_the_contact_point(config: Path) -> None:
    result = invoke(config, "gone-hook", "--to", "acct-1")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(
        "error: channel 'gone-hook' (webhook) did not deliver the test message\n"
    )
    report = lines(result.stderr)
    assert "answered 410" in report["reason"] and report["reason"].endswith("(check url)")
    assert report["retryable"].startswith("no ")
    assert report["retry after"] == "not given"
    assert report["contact point"] == "unchanged"  # the url is gone, not the customer's hook
    assert report["idempotency key"].startswith("test-")
    assert_no_secrets(result)


def test_a_throttled_ntfy_reports_retry_after(config: Path, ntfy: NtfyServer) -> None:
    ntfy.faults.push(Scripted(429, headers={"Retry-After": "7"}))
    result = invoke(config, "ntfy", "--to", "ops-alerts")

    assert result.exit_code == 1
    report = lines(result.stderr)
    assert report["reason"].startswith("ntfy 429 (42901)")
    assert report["retryable"].startswith("yes ")
    assert report["retry after"] == "7s"
    assert report["contact point"] == "unchanged"


def test_a_secret_echoed_by_the_server_is_redacted(config: Path, ntfy: NtfyServer) -> None:
    """A proxy that echoes the request in a plain-text error: the channel describes such a
    body instead of quoting it, so the token never reaches the reason."""
    echo = f"bad request: Authorization: Bearer {NTFY_TOKEN}".encode()
    ntfy.faults.push(Scripted(400, body=echo))
    result = invoke(config, "ntfy", "--to", "ops-alerts")

    assert result.exit_code == 1
    assert lines(result.stderr)["reason"] == f"ntfy 400: untyped body, {len(echo)} bytes, not shown"
    assert_no_secrets(result)


# Configuration errors: exit 2 -------------------------------------------------------------


def test_an_unknown_channel_lists_the_configured_ones(config: Path) -> None:
    result = invoke(config, "sms", "--to", "+15005550006")

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        "error: no channel 'sms' in the configuration "
        "(configured: gone-hook, hook, mail, ntfy, push)\n"
    )


def test_a_channel_that_cannot_be_built_is_a_configuration_error(config: Path) -> None:
    result = invoke(config, "push", "--to", "token")

    assert result.exit_code == 2
    assert result.stderr.startswith("error: channel 'push' (fcm) cannot be built: ")
    assert "cannot read service account file" in result.stderr


def test_an_invalid_config_exits_2_with_its_problems(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("channels:\n  hook:\n    type: webhook\n    secret: short\n", encoding="utf-8")
    result = invoke(path, "hook", "--to", "acct-1")

    assert result.exit_code == 2
    assert "error: invalid configuration" in result.stderr
    assert "channels.hook.secret" in result.stderr
    assert "short" not in result.output  # the rejected secret is not shown


def test_the_address_is_required(config: Path) -> None:
    result = invoke(config, "ntfy")
    assert result.exit_code == 2
    assert "--to" in result.output


# Redaction --------------------------------------------------------------------------------


class _Inner(BaseModel):
    key: SecretStr
    tiny: SecretStr


class _Outer(BaseModel):
    token: SecretStr | None
    inner: _Inner
    listed: list[SecretStr]
    mapped: dict[str, SecretStr]
    plain: str


def test_secret_values_finds_every_secret_longest_first() -> None:
    model = _Outer.model_validate(
        {
            "token": "abcd1234",
            "inner": {"key": "abcd1234-and-more", "tiny": "ab"},
            "listed": ["list-secret"],
            "mapped": {"x": "map-secret"},
            "plain": "not-a-secret",
        }
    )
    found = secret_values(model)
    assert found == ["abcd1234-and-more", "list-secret", "map-secret", "abcd1234"]
    assert redact("k=abcd1234-and-more t=abcd1234 p=not-a-secret", found) == (
        f"k={REDACTED} t={REDACTED} p=not-a-secret"
    )


def test_channel_settings_secrets_are_found() -> None:
    settings = NtfySettings(username="ops", password=SecretStr("hunter2-but-longer"))
    assert secret_values(settings) == ["hunter2-but-longer"]
