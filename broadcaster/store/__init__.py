"""The store: the single source of truth (SQLAlchemy 2 async; SQLite or PostgreSQL)."""

from __future__ import annotations

from broadcaster.store.db import Database
from broadcaster.store.models import (
    Base,
    ContactPoint,
    Customer,
    Delivery,
    DeliveryEvent,
    Followup,
    FollowupEvent,
    Incident,
    IncidentScope,
    IncidentUpdate,
    Promise,
    Round,
    Subscription,
)

__all__ = [
    "Base",
    "ContactPoint",
    "Customer",
    "Database",
    "Delivery",
    "DeliveryEvent",
    "Followup",
    "FollowupEvent",
    "Incident",
    "IncidentScope",
    "IncidentUpdate",
    "Promise",
    "Round",
    "Subscription",
]
