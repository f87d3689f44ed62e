"""The store: the single source of truth (SQLAlchemy 2 async; SQLite or PostgreSQL)."""

from __future__ import annotations

from broadcaster.store.db import Also, Database, Pooler, StoreConfig
from broadcaster.store.models import (
    Account,
    ApiToken,
    AuditEntry,
    Base,
    ConsoleSession,
    ContactPoint,
    Customer,
    Delivery,
    DeliveryEvent,
    Followup,
    FollowupEvent,
    InboundMessage,
    Incident,
    IncidentScope,
    IncidentUpdate,
    Promise,
    Round,
    StaffNotice,
    Subscription,
)

__all__ = [
    "Account",
    "Also",
    "ApiToken",
    "AuditEntry",
    "Base",
    "ConsoleSession",
    "ContactPoint",
    "Customer",
    "Database",
    "Delivery",
    "DeliveryEvent",
    "Followup",
    "FollowupEvent",
    "InboundMessage",
    "Incident",
    "IncidentScope",
    "IncidentUpdate",
    "Pooler",
    "Promise",
    "Round",
    "StaffNotice",
    "StoreConfig",
    "Subscription",
]
