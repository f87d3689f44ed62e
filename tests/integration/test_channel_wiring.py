"""Every channel type can be configured in config.yaml and is built by the daemon."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broadcaster.clock import FakeClock
from broadcaster.config import load_settings
from broadcaster.dispatch.channels import build_channels
from channels.apns import ApnsChannel
from channels.console import ConsoleChannel
from channels.email import EmailChannel
from channels.fcm import FcmChannel
from channels.ntfy import NtfyChannel
from channels.twilio_sms import TwilioSmsChannel
from channels.webhook import WebhookChannel
from channels.webpush import WebPushChannel
from tests.fakes.mobile_push import make_p8_key, make_service_account


async def test_all_channel_types_build_from_yaml(tmp_path: Path) -> None:
    account = tmp_path / "fcm.json"
    account.write_text(make_service_account().json("https://oauth2.example/token"))
    p8 = make_p8_key().write(tmp_path)
    vapid = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "vapid.pem").write_bytes(vapid)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
delivery:
  channels: [console, email, sms, fcm, apns, webpush, ntfy]
  failover: [sms, hook]
channels:
  console: {{type: console}}
  email: {{type: email, from: "A <a@example.org>"}}
  sms: {{type: twilio, account_sid: "AC{"0" * 32}", auth_token: "{"t" * 32}",
         messaging_service_sid: "MG{"0" * 32}"}}
  fcm: {{type: fcm, service_account_file: "{account}"}}
  apns: {{type: apns, team_id: DEF123GHIJ, key_id: ABC123DEFG, private_key_file: "{p8}",
          topic: org.example.app}}
  webpush: {{type: webpush, vapid_private_key_file: "{tmp_path / "vapid.pem"}",
             vapid_subject: "mailto:ops@example.org"}}
  ntfy: {{type: ntfy}}
  hook: {{type: webhook, url: "https://crm.example.org/in", contact: customer,
          secret: "0123456789abcdef0123"}}
messages: {{public_url: "https://status.example.org"}}
""",
        encoding="utf-8",
    )
    settings = load_settings(config, environ={})
    built = build_channels(settings, FakeClock())
    try:
        expected = {
            "console": ConsoleChannel,
            "email": EmailChannel,
            "sms": TwilioSmsChannel,
            "fcm": FcmChannel,
            "apns": ApnsChannel,
            "webpush": WebPushChannel,
            "ntfy": NtfyChannel,
            "hook": WebhookChannel,
        }
        assert {name: type(channel) for name, channel in built.items()} == expected
        assert built["hook"].contact == "customer"
        # The Twilio status callback defaults to the daemon's public URL.
        sms = settings.channels["sms"]
        assert getattr(sms, "status_callback_url", None) is None
        assert "status.example.org/hooks/twilio/status" in repr(vars(built["sms"]))
    finally:
        for channel in built.values():
            await channel.aclose()
