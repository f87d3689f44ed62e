"""Building the configured channels from their settings."""

from __future__ import annotations

from broadcaster.config.settings import Settings
from channels.base import Channel
from channels.console import ConsoleChannel, ConsoleSettings
from channels.email import EmailChannel, EmailSettings


def build_channels(settings: Settings) -> dict[str, Channel]:
    """One instance per channel named in ``delivery.channels``."""
    built: dict[str, Channel] = {}
    for name in settings.delivery.channels:
        spec = settings.channels[name]
        if isinstance(spec, ConsoleSettings):
            built[name] = ConsoleChannel(name, spec)
        elif isinstance(spec, EmailSettings):
            built[name] = EmailChannel(name, spec)
        else:  # pragma: no cover - the settings union is closed
            raise TypeError(f"unsupported channel settings for {name!r}: {type(spec).__name__}")
    return built
