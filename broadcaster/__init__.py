"""Broadcaster: tells every affected customer about a disruption, on a promised schedule."""

from __future__ import annotations

__version__ = "0.1.0"
