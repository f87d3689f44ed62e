"""The settings schema: every key ``config.yaml`` may hold, with defaults and limits."""

from __future__ import annotations

import functools
import ipaddress
import zoneinfo
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
)
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from broadcaster.config.durations import Duration, LeaseDuration, PositiveDuration
from broadcaster.eventloop import DEFAULT_EVENT_LOOP, EventLoopChoice
from broadcaster.intake.watch import FeedSettings, HookSettings
from broadcaster.store.db import Pooler
from channels.apns import ApnsSettings
from channels.base import CONTACT_KINDS, EVERY_CUSTOMER
from channels.console import ConsoleSettings
from channels.email import EmailSettings
from channels.fcm import FcmSettings
from channels.ntfy import NtfySettings
from channels.twilio_sms import TwilioSettings
from channels.webhook import WebhookSettings
from channels.webpush import WebPushSettings

AnyChannelSettings = (
    ConsoleSettings
    | EmailSettings
    | TwilioSettings
    | FcmSettings
    | ApnsSettings
    | WebPushSettings
    | NtfySettings
    | WebhookSettings
)
ChannelSettings = Annotated[AnyChannelSettings, Field(discriminator="type")]
Severity = Literal["minor", "major", "critical"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


STORE_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")
_STORE_URLS = "write sqlite+aiosqlite:///path/to/file.db or postgresql+asyncpg://user@host/db"


class DatabaseSettings(_Section):
    url: str = "sqlite+aiosqlite:///data/broadcaster.db"
    """SQLAlchemy async URL; a relative SQLite path is relative to the config file."""
    echo: bool = False
    pooler: Pooler = "none"
    """What ``url`` reaches on PostgreSQL: the server itself (``none``), or a connection
    pooler such as PgBouncer in ``session`` or ``transaction`` pooling mode. In
    ``transaction`` mode a server session serves a client for one transaction only, so no
    prepared statement is kept from one statement to the next
    (:class:`broadcaster.store.Database`). With either, ``direct_url`` is required."""
    direct_url: str | None = None
    """A URL straight to the PostgreSQL server, past the pooler: the leader's advisory
    lock (a session's, which must end when its daemon dies) and the schema migrations
    take it. Required when ``pooler`` is not ``none``."""

    @property
    def direct(self) -> str:
        """The URL for the work that needs a server session of its own: ``direct_url``,
        else ``url``."""
        return self.direct_url or self.url

    @field_validator("url", "direct_url")
    @classmethod
    def _a_store_we_run_on(cls, value: str | None) -> str | None:
        """SQLite through aiosqlite or PostgreSQL through asyncpg: anything else failed at
        start with a traceback from deep in SQLAlchemy (a driver not installed, a URL it
        could not parse), naming neither the file nor the key."""
        if value is None:
            return None
        try:
            parsed = make_url(value)
        except ArgumentError:
            raise ValueError(f"not a database URL ({_STORE_URLS})") from None
        if parsed.drivername not in STORE_DRIVERS:
            shown = parsed.render_as_string(hide_password=True)
            raise ValueError(
                f"{shown!r}: the driver {parsed.drivername!r} is not one of ours ({_STORE_URLS})"
            )
        return value


class CadenceSettings(_Section):
    """How often customers hear from us while an incident of that severity is open."""

    critical: PositiveDuration = timedelta(minutes=15)
    major: PositiveDuration = timedelta(minutes=30)
    minor: PositiveDuration = timedelta(hours=2)

    def for_severity(self, severity: str) -> timedelta:
        value: timedelta = getattr(self, severity)
        return value


class ScheduleSettings(_Section):
    sweep_interval: PositiveDuration = timedelta(milliseconds=250)
    """Safety sweep: how often the store is checked for due rounds written by others."""
    cadence: CadenceSettings = CadenceSettings()
    promise_grace: Duration = timedelta(seconds=60)
    """A promise kept (its round reaching its audience) later than this after its time is
    counted as late."""
    round_lease: LeaseDuration = timedelta(seconds=30)
    """How long a claimed round is held before another daemon may take it over; renewed
    with each materialised batch. Keep it under ``promise_grace``: a round whose daemon
    died mid-way waits out this lease before another finishes it."""
    audience_batch: int = Field(default=5000, ge=1, le=100_000)


class BackoffSettings(_Section):
    initial: Duration = timedelta(seconds=5)
    maximum: Duration = timedelta(minutes=10)
    multiplier: float = Field(default=2.0, ge=1.0)
    jitter: float = Field(default=0.2, ge=0.0, le=1.0)


class RateLimit(_Section):
    """A token bucket for one provider account (one channel)."""

    per_second: float = Field(gt=0)
    burst: int = Field(default=1, ge=1)


class Throttle(_Section):
    """At most ``max`` messages per customer per ``per`` on a channel; beyond that the
    message goes to the ``fallback`` channel instead (never skipped)."""

    max: int = Field(ge=0)
    per: PositiveDuration
    fallback: str | None = None


class DeliverySettings(_Section):
    channels: list[str] = Field(default_factory=lambda: ["console"], min_length=1)
    """The channels every round goes out on (names from ``channels``)."""
    failover: list[str] = Field(default_factory=list)
    """Default channel order for failover; a customer's own order (import column
    ``channels``) wins. A permanent failure moves the message to the next channel."""
    rate_limits: dict[str, RateLimit] = Field(default_factory=dict)
    throttle: dict[str, Throttle] = Field(default_factory=dict)
    workers: int = Field(default=4, ge=1, le=256)
    """Concurrent dispatch workers in each dispatch process."""
    processes: int = Field(default=1, ge=1, le=64)
    """Dispatch processes: the daemon's own and ``processes - 1`` more, each with
    ``workers`` workers (:mod:`broadcaster.dispatch.processes`). Dispatch is CPU-bound in
    Python, one core per process: a daemon with spare cores sends faster with one process
    per core. ``processes × workers × batch_size`` is the most a crash can send twice."""
    batch_size: int = Field(default=200, ge=1, le=10_000)
    """Deliveries one worker claims, sends and records at a time. Larger batches cost less
    per delivery (fewer transactions and commits: 200 took a quarter less CPU per delivery
    than 50 in the benchmarks); ``workers × batch_size`` is also the most a crash can send
    twice."""
    lease: LeaseDuration = timedelta(seconds=30)
    """How long a claimed delivery is held before it can be claimed again; a batch still
    sending renews its leases every third of a lease. Keep it under
    ``schedule.promise_grace`` by the time a batch takes to send: the batch of a daemon
    that died mid-send waits out this lease before another daemon sends it."""
    max_attempts: int = Field(default=8, ge=1, le=100)
    """With the default backoff, 8 tries span about 10 minutes (at least 8.5 with jitter):
    a provider or SMTP server that is down for minutes loses nothing."""
    backoff: BackoffSettings = BackoffSettings()
    poll_interval: PositiveDuration = timedelta(milliseconds=500)


class MessageSettings(_Section):
    organisation: str = "Example Transit"
    default_language: str = "en"
    public_url: str = "http://127.0.0.1:8080"
    """Base of the public incident page linked from every message."""
    templates_dir: Path | None = None
    """A folder of template overrides (``<language>/<kind>/<part>.j2``), searched first."""
    link_secret: SecretStr | None = None
    """Key that signs unsubscribe and preference links; generated and kept in the store
    when unset."""
    link_lifetime: PositiveDuration = timedelta(days=30)
    sms_max_segments: int = Field(default=3, ge=1, le=10)


STAFF_ID_MAX = 64
"""The longest staff id: the store keeps follow-up owners and staff notices' recipients in
columns of this size, and a longer one would fail the transaction that queues them."""


@functools.cache
def _known_zones() -> dict[str, str]:
    """Lower-cased IANA name -> the name as the tz database spells it."""
    return {name.lower(): name for name in zoneinfo.available_timezones()}


def an_iana_zone(value: str | None) -> str | None:
    """An IANA time zone name, spelled as the tz database spells it (``Europe/Amsterdam``):
    what a staff notice gives its times in."""
    if value is None:
        return None
    known = _known_zones().get(value.lower())
    if known == value:
        return value
    if known is not None:
        raise ValueError(f"unknown time zone {value!r} (did you mean {known!r}?)")
    raise ValueError(f"unknown time zone {value!r} (an IANA name, e.g. Europe/Amsterdam or UTC)")


TimeZoneName = Annotated[str | None, AfterValidator(an_iana_zone)]


class StaffMember(_Section):
    name: str
    email: str | None = None
    phone: str | None = None
    manager: str | None = None
    """Staff id of their manager: overdue follow-ups escalate there; managers may waive."""
    admin: bool = False
    timezone: TimeZoneName = None
    """The IANA zone the times of their notices are given in; unset: ``staff.timezone``."""


class StaffGroup(_Section):
    """A group the rules name (``group:NAME``, ``on_call:NAME``): its members, its on-call
    person, or both; one that names nobody is refused (:func:`cross_check`)."""

    members: list[str] = Field(default_factory=list)
    on_call: str | None = None


class StaffSettings(_Section):
    """The staff directory the rules name: people, groups, managers, on-call."""

    people: dict[str, StaffMember] = Field(default_factory=dict)
    groups: dict[str, StaffGroup] = Field(default_factory=dict)
    notify_channel: str | None = None
    """The channel (an email or console channel) that tells staff about their tasks."""
    unassigned_owner: str | None = None
    """Staff id of who owns a forced follow-up whose rule names nobody for the customer (no
    account manager) and whose escalation chain names nobody either; unset, the directory's
    first admin does (docs/rules.md, In the daemon)."""
    timezone: TimeZoneName = None
    """The IANA zone of the staff notices' times for those with no ``timezone`` of their
    own; unset: UTC."""

    def timezone_of(self, staff_id: str) -> str:
        """The zone ``staff_id``'s notices give their times in: their own, else the
        directory's, else UTC."""
        person = self.people.get(staff_id)
        own = person.timezone if person is not None else None
        return own or self.timezone or "UTC"


class RulesSettings(_Section):
    path: Path | None = None
    """The rules YAML (docs/rules.md); relative to the config file. None: no rules, the
    severity cadence applies and nobody is assigned follow-ups."""
    reload_interval: PositiveDuration = timedelta(seconds=2)
    followup_sweep: PositiveDuration = timedelta(seconds=30)
    history_window: Duration = timedelta(days=30)


def a_retention(value: timedelta | None) -> timedelta | None:
    """``retention.messages`` (and ``db purge --older-than``): at least a day."""
    if value is not None and value < timedelta(days=1):
        raise ValueError(
            "must be at least 1d: an incident's messages may still be retried, reported or "
            "counted in its first hours after it is closed"
        )
    return value


class RetentionSettings(_Section):
    """How long the per-message records of a closed incident are kept
    (:mod:`broadcaster.incidents.retention`)."""

    messages: Annotated[Duration | None, AfterValidator(a_retention)] = None
    """After an incident is closed, how long its deliveries, their history and its staff
    notices are kept; None (the default) keeps them for ever."""
    interval: PositiveDuration = timedelta(hours=1)
    """How often the leading daemon looks for incidents to purge."""
    batch: int = Field(default=5000, ge=1, le=100_000)
    """Deliveries deleted per transaction."""


class HttpSettings(_Section):
    """The daemon's HTTP server: the API, the console, public pages, provider callbacks,
    inbound SMS, health and metrics."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    """Larger request bodies are refused with 413 (customer imports have their own limit)."""
    public_metrics: bool = False
    """Serve /metrics without a token (default: a viewer token, e.g. Prometheus's
    ``authorization: {credentials_file: …}``)."""
    trusted_proxies: list[str] = Field(default_factory=list)
    """Addresses or networks (``10.0.0.5``, ``10.0.0.0/24``, ``::1``; ``*`` for any) of the
    reverse proxies whose ``X-Forwarded-For`` / ``X-Forwarded-Proto`` are believed: the
    client address the audit log and the login throttle see. Empty (the default): no
    forwarded header is believed from anyone, the local host included."""

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses(cls, values: list[str]) -> list[str]:
        cleaned = [value.strip() for value in values]
        if "*" in cleaned and len(cleaned) > 1:
            raise ValueError("'*' trusts every address: give it alone, or list the proxies")
        for value in cleaned:
            if value == "*":
                continue
            try:
                network = ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not an IP address or network (a host name is not "
                    "accepted: proxies are recognised by the address that connects)"
                ) from None
            try:
                ipaddress.ip_network(value)  # strict: the server ignores host bits silently
            except ValueError:
                raise ValueError(
                    f"{value!r} has host bits set: the network is {network} (write that)"
                ) from None
        return cleaned


def _one_or_more(value: object) -> object:
    return value if isinstance(value, list | tuple) else [value]


def _none_empty(secrets: list[SecretStr]) -> list[SecretStr]:
    if not secrets:
        raise ValueError("no secret given: give one, or a list of them while rotating")
    for index, secret in enumerate(secrets):
        if not secret.get_secret_value().strip():
            which = "the secret" if len(secrets) == 1 else f"secret {index + 1} of {len(secrets)}"
            raise ValueError(
                f"{which} is empty (an unset variable?): every request from this source "
                "would be refused, or with a bearer token, anyone let in"
            )
    return secrets


WebhookSecrets = Annotated[
    list[SecretStr], BeforeValidator(_one_or_more), AfterValidator(_none_empty)
]
"""One webhook source's secret, or several (rotation): a string or a list of strings."""


class RedactSettings(_Section):
    """What the logs hide (broadcaster.logs): all of it unless turned off, e.g. to debug."""

    secrets: bool = True
    """Configured secrets, credentials by their shape, extras named like a secret."""
    phones: bool = True
    """Phone numbers in international form: ``+…78``."""
    emails: bool = True
    """Email addresses: ``j…@….org``."""


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"
    redact: RedactSettings = RedactSettings()


def _default_channels() -> dict[str, AnyChannelSettings]:
    return {"console": ConsoleSettings()}


class Settings(_Section):
    """The whole configuration."""

    database: DatabaseSettings = DatabaseSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    delivery: DeliverySettings = DeliverySettings()
    channels: dict[str, ChannelSettings] = Field(default_factory=_default_channels)
    messages: MessageSettings = MessageSettings()
    http: HttpSettings = HttpSettings()
    staff: StaffSettings = StaffSettings()
    rules: RulesSettings = RulesSettings()
    retention: RetentionSettings = RetentionSettings()
    feeds: list[FeedSettings] = Field(default_factory=list)
    """Sources the daemon polls (docs/intake.md)."""
    webhook_secrets: dict[str, WebhookSecrets] = Field(default_factory=dict)
    """Per webhook source: the Alertmanager bearer token or the signed-webhook secret, or a
    list of them while one is rotated (any of them is accepted). Kept as a list."""
    hooks: dict[str, HookSettings] = Field(default_factory=dict)
    log: LogSettings = LogSettings()
    event_loop: EventLoopChoice = DEFAULT_EVENT_LOOP
    """The daemon's event loop: uvloop (the default, but on Windows) or asyncio's own
    (:mod:`broadcaster.eventloop`)."""


def _database_problems(database: DatabaseSettings) -> list[tuple[tuple[str, ...], str]]:
    """A pooler is PostgreSQL's, and needs a direct URL beside it (``direct_url``)."""
    problems: list[tuple[tuple[str, ...], str]] = []
    postgres = "postgresql+asyncpg://"
    if database.pooler == "none":
        if database.direct_url is not None and not database.direct_url.startswith(postgres):
            problems.append((("database", "direct_url"), f"must be a {postgres}… URL (PostgreSQL)"))
        return problems
    if not database.url.startswith(postgres):
        problems.append(
            (
                ("database", "pooler"),
                f"pooler {database.pooler!r} is for PostgreSQL: database.url must be a "
                f"{postgres}… URL (the pooler's address)",
            )
        )
    if database.direct_url is None:
        problems.append(
            (
                ("database", "pooler"),
                f"pooler {database.pooler!r} needs database.direct_url, a URL straight to "
                "the PostgreSQL server: the leader's advisory lock must end with its "
                "daemon's session, and a pooler keeps the server session open",
            )
        )
    elif not database.direct_url.startswith(postgres):
        problems.append((("database", "direct_url"), f"must be a {postgres}… URL (PostgreSQL)"))
    elif database.direct_url == database.url:
        problems.append(
            (
                ("database", "direct_url"),
                "is the same as database.url: give the PostgreSQL server's own address, "
                "not the pooler's",
            )
        )
    return problems


def _manager_loop(name: str, people: dict[str, StaffMember]) -> str | None:
    """``ann -> maria -> ann`` when following ``name``'s managers comes back to it."""
    chain = [name]
    current = people[name].manager
    while current is not None and current in people:
        chain.append(current)
        if current == name:
            return " -> ".join(chain)
        if len(chain) > len(people):  # a loop further up: reported for its own members
            return None
        current = people[current].manager
    return None


STAFF_CONTACTS = ("email", "sms")
"""What a staff notification channel may reach: staff have an email address and a phone."""


def cross_check(settings: Settings) -> list[tuple[tuple[str | int, ...], str]]:
    """Checks that span sections; each problem with the path of the key at fault."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    problems += _database_problems(settings.database)
    seen_feeds: set[str] = set()
    for index, feed in enumerate(settings.feeds):
        if feed.name in seen_feeds:
            problems.append((("feeds", index, "name"), f"feed name {feed.name!r} is used twice"))
        elif feed.name in settings.webhook_secrets:
            problems.append(
                (("feeds", index, "name"), f"{feed.name!r} is also a webhook source; rename one")
            )
        seen_feeds.add(feed.name)
    for name in settings.hooks:
        if name not in settings.webhook_secrets:
            problems.append(
                (("hooks", name), f"webhook source {name!r} has no webhook_secrets entry")
            )
    owners: dict[str, str] = {}
    for name, secrets in settings.webhook_secrets.items():
        for secret in secrets:
            other = owners.setdefault(secret.get_secret_value(), name)
            if other != name:
                # The signature covers the timestamp and the body, not the source: a
                # request signed for one could be replayed to the other.
                problems.append(
                    (
                        ("webhook_secrets", name),
                        f"shares a secret with {other!r}; give each source its own",
                    )
                )
                break
    for name, spec in settings.channels.items():
        contact = getattr(spec, "contact", None)
        if contact is not None and contact not in (*CONTACT_KINDS, EVERY_CUSTOMER):
            # A typo here reached no customer, silently: no contact point has that kind.
            kinds = ", ".join((*CONTACT_KINDS, EVERY_CUSTOMER))
            problems.append(
                (
                    ("channels", name, "contact"),
                    f"unknown contact kind {contact!r} (one of: {kinds})",
                )
            )
    known = ", ".join(sorted(settings.channels)) or "none"
    delivery = settings.delivery
    for key, names in (("channels", delivery.channels), ("failover", delivery.failover)):
        for index, name in enumerate(names):
            if name not in settings.channels:
                problems.append(
                    (("delivery", key, index), f"unknown channel {name!r} (defined: {known})")
                )
    for key, mapping in (("rate_limits", delivery.rate_limits), ("throttle", delivery.throttle)):
        for name in mapping:
            if name not in settings.channels:
                problems.append(
                    (("delivery", key, name), f"unknown channel {name!r} (defined: {known})")
                )
    people = settings.staff.people
    for name, member in people.items():
        if len(name) > STAFF_ID_MAX:
            problems.append(
                (
                    ("staff", "people", name),
                    f"staff id {name!r} is {len(name)} characters long; at most "
                    f"{STAFF_ID_MAX} (the store's follow-up owners and staff notices)",
                )
            )
        if member.manager is not None and member.manager not in people:
            problems.append(
                (("staff", "people", name, "manager"), f"unknown staff {member.manager!r}")
            )
        elif (chain := _manager_loop(name, people)) is not None:
            # Escalation goes up the managers: round a loop, an overdue task came back to
            # its own owner as if to a manager.
            problems.append((("staff", "people", name, "manager"), f"managers go round: {chain}"))
    for name, group in settings.staff.groups.items():
        for index, member_id in enumerate(group.members):
            if member_id not in people:
                problems.append(
                    (("staff", "groups", name, "members", index), f"unknown staff {member_id!r}")
                )
        if group.on_call is not None and group.on_call not in people:
            problems.append(
                (("staff", "groups", name, "on_call"), f"unknown staff {group.on_call!r}")
            )
        if not group.members and group.on_call is None:
            # A rule's group:NAME or on_call:NAME then named nobody: its follow-ups went to
            # a fallback owner, or none, and its notices to no one, found out in an incident.
            problems.append(
                (
                    ("staff", "groups", name, "members"),
                    f"group {name!r} names nobody: a rule's group:{name} or on_call:{name} "
                    "would reach no one; list its staff ids in members (or set on_call), "
                    "or remove the group",
                )
            )
    unassigned = settings.staff.unassigned_owner
    if unassigned is not None and unassigned not in people:
        problems.append(
            (("staff", "unassigned_owner"), f"unknown staff {unassigned!r} (see staff.people)")
        )
    notify = settings.staff.notify_channel
    if notify is not None and notify not in settings.channels:
        problems.append(
            (("staff", "notify_channel"), f"unknown channel {notify!r} (defined: {known})")
        )
    elif notify is not None:
        reaches = getattr(settings.channels[notify], "contact", None)
        if reaches not in STAFF_CONTACTS:
            # Staff have an email address and a phone number: a push channel would get an
            # email address for a device token, and every notice would fail.
            problems.append(
                (
                    ("staff", "notify_channel"),
                    f"channel {notify!r} reaches {reaches or 'no'} addresses; staff are told "
                    "by email or SMS: name a channel whose contact is email or sms",
                )
            )
    for name, throttle in delivery.throttle.items():
        if throttle.fallback is not None and throttle.fallback not in settings.channels:
            problems.append(
                (
                    ("delivery", "throttle", name, "fallback"),
                    f"unknown channel {throttle.fallback!r} (defined: {known})",
                )
            )
    if settings.retention.messages is not None and settings.rules.history_window <= timedelta(0):
        problems.append(
            (
                ("rules", "history_window"),
                "0s counts a customer's whole history, which retention.messages deletes: "
                "give the window a length (e.g. 365d), or unset retention.messages",
            )
        )
    return problems
