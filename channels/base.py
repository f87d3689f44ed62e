"""The channel protocol: send one message to one target, get a receipt or a typed error.

Error tree::

    Exception
     └── DeliveryError            one send failed
          retryable: bool         True when trying again later can help
          reason: str             what went wrong, for the delivery row and the logs
          retry_after: float|None seconds the provider asked us to wait, if it said
          throttled: bool         the provider refused the sender's rate as a whole
                                  (account, project, sender), not this one recipient:
                                  the dispatcher pauses the channel, not just the message
          throttled_scope: str|None
                                  with ``throttled``, the part of the channel the refusal
                                  is about (one push service, one customer's host): only
                                  the channel's messages whose address is in it pause
          contact_point: ContactPointState|None
                                  set on permanent errors that condemn the address
                                  itself (opted out, invalid, unregistered), so the
                                  daemon stops trying it

Like Alertmanager's notifier, a channel never returns ``False``: it either returns a
:class:`Receipt` or raises :class:`DeliveryError` that says whether to retry.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable


class ContactPointState(enum.StrEnum):
    """What a permanent error says about the address itself."""

    OPTED_OUT = "opted_out"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class Target:
    """Whom to send to: one address on one channel, and who is behind it."""

    address: str
    name: str = ""
    customer_id: str = ""


@dataclass(frozen=True, slots=True)
class Message:
    """What to send. Channels pick the parts they can carry.

    ``idempotency_key`` is the delivery id: providers that accept one get it, and
    every channel puts it where a receiver can de-duplicate on it.
    """

    subject: str
    text: str
    html: str | None = None
    idempotency_key: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    """When the message was composed (the daemon's clock); email uses it for ``Date``."""
    thread: str = ""
    """The conversation the message belongs to, the same in each of its messages for its
    whole life: ``incident-<id>-<declared>`` for an incident's rounds; empty for a message
    that stands alone (a channel test, a staff notice). Email threads a customer's messages
    on it, push channels group an incident's notifications on it (:func:`push_thread`)."""
    posted_at: datetime | None = None
    """When what the message tells was posted (the incident update its round carries): the
    same in every attempt at the message, where ``created_at`` is each attempt's own. Email
    mixes it into the Message-ID, so that a new store, whose delivery ids start again at 1,
    cannot repeat an earlier store's Message-IDs."""


URGENCY_HEADER = "X-Broadcaster-Urgency"
"""The escalation step's urgency, ``low``, ``normal`` or ``high`` (the rules' ``urgency``)."""


def urgency_step(message: Message) -> int:
    """The message's urgency as a step from a channel's configured priority: -1 for ``low``,
    +1 for ``high``, 0 for ``normal`` or none. Channels that know priorities apply it."""
    return {"low": -1, "high": 1}.get(message.headers.get(URGENCY_HEADER, ""), 0)


LINK_HEADER = "X-Broadcaster-Link"
"""The public incident page the message links to (every incident message has one)."""

KIND_HEADER = "X-Broadcaster-Kind"
"""What the message is: ``first``, ``update``, ``no_news`` or ``resolution``."""

SUPERSEDING_KINDS = frozenset({"no_news", "resolution"})
"""Kinds whose push notification replaces the incident's last "no news yet" on the device
(:func:`push_replaces`): a newer "no news yet" says all an older one did, and the resolution
ends the wait. A first notice or an operator's update is never replaced (it may hold a
workaround the customer has not read yet), and nothing but a reopened incident's "no news
yet" or a later resolution replaces a resolution."""

PUSH_ID_LIMIT = 64
"""Bytes of a push grouping or collapse id: APNs refuses an ``apns-collapse-id`` over 64."""


def push_thread(message: Message, limit: int = PUSH_ID_LIMIT) -> str | None:
    """What a push channel groups the message's notification under (APNs ``thread-id``):
    its :attr:`Message.thread` in the base64url alphabet (which every push header takes,
    RFC 8030's ``Topic`` too) and at most ``limit`` characters; None for a message that
    stands alone."""
    return _push_id(message.thread, limit) if message.thread else None


def push_replaces(message: Message, limit: int = PUSH_ID_LIMIT) -> str | None:
    """The id under which the message's notification replaces an earlier one of its
    incident (APNs ``apns-collapse-id``, FCM's Android ``tag``), or None when it must stand
    on its own. Only the kinds in :data:`SUPERSEDING_KINDS` share it: one place per incident
    for "no news yet", which the resolution takes over."""
    if not message.thread or message.headers.get(KIND_HEADER) not in SUPERSEDING_KINDS:
        return None
    return _push_id(f"{message.thread}-wait", limit)


def _push_id(value: str, limit: int) -> str:
    """``value`` when it is base64url text of at most ``limit`` characters; else what of it
    is, cut short, and a digest of the whole (64 bits), so that two values do not share one."""
    if len(value) <= limit and _PUSH_ID.fullmatch(value):
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    cleaned = _PUSH_UNSAFE.sub("_", value)[: max(limit - len(digest) - 1, 0)]
    return f"{cleaned}_{digest}"[-limit:]


_PUSH_ID = re.compile(r"[A-Za-z0-9_-]+")
_PUSH_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True, slots=True)
class Receipt:
    """Proof that the provider accepted the message."""

    provider_message_id: str | None = None
    detail: str = ""


class DeliveryError(Exception):
    """One send failed; ``retryable`` says whether trying again can help."""

    def __init__(
        self,
        reason: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        contact_point: ContactPointState | None = None,
        throttled: bool = False,
        throttled_scope: str | None = None,
    ) -> None:
        if not isinstance(throttled, bool):
            raise TypeError(f"DeliveryError: throttled must be a bool, not {throttled!r}")
        if throttled_scope is not None:
            if not isinstance(throttled_scope, str) or not throttled_scope:
                raise TypeError(
                    "DeliveryError: throttled_scope must be a non-empty str or None, "
                    f"not {throttled_scope!r}"
                )
            if not throttled:
                raise ValueError("DeliveryError: a throttled_scope needs throttled=True")
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after
        self.contact_point = contact_point
        self.throttled = throttled
        """The provider said the *sender* is over its rate (an account's, a project's, a
        sender's queue), not that this recipient gets too much: every other message of the
        channel would be refused alike, so the dispatcher pauses the channel for
        ``retry_after`` (or a default) instead of sending them into the same refusal. Left
        False for a refusal about one recipient (a device token sent to too often). A
        refusal about one receiver among several the channel reaches is throttled with a
        ``throttled_scope``."""
        self.throttled_scope = throttled_scope
        """With ``throttled``: the throttle applies to the messages of this channel whose
        address is in this scope; None (the default) for the whole channel. For a channel
        that reaches several receivers (Web Push's push services, the customers' own hosts
        of a webhook) it is the refusing receiver's origin, which the channel's
        ``pause_scope`` gives of each address (see :class:`Channel`, :func:`scope_of`):
        the dispatcher pauses that scope, and the other receivers' messages go on."""

    def __repr__(self) -> str:
        scope = self.throttled_scope
        shown = "" if scope is None else f", throttled_scope={scope!r}"
        return (
            f"DeliveryError({self.reason!r}, retryable={self.retryable}, "
            f"retry_after={self.retry_after}, contact_point={self.contact_point}, "
            f"throttled={self.throttled}{shown})"
        )


CONTACT_KINDS: tuple[str, ...] = ("email", "sms", "webhook", "fcm", "apns", "webpush", "ntfy")
"""The kinds of customers' contact points a channel's ``contact`` may name: what the customer
import writes (an email address, a phone number, a push token whose provider is its kind),
and a customer's own webhook URL."""

EVERY_CUSTOMER = "customer"
"""A channel whose contact is ``customer`` reaches every affected customer, addressed by id (a
fixed-URL webhook into a CRM, say); no contact point is needed."""


@runtime_checkable
class Channel(Protocol):
    """A way to reach a customer. ``contact`` names the contact-point kind it addresses.

    A channel may also carry ``concurrency``: how many sends it has on the wire at once
    (its connection pool), further sends waiting inside it. The dispatcher then prepares
    only a few messages ahead of each free connection, so that a batch's rendering does
    not keep the loop from answering the connections (see :func:`concurrency_of`). And it
    may have ``units(message)``: what a message costs against its rate limit (an SMS
    channel: its segments; see :func:`units_of`). A channel that raises throttles with a
    ``throttled_scope`` has ``pause_scope(address)``: the scope an address of it is in,
    computed by the same pure function the channel names its throttles' scope with (see
    :func:`scope_of`).
    """

    name: str
    contact: str

    async def send(self, target: Target, message: Message) -> Receipt:
        """Send one message to one target; raise :class:`DeliveryError` on failure."""
        ...

    async def aclose(self) -> None:
        """Release connections; called once at shutdown."""
        ...


def units_of(channel: object, message: Message) -> int:
    """What ``message`` costs against the channel's rate limit: the channel's ``units``
    of it where it has that method (an SMS channel: its segments, which providers count),
    else 1."""
    units = getattr(channel, "units", None)
    if units is None:
        return 1
    value = units(message)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"channel {getattr(channel, 'name', channel)!r}: units {value!r}")
    return value


def scope_of(channel: object, address: str) -> str | None:
    """The throttle scope ``address`` is in on ``channel`` (a :attr:`DeliveryError.
    throttled_scope` the channel may raise), from its ``pause_scope`` where it has that
    method; None when it has none, or the address has no scope (not a usable address)."""
    pause_scope = getattr(channel, "pause_scope", None)
    if pause_scope is None:
        return None
    scope = pause_scope(address)
    if scope is not None and not isinstance(scope, str):
        raise ValueError(f"channel {getattr(channel, 'name', channel)!r}: pause scope {scope!r}")
    return scope or None


def concurrency_of(channel: object) -> int | None:
    """The channel's ``concurrency`` (sends on the wire at once), or None when it declares
    none. Optional, so that a channel without a small pool need not say anything."""
    value = getattr(channel, "concurrency", None)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"channel {getattr(channel, 'name', channel)!r}: concurrency {value!r}")
    return value
