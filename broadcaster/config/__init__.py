"""Configuration: ``config.yaml`` validated into :class:`Settings`, with file:line errors."""

from __future__ import annotations

from broadcaster.config.loader import ConfigError, load_settings, locate_config
from broadcaster.config.settings import Settings

__all__ = ["ConfigError", "Settings", "load_settings", "locate_config"]
