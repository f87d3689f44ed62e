"""The tables: every fact of the broadcast loop is a row here.

Idempotency lives in unique keys: rounds by (incident, number), deliveries by
(round, customer, channel), contact points by (customer, channel, address),
subscriptions by (customer, kind, value).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from broadcaster.store.types import UTCDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


PROVIDER_ID_LENGTH = 300
"""Characters of a provider's message id the store keeps (a longer one is cut when recorded)."""


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def table_of(model: type[Base]) -> Table:
    """The Core table of a model, for bulk statements (executemany, no unit of work)."""
    table = model.__table__
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not mapped to a table")
    return table


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    language: Mapped[str] = mapped_column(String(16), default="en")
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    channel_order: Mapped[str | None] = mapped_column(Text, default=None)
    """Preferred channels for failover, comma-separated; the configured order when unset."""
    tier: Mapped[str] = mapped_column(String(32), default="standard", server_default="standard")
    tags: Mapped[str | None] = mapped_column(Text, default=None)
    """Comma-separated tags the rules can match."""
    region: Mapped[str | None] = mapped_column(String(200), default=None)
    sla: Mapped[str | None] = mapped_column(String(64), default=None)
    account_manager: Mapped[str | None] = mapped_column(String(64), default=None)
    """Staff id of the customer's account manager."""
    postal_address: Mapped[str | None] = mapped_column(Text, default=None)
    """Where a visit goes: the address's lines joined by a newline; None when none is on
    file (migration 0022)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ContactPoint(Base):
    """One address of a customer on one kind of channel (email, sms, push)."""

    __tablename__ = "contact_points"
    __table_args__ = (UniqueConstraint("customer_id", "kind", "address"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(2048))
    opted_out: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled_reason: Mapped[str | None] = mapped_column(Text, default=None)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Subscription(Base):
    """A customer's interest in a component or a region."""

    __tablename__ = "subscriptions"
    __table_args__ = (
        UniqueConstraint("customer_id", "kind", "value"),
        Index("ix_subscriptions_kind_value_customer", "kind", "value", "customer_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # component | region
    value: Mapped[str] = mapped_column(String(200))


class Incident(Base):
    __tablename__ = "incidents"
    __table_args__ = (UniqueConstraint("source", "external_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    title: Mapped[str] = mapped_column(String(300))
    severity: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(64), default="operator")
    external_id: Mapped[str | None] = mapped_column(String(300), default=None)
    declared_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    rounds_made: Mapped[int] = mapped_column(Integer, default=0)
    """Highest round number created so far (round numbers start at 1)."""
    plan: Mapped[dict[str, object] | None] = mapped_column(JSON, default=None)
    """The escalation plan snapshotted when escalation started (rules.PlanSnapshot)."""
    steps_notified: Mapped[list[int] | None] = mapped_column(JSON, default=None)
    """Ladder steps (seconds after the start) whose staff have been told."""
    labels: Mapped[dict[str, str] | None] = mapped_column(JSON, default=None)
    """The source's labels (an Alertmanager alert's, ``gtfs.cause``, …), for the rules'
    ``incident.labels`` conditions; the latest event's."""
    delivery_counts: Mapped[list[list[Any]] | None] = mapped_column(JSON, default=None)
    """Its deliveries counted by round, channel and state (``[round_id, channel, state,
    count]`` rows), kept when a purge under ``retention.messages`` began: its report reads
    them from then on (migration 0012; :mod:`broadcaster.incidents.retention`)."""
    messages_purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    """When its deliveries, their history and its staff notices were purged."""


class IncidentScope(Base):
    """What an incident affects: components and regions, matched against subscriptions."""

    __tablename__ = "incident_scopes"
    __table_args__ = (UniqueConstraint("incident_id", "kind", "value"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[str] = mapped_column(String(200))


class IncidentUpdate(Base):
    """One entry of the incident's timeline, as staff wrote it."""

    __tablename__ = "incident_updates"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(
        ForeignKey("incidents.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))  # declared | update | resolved | closed
    status: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")
    cause_kind: Mapped[str] = mapped_column(String(16), default="unknown")
    cause: Mapped[str | None] = mapped_column(Text, default=None)
    actions: Mapped[str | None] = mapped_column(Text, default=None)
    """What is being done about it."""
    workaround: Mapped[str | None] = mapped_column(Text, default=None)
    expected_resolution_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # The apology, at resolution (cause is above): who is responsible, our regret, what we
    # did to put it right, what prevents a recurrence, and what we offer.
    responsibility: Mapped[str | None] = mapped_column(Text, default=None)
    regret: Mapped[str | None] = mapped_column(Text, default=None)
    remedy: Mapped[str | None] = mapped_column(Text, default=None)
    prevention: Mapped[str | None] = mapped_column(Text, default=None)
    compensation: Mapped[str | None] = mapped_column(Text, default=None)
    """The operator's own words, in the operator's language, as written."""
    compensation_offers: Mapped[list[dict[str, str]] | None] = mapped_column(JSON, default=None)
    """What the rules granted when the operator wrote no compensation (migration 0018):
    ``[{"kind", "amount", "currency", "rule"}]``, the amount the decimal as the rules wrote
    it; each customer's message says it in their language."""
    author: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Round(Base):
    """One update to one incident's audience. Its due time is the promise it keeps."""

    __tablename__ = "rounds"
    __table_args__ = (
        UniqueConstraint("incident_id", "number"),
        # The key deliveries refer to (migration 0014): one foreign key checks a delivery's
        # round and incident together.
        UniqueConstraint("id", "incident_id"),
        Index("ix_rounds_state_due_at", "state", "due_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # first | update | no_news | resolution
    state: Mapped[str] = mapped_column(String(16), default="pending")
    # pending -> materialising -> dispatched; or cancelled
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    update_id: Mapped[int | None] = mapped_column(
        ForeignKey("incident_updates.id", ondelete="SET NULL"), default=None
    )
    next_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    """The "next update by" this round's messages promise (None for the final round)."""
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    materialised_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    cursor: Mapped[str | None] = mapped_column(String(64), default=None)
    """Last customer id materialised: a restarted round continues after it."""
    audience_size: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    fence: Mapped[int] = mapped_column(Integer, default=0)
    """Fencing token: bumped at each claim; a stale worker's writes match no row."""
    channels: Mapped[str | None] = mapped_column(Text, default=None)
    """Channels of the escalation step this round belongs to (comma-separated); the
    configured ``delivery.channels`` when unset."""
    capacity_warning: Mapped[str | None] = mapped_column(Text, default=None)
    """What the leader found when the round was written, when a channel's rate cannot carry
    it within its cadence (one warning per line; migration 0010): every daemon reports the
    latest round's of each open incident."""


class Delivery(Base):
    """One message to one customer on one channel for one round: the outbox row."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("round_id", "customer_id", "channel"),
        # The round and its incident in one foreign key (migration 0014): a round's insert
        # checks one key a row where it checked two (the incident's followed from the
        # round's), and a delivery cannot name another incident than its round's.
        ForeignKeyConstraint(
            ["round_id", "incident_id"], ["rounds.id", "rounds.incident_id"], ondelete="CASCADE"
        ),
        # Partial on PostgreSQL (migration 0007): a state change adds an entry to every
        # index there, and these are read only for due deliveries, expired leases and
        # known ids. SQLite updates in place and keeps them whole.
        Index(
            "ix_deliveries_state_next_attempt_at_id",
            "state",
            "next_attempt_at",
            "id",
            postgresql_where=text("state = 'pending'"),
        ),
        Index(
            "ix_deliveries_lease_expires_at_id",
            "lease_expires_at",
            "id",
            postgresql_where=text("state = 'sending'"),
        ),
        Index("ix_deliveries_customer_id", "customer_id"),
        Index(
            "ix_deliveries_provider_message_id",
            "provider_message_id",
            postgresql_where=text("provider_message_id IS NOT NULL"),
        ),
        # For the foreign key's ON DELETE SET NULL (migration 0013): without it, deleting a
        # delivery (a purge, a customer's erasure) scanned the whole table for deliveries
        # that failed over from it, once per deleted row.
        Index(
            "ix_deliveries_failover_from_id",
            "failover_from_id",
            postgresql_where=text("failover_from_id IS NOT NULL"),
            sqlite_where=text("failover_from_id IS NOT NULL"),
        ),
        # Likewise for a contact point's removal (migration 0017), and for the import that
        # cancels what still waits to go to an address it removes.
        Index(
            "ix_deliveries_contact_point_id",
            "contact_point_id",
            postgresql_where=text("contact_point_id IS NOT NULL"),
            sqlite_where=text("contact_point_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    round_id: Mapped[int] = mapped_column(BigId)
    incident_id: Mapped[int] = mapped_column(BigId)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(32))
    contact_point_id: Mapped[int | None] = mapped_column(
        ForeignKey("contact_points.id", ondelete="SET NULL"), default=None
    )
    address: Mapped[str] = mapped_column(String(2048))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    # pending -> sending -> sent | failed   (pending again, later, on a retryable error);
    # sent -> delivered | undelivered when the provider reports back (SMS status callbacks);
    # rerouted when a per-customer throttle moved it to a lighter channel.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    provider_message_id: Mapped[str | None] = mapped_column(
        String(PROVIDER_ID_LENGTH), default=None
    )
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    failover_from_id: Mapped[int | None] = mapped_column(
        ForeignKey("deliveries.id", ondelete="SET NULL"), default=None
    )
    """The delivery on another channel whose permanent failure (or throttle) led here."""
    failover_to: Mapped[str | None] = mapped_column(String(32), default=None)
    """The channel this delivery failed over (or was rerouted) to."""
    promised_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    """The next update this message promises, when not the round's: the end of the
    customer's quiet hours that will hold the round due sooner (migration 0016)."""
    kind: Mapped[str | None] = mapped_column(String(32), default=None)
    """What the message says, when not its round's kind: a message held for the customer's
    quiet hours that stands in for earlier held ones says the first notice to a customer
    never told, an update where an operator's news was held (migration 0021)."""


class DeliveryEvent(Base):
    """One step in a delivery's history: claimed, sent, retried, failed, delivered, …"""

    __tablename__ = "delivery_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("deliveries.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    state: Mapped[str] = mapped_column(String(16))
    provider_message_id: Mapped[str | None] = mapped_column(
        String(PROVIDER_ID_LENGTH), default=None
    )
    detail: Mapped[str | None] = mapped_column(Text, default=None)


class Promise(Base):
    """A "next update by" made to customers; kept, late, or still open."""

    __tablename__ = "promises"
    __table_args__ = (UniqueConstraint("made_by_round_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(
        ForeignKey("incidents.id", ondelete="CASCADE"), index=True
    )
    made_by_round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    state: Mapped[str] = mapped_column(String(16), default="open")  # open | kept | late
    kept_by_round_id: Mapped[int | None] = mapped_column(
        ForeignKey("rounds.id", ondelete="SET NULL"), default=None
    )
    kept_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    lateness_seconds: Mapped[float | None] = mapped_column(default=None)


class AppSecret(Base):
    """Secrets the daemon generates once and keeps (e.g. the link-signing key)."""

    __tablename__ = "app_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Followup(Base):
    """A forced human follow-up: a named person must call, visit or write to a customer."""

    __tablename__ = "followups"
    __table_args__ = (UniqueConstraint("incident_id", "customer_id", "rule"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(
        ForeignKey("incidents.id", ondelete="CASCADE"), index=True
    )
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    rule: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))  # call | visit | personal_email
    owner: Mapped[str] = mapped_column(String(64))
    owner_ref: Mapped[str | None] = mapped_column(Text, default=None)
    """The rule's owner reference as the rules file spells it (``group:care``,
    ``account_manager``): whom the rule made responsible, who may claim the task besides its
    owner. None on tasks created before migration 0011."""
    state: Mapped[str] = mapped_column(String(16), default="open")
    # open -> claimed -> done; open | claimed -> waived (by a manager or admin)
    deadline_at: Mapped[datetime] = mapped_column(UTCDateTime())
    reminder_every_s: Mapped[float | None] = mapped_column(default=None)
    next_reminder_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    escalation: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    escalation_interval_s: Mapped[float | None] = mapped_column(default=None)
    escalation_level: Mapped[int] = mapped_column(Integer, default=0)
    next_escalation_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    outcome: Mapped[str | None] = mapped_column(String(32), default=None)
    note: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    closed_by: Mapped[str | None] = mapped_column(String(64), default=None)


class FollowupEvent(Base):
    """What happened to a follow-up: created, notified, reminded, escalated, claimed, …"""

    __tablename__ = "followup_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    followup_id: Mapped[int] = mapped_column(
        ForeignKey("followups.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    kind: Mapped[str] = mapped_column(String(16))
    staff: Mapped[str | None] = mapped_column(String(64), default=None)
    detail: Mapped[str | None] = mapped_column(Text, default=None)


class StaffNotice(Base):
    """A message to a member of staff, queued in the transaction that made it due: a
    follow-up assigned, a reminder, an escalation, an escalation step of an incident. The
    follow-up sweep sends what is due, under a lease, and tries a retryable failure again
    with the delivery backoff (:mod:`broadcaster.followups.notify`)."""

    __tablename__ = "staff_notices"
    __table_args__ = (Index("ix_staff_notices_state_next_attempt_at", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    """Idempotency key, also the message's: a notice is queued once."""
    kind: Mapped[str] = mapped_column(String(16))  # assigned | reminder | escalation | step
    staff: Mapped[str] = mapped_column(String(64))
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"))
    followup_id: Mapped[int | None] = mapped_column(
        ForeignKey("followups.id", ondelete="CASCADE"), default=None
    )
    round_number: Mapped[int | None] = mapped_column(Integer, default=None)
    """The round whose escalation step this notice announces (``step`` notices)."""
    state: Mapped[str] = mapped_column(String(16), default="pending")
    # pending -> sending -> sent | failed   (pending again, later, on a retryable error)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class ApiToken(Base):
    """A bearer token for the HTTP API; only its SHA-256 is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    """Who or what holds it (a person's staff id or a system's name): the audit log's actor."""
    role: Mapped[str] = mapped_column(String(16))  # viewer | operator | admin
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    """The token's first characters, to recognise it in listings."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(100), default="")
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class Account(Base):
    """A staff member's console login; the name is their staff id."""

    __tablename__ = "accounts"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class ConsoleSession(Base):
    """A console login: the cookie holds a random id, the store only its SHA-256."""

    __tablename__ = "console_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    account: Mapped[str] = mapped_column(ForeignKey("accounts.name", ondelete="CASCADE"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    source: Mapped[str] = mapped_column(String(100), default="")


class AuditEntry(Base):
    """One operator or admin action: who, what, when, from where. Rows are only ever added."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(120))
    """``token:<name>``, ``account:<name>`` or ``cli:<login>``."""
    role: Mapped[str] = mapped_column(String(16), default="")
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(200), default="")
    source: Mapped[str] = mapped_column(String(100), default="")
    """Where from: the client address, or ``cli``."""
    outcome: Mapped[str] = mapped_column(String(16), default="ok")  # ok | refused | failed
    detail: Mapped[dict[str, object] | None] = mapped_column(JSON, default=None)


class InboundMessage(Base):
    """An inbound SMS whose keyword (STOP, START) changed a number's consent, by its provider
    id: a signed request carries no time, so a captured one could be sent again later (a START
    replayed after the customer's STOP); one already recorded changes nothing. No number or
    text is kept: the id alone says nothing about the customer."""

    __tablename__ = "inbound_messages"

    provider_message_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    keyword: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())


class IdempotencyKey(Base):
    """An API request made with an ``Idempotency-Key`` header, by caller and key: written in
    the transaction of its action, so a retried request (a timeout, a double submit) answers
    what the first did instead of acting twice, and of two at once only one acts (the key is
    unique). ``request_hash`` tells the same request from another one sent with the key."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)

    actor: Mapped[str] = mapped_column(String(120), primary_key=True)
    """The caller: ``token#<id>`` (the token, not its name, which two may bear), or as the
    audit log names it (``account:<name>``)."""
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    """SHA-256 of the method, the path and the request's body."""
    status: Mapped[int] = mapped_column(Integer)
    resource: Mapped[str] = mapped_column(String(32))
    """What the action made: ``incident`` or ``incident_update``."""
    resource_id: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
