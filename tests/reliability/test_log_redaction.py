"""Secrets, phone numbers and email addresses never reach the logs unless asked for.

Three levels: the redactor on its own (every shape it promises to hide, and nothing hidden
when a kind is turned off); the dispatcher logging a customer's refused email address and
invalid phone number (the providers quote them in their errors); and the daemon as a process,
whose ``log.redact`` block decides.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broadcaster.clock import FakeClock
from broadcaster.config.settings import Settings
from broadcaster.devsmtp import SmtpSink
from broadcaster.engine import Engine
from broadcaster.incidents import service
from broadcaster.logs import (
    REDACTED,
    JsonFormatter,
    Redaction,
    Redactor,
    secret_values,
    set_redaction,
)
from broadcaster.store import Database
from channels.base import Channel
from channels.email import EmailChannel, EmailSettings
from channels.twilio_sms import TwilioSettings, TwilioSmsChannel
from tests.e2e.harness import Daemon, cli, wait_until, write_config
from tests.fakes.http import serve
from tests.fakes.twilio import FakeTwilio, new_sid
from tests.reliability.common import START, add_customers, address

OFF = Redaction(secrets=False, phones=False, emails=False)

# The redactor ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "hidden", "kept"),
    [
        ("SMTP 550 for jane.doe+x@mail.example.org: no", "jane.doe+x@mail.example.org", "j…@….org"),
        ("The 'To' number +31612345678 is not valid", "+31612345678", "+…78"),
        ("call +1 (415) 555-0123 now", "415", "+…23"),
        ("dialled 0031612345678 from abroad", "0031612345678", "+…78"),
        ("GET /lookup?to=%2B31612345678&x=1", "31612345678", "to=+…78&x=1"),
        ("GET /lookup?email=anna%40example.nl", "anna%40example", "email=a…@….nl"),
        ("Authorization: Bearer abcdef0123456789", "abcdef0123456789", "Bearer [redacted]"),
        ("header Basic dXNlcjpwYXNz", "dXNlcjpwYXNz", "Basic [redacted]"),
        ("jwt eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJ0ZWFtIn0.c2lnbmF0dXJl", "eyJhbGci", REDACTED),
        ("postgresql://app:s3cr3t-pw@db.internal/x", "s3cr3t-pw", "app:[redacted]@db"),
        ("retrying with password=hunter22 and api_key: 'k-123456'", "hunter22", "password="),
        ('{"auth_token": "0123456789abcdef"}', "0123456789abcdef", '"auth_token": "[redacted]'),
        (
            "key -----BEGIN PRIVATE KEY-----\nMIGHAgEA\n-----END PRIVATE KEY----- end",
            "MIGHAgEA",
            "key [redacted] end",
        ),
    ],
)
def test_each_shape_is_hidden_by_default_and_shown_when_off(
    text: str, hidden: str, kept: str
) -> None:
    redacted = Redactor().text(text)
    assert hidden not in redacted
    assert kept in redacted
    assert Redactor(OFF).text(text) == text


def test_configured_secrets_and_secret_named_fields() -> None:
    redactor = Redactor(secrets=["tw-auth-token-42", "x"])
    assert redactor.text("401 for tw-auth-token-42!") == f"401 for {REDACTED}!"
    assert redactor.text("x marks") == "x marks"  # too short to search for
    assert redactor.value("anything", "smtp_password") == REDACTED
    assert redactor.value({"headers": {"Authorization": "opaque"}}) == {
        "headers": {"Authorization": REDACTED}
    }
    assert redactor.value(["a@b.example.org", 3, None]) == ["a…@….org", 3, None]
    assert Redactor(OFF).value("anything", "smtp_password") == "anything"


def test_plain_numbers_and_text_survive() -> None:
    text = (
        "delivery 123456789 at 2026-03-02T08:00:00+00:00 round 4/12 took 0.25 s; author=ops; "
        "at 08:00:00.000000, cursor 1733000000000000.5, 100%25 done; took 0.00123456789 s; "
        "uuid 00112233-4455-6677-8899-aabbccddeeff; id 001234567"
    )
    assert Redactor().text(text) == text


def test_secret_values_walks_the_whole_configuration() -> None:
    settings = Settings.model_validate(
        {
            "channels": {
                "sms": {
                    "type": "twilio",
                    "account_sid": "AC" + "0" * 32,
                    "auth_token": "twilio-token-123",
                    "from_number": "+15005550006",
                },
            },
            "webhook_secrets": {"ops": "hook-secret-456"},
            "messages": {"link_secret": "link-secret-789"},
        }
    )
    assert set(secret_values(settings)) >= {
        "twilio-token-123",
        "hook-secret-456",
        "link-secret-789",
    }


_LOCAL = st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,20}", fullmatch=True)
_DOMAIN = st.from_regex(r"([a-z0-9-]{1,12}\.){1,3}[a-z]{2,6}", fullmatch=True)


@settings(max_examples=150, deadline=None)
@given(local=_LOCAL, domain=_DOMAIN, digits=st.from_regex(r"[1-9][0-9]{7,13}", fullmatch=True))
def test_no_generated_address_or_number_survives(local: str, domain: str, digits: str) -> None:
    email, phone = f"{local}@{domain}", f"+{digits}"
    redacted = Redactor().text(f"to {email} and {phone}; again <{email}>,{phone}.")
    assert email not in redacted
    assert "@" + domain not in redacted
    assert phone not in redacted and digits[:-2] not in redacted


# The dispatcher's logs ---------------------------------------------------------------------


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """JSON log lines of the ``broadcaster`` loggers, with the module's current redaction."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("broadcaster")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        set_redaction(Redaction())


@pytest.mark.parametrize("redaction", ["default", "off"])
async def test_a_refused_customer_is_masked_in_the_dispatch_log(
    database: Database, json_lines: io.StringIO, redaction: str
) -> None:
    if redaction == "off":
        set_redaction(OFF)
    clock = FakeClock(START)
    await add_customers(database, clock.now(), 3, ["email", "sms"])
    email, phone = address("email", 1), address("sms", 2)
    twilio = FakeTwilio()
    twilio.invalid.add(phone)
    config = Settings.model_validate(
        {
            "delivery": {"channels": ["email", "sms"]},
            "channels": {"email": {"type": "console"}, "sms": {"type": "console"}},
        }
    )
    with (
        SmtpSink(reject={email: "550 5.1.1 mailbox unavailable"}) as sink,
        serve(twilio.app) as url,
    ):
        channels: dict[str, Channel] = {
            "email": EmailChannel(
                "email",
                EmailSettings.model_validate(
                    {"host": "127.0.0.1", "port": sink.port, "security": "none"}
                ),
            ),
            "sms": TwilioSmsChannel(
                "sms",
                TwilioSettings(
                    account_sid=twilio.account_sid,
                    auth_token=twilio.auth_token,
                    messaging_service_sid=new_sid("MG"),
                    base_url=url,
                ),
            ),
        }
        engine = await Engine.create(config, database, clock, channels, owner="redact")
        try:
            await service.declare(
                database,
                clock,
                service.Declaration(
                    title="t", severity="major", message="m", components=["payments"]
                ),
            )
            await engine.process_due_rounds()
            await engine.dispatch_all()
        finally:
            await engine.aclose()
    records = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    failures = [r for r in records if r["msg"] == "delivery failed"]
    assert len(failures) == 2, records
    text = json_lines.getvalue()
    if redaction == "off":
        assert email in text and phone in text
    else:
        assert email not in text and phone not in text
        assert "c…@….org" in text and f"+…{phone[-2:]}" in text
        assert twilio.auth_token not in text


# The daemon ----------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("redact", ["", "  redact: {emails: false}\n"], ids=["default", "off"])
def test_the_daemon_follows_its_log_redact_block(tmp_path: Path, redact: str) -> None:
    refused = "cust00007@example.org"
    with SmtpSink(reject={refused: "550 5.1.1 mailbox unavailable"}) as sink:
        config = write_config(tmp_path, sink.port, cadence="1h")
        text = config.read_text(encoding="utf-8")
        config.write_text(text.replace("  format: json\n", "  format: json\n" + redact))
        customers = tmp_path / "customers.csv"
        customers.write_text(
            "id,name,language,timezone,email,components\n"
            + "".join(
                f"C{n},Customer {n},en,Europe/Amsterdam,cust{n:05d}@example.org,payments\n"
                for n in range(10)
            ),
            encoding="utf-8",
        )
        cli(config, "db", "upgrade")
        cli(config, "customers", "import", str(customers))
        daemon = Daemon(config, tmp_path / "daemon.log").start()
        try:
            cli(
                config,
                "incident",
                "declare",
                "--title",
                "t",
                "--severity",
                "major",
                "--component",
                "payments",
                "--message",
                "m",
            )
            wait_until(lambda: "delivery failed" in daemon.log(), 20, "the refused delivery")
        finally:
            assert daemon.stop() == 0
    log = daemon.log()
    assert len(sink.messages) == 9
    if redact:
        assert refused in log
    else:
        assert refused not in log and "c…@….org" in log
        assert "example.org" not in log
