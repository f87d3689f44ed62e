"""Building the configured channels from their settings, with the daemon's clock."""

from __future__ import annotations

from broadcaster.clock import Clock, RealClock
from broadcaster.config.settings import Settings
from channels.apns import ApnsChannel, ApnsSettings
from channels.base import Channel
from channels.console import ConsoleChannel, ConsoleSettings
from channels.email import EmailChannel, EmailSettings
from channels.fcm import FcmChannel, FcmSettings
from channels.ntfy import NtfyChannel, NtfySettings
from channels.twilio_sms import TwilioSettings, TwilioSmsChannel
from channels.webhook import WebhookChannel, WebhookSettings
from channels.webpush import WebPushChannel, WebPushSettings

TWILIO_STATUS_PATH = "/hooks/twilio/status"


def build_channel(settings: Settings, name: str, clock: Clock | None = None) -> Channel:
    """The channel called ``name`` in ``channels``; KeyError when there is none."""
    spec = settings.channels[name]
    source = clock or RealClock()

    def now() -> float:
        return source.now().timestamp()

    if isinstance(spec, ConsoleSettings):
        return ConsoleChannel(name, spec)
    if isinstance(spec, EmailSettings):
        return EmailChannel(name, spec)
    if isinstance(spec, TwilioSettings):
        if spec.status_callback_url is None:
            callback = settings.messages.public_url.rstrip("/") + TWILIO_STATUS_PATH
            spec = spec.model_copy(update={"status_callback_url": callback})
        return TwilioSmsChannel(name, spec)
    if isinstance(spec, FcmSettings):
        return FcmChannel(name, spec, now=now)
    if isinstance(spec, ApnsSettings):
        return ApnsChannel(name, spec, now=now)
    if isinstance(spec, WebPushSettings):
        return WebPushChannel(name, spec, clock=now)
    if isinstance(spec, NtfySettings):
        return NtfyChannel(name, spec, clock=now)
    if isinstance(spec, WebhookSettings):
        return WebhookChannel(name, spec, clock=now)
    raise TypeError(f"unsupported channel settings for {name!r}: {type(spec).__name__}")


def build_channels(
    settings: Settings, clock: Clock | None = None, names: list[str] | None = None
) -> dict[str, Channel]:
    """One instance per channel the daemon uses (broadcast and failover channels)."""
    wanted = names if names is not None else used_channels(settings)
    return {name: build_channel(settings, name, clock) for name in wanted}


def used_channels(settings: Settings) -> list[str]:
    """Every configured channel: rounds use ``delivery.channels`` or their escalation step's,
    failover and staff notices use others."""
    return list(settings.channels)
