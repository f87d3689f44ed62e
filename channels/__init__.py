"""Channels: one module per channel or provider behind one small protocol.

This package never imports ``broadcaster``; the daemon builds channels from their
declared settings and calls :meth:`Channel.send`.
"""

from __future__ import annotations

from channels.base import (
    Channel,
    ContactPointState,
    DeliveryError,
    Message,
    Receipt,
    Target,
)

__all__ = [
    "Channel",
    "ContactPointState",
    "DeliveryError",
    "Message",
    "Receipt",
    "Target",
]
