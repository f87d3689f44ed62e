"""End to end: the daemon sends over SMS (Twilio), ntfy and signed webhooks, fails over to
email, takes Twilio's signed status callbacks and STOP replies, and never writes a secret."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from broadcaster.devsmtp import SmtpSink
from tests.e2e.harness import Daemon, cli, query, wait_until
from tests.fakes.fcm import FakeFcm
from tests.fakes.http import serve
from tests.fakes.mobile_push import make_service_account
from tests.fakes.ntfy import NtfyServer
from tests.fakes.twilio import FakeTwilio, twilio_signature
from tests.fakes.webhook import WebhookReceiver

pytestmark = pytest.mark.e2e

PUBLIC = "https://status.example.org"
NTFY_TOKEN = "tk_e2e0ntfy0secret0token0value"
HOOK_SECRET = "whsec-e2e-signing-secret-value"
GOOD, BAD = "+31612345678", "+31612345670"


def _config(
    folder: Path,
    smtp: int,
    twilio: FakeTwilio,
    twilio_url: str,
    ntfy: str,
    hook: str,
    fcm: tuple[Path, str],
) -> Path:
    config = folder / "config.yaml"
    config.write_text(
        f"""
database: {{url: "sqlite+aiosqlite:///{folder / "store.db"}"}}
schedule:
  sweep_interval: 200ms
  round_lease: 2s
  cadence: {{critical: 1h, major: 1h, minor: 1h}}
delivery:
  channels: [sms, ntfy, hook, push]
  failover: [sms, email]
  workers: 2
  lease: 2s
  poll_interval: 100ms
  backoff: {{initial: 200ms, maximum: 1s, jitter: 0.1}}
channels:
  sms:
    type: twilio
    account_sid: {twilio.account_sid}
    auth_token: ${{E2E_TWILIO_TOKEN}}
    from_number: "+15005550006"
    base_url: {twilio_url}
  ntfy: {{type: ntfy, base_url: "{ntfy}", token: "${{E2E_NTFY_TOKEN}}"}}
  hook: {{type: webhook, url: "{hook}/incoming", contact: customer, secret: "${{E2E_HOOK_SECRET}}"}}
  push: {{type: fcm, service_account_file: "{fcm[0]}", base_url: "{fcm[1]}"}}
  email:
    type: email
    port: {smtp}
    security: none
    from: "Test Transit <service@example.org>"
messages: {{public_url: "{PUBLIC}", organisation: Test Transit}}
http: {{port: 0}}
log: {{level: DEBUG, format: json}}
""",
        encoding="utf-8",
    )
    (folder / "customers.jsonl").write_text(
        f'{{"id": "C1", "name": "Good Phone", "email": "good@example.org", "phone": "{GOOD}",'
        ' "push_tokens": ["ntfy:good-topic", "fcm:good-device-token"], "components": ["rail"]}\n'
        f'{{"id": "C2", "name": "Bad Phone", "email": "bad@example.org", "phone": "{BAD}",'
        ' "push_tokens": ["ntfy:bad-topic"], "components": ["rail"]}\n',
        encoding="utf-8",
    )
    return config


def _port(daemon: Daemon) -> int:
    found = re.search(r'"address": "127\.0\.0\.1:(\d+)"', daemon.log())
    assert found, daemon.log()
    return int(found.group(1))


def _twilio_post(port: int, path: str, token: str, params: dict[str, str]) -> httpx.Response:
    signature = twilio_signature(token, PUBLIC + path, params)
    return httpx.post(
        f"http://127.0.0.1:{port}{path}", data=params, headers={"X-Twilio-Signature": signature}
    )


def test_every_channel_in_the_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    twilio = FakeTwilio()
    twilio.invalid.add(BAD)
    ntfy = NtfyServer(tokens=[NTFY_TOKEN])
    hook = WebhookReceiver(HOOK_SECRET)
    monkeypatch.setenv("E2E_TWILIO_TOKEN", twilio.auth_token)
    monkeypatch.setenv("E2E_NTFY_TOKEN", NTFY_TOKEN)
    monkeypatch.setenv("E2E_HOOK_SECRET", HOOK_SECRET)
    account = make_service_account()
    fcm = FakeFcm(
        account.public_key,
        client_email=account.client_email,
        private_key_id=account.private_key_id,
    )
    secrets = [twilio.auth_token, NTFY_TOKEN, HOOK_SECRET, account.private_pem.splitlines()[2]]
    outputs: list[str] = []
    with (
        SmtpSink() as sink,
        serve(twilio.app) as twilio_url,
        serve(ntfy.app) as ntfy_url,
        serve(hook.app) as hook_url,
        serve(fcm.app) as fcm_url,
    ):
        key_file = account.write(tmp_path / "service-account.json", f"{fcm_url}/token")
        config = _config(
            tmp_path, sink.port, twilio, twilio_url, ntfy_url, hook_url, (key_file, fcm_url)
        )
        db = tmp_path / "store.db"
        outputs.append(cli(config, "customers", "import", str(tmp_path / "customers.jsonl")).stdout)
        daemon = Daemon(config, tmp_path / "daemon.log").start()
        try:
            port = _port(daemon)
            declared = cli(
                config,
                "incident",
                "declare",
                "--title",
                "Trains stopped",
                "--severity",
                "major",
                "--component",
                "rail",
                "--message",
                "No trains between A and B.",
            )
            outputs.append(declared.stdout)
            incident = re.search(r"incident (\d+)", declared.stdout)
            assert incident
            # SMS to the good number; the bad one fails (21211) and fails over to email.
            wait_until(lambda: len(sink.messages) == 1, 10, "failover email")
            assert sink.messages[0].recipients == ("bad@example.org",)
            sms = [r for r in twilio.received() if r.form.get("To") == GOOD]
            assert len(sms) == 1 and "Good Phone" in sms[0].form["Body"]
            assert sms[0].form["StatusCallback"].startswith(PUBLIC + "/hooks/twilio/status")
            wait_until(lambda: len(ntfy.published) == 2 and len(hook.accepted) == 2, 10, "push")
            assert {p.topic for p in ntfy.published} == {"good-topic", "bad-topic"}
            wait_until(lambda: len(fcm.delivered) == 1, 10, "FCM push")
            pushed = fcm.delivered[0].body["message"]
            assert pushed["token"] == "good-device-token"
            assert pushed["notification"]["title"].endswith("Trains stopped")
            bad_point = query(db, "select disabled from contact_points where address = ?", BAD)
            assert bad_point == [(1,)]
            # Twilio reports delivery to our callback, signed; a forged one is refused.
            sid = str(
                query(db, "select provider_message_id from deliveries where address = ?", GOOD)[0][
                    0
                ]
            )
            status = {
                "AccountSid": twilio.account_sid,
                "MessageSid": sid,
                "MessageStatus": "delivered",
            }
            forged = httpx.post(
                f"http://127.0.0.1:{port}/hooks/twilio/status",
                data=status,
                headers={"X-Twilio-Signature": "bm9wZQ=="},
            )
            assert forged.status_code == 403
            path = "/hooks/twilio/status?" + sms[0].form["StatusCallback"].split("?", 1)[1]
            assert _twilio_post(port, path, twilio.auth_token, status).status_code == 204
            assert query(db, "select state from deliveries where address = ?", GOOD) == [
                ("delivered",)
            ]
            # The customer replies STOP: the next round sends them no SMS.
            stop = {
                "AccountSid": twilio.account_sid,
                "From": GOOD,
                "Body": "STOP",
                "MessageSid": "SM" + "5" * 32,
            }
            assert _twilio_post(port, "/hooks/twilio/inbound", twilio.auth_token, stop).is_success
            cli(config, "incident", "update", incident.group(1), "--message", "Buses run.")
            wait_until(lambda: len(hook.accepted) == 4, 10, "second round")
            round_two = query(
                db,
                "select d.channel, d.address from deliveries d join rounds r on r.id = d.round_id"
                " where r.number = 2 and d.channel = 'sms'",
            )
            assert round_two == [], "an opted-out number was given a new SMS"
            assert len([r for r in twilio.received() if r.form.get("To") == GOOD]) == 1
            shown = cli(config, "incident", "show", incident.group(1)).stdout
            outputs.append(shown)
            assert re.search(r"sms\s+delivered 1, failed 1", shown), shown
            assert "email      sent 1" in shown
        finally:
            assert daemon.stop() == 0, daemon.log()
        outputs.append(daemon.log())
    secrets += fcm.issued  # the OAuth2 access tokens the daemon was given
    everything = "\n".join(outputs)
    for secret in secrets:
        assert secret not in everything, "a secret reached the logs or the CLI output"
