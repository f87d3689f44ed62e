"""What the HTTP handlers share: the store, the clock, the settings, the link secret."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fastapi import Request

from broadcaster.access.credentials import LoginThrottle, Principal
from broadcaster.clock import Clock
from broadcaster.config.settings import Settings
from broadcaster.escalation.holder import RulesHolder
from broadcaster.escalation.plan import Escalation
from broadcaster.followups.directory import Directory
from broadcaster.intake.watch import FeedWatcher
from broadcaster.operations import Actor
from broadcaster.store import Database
from channels.twilio_sms import TwilioSettings


@dataclass
class WebState:
    settings: Settings
    database: Database
    clock: Clock
    link_secret: str
    scheduler_running: bool = False
    rules: RulesHolder | None = None
    feeds: list[FeedWatcher] = field(default_factory=list)
    capacity: Callable[[], list[str]] | None = None
    counters: dict[str, int] = field(default_factory=dict)
    escalation: Escalation | None = None
    directory: Directory | None = None
    logins: LoginThrottle = field(default_factory=LoginThrottle)
    wake: Callable[[], None] = lambda: None
    """Tells this daemon's round loop that a round is due now (set by the daemon)."""
    leading: Callable[[], bool] = lambda: False
    """Whether this daemon holds the leadership now (set by the daemon)."""
    caches: dict[str, object] = field(default_factory=dict)
    """What a page or ``/metrics`` keeps between requests (by its own key)."""

    def twilio_accounts(self) -> list[TwilioSettings]:
        return [s for s in self.settings.channels.values() if isinstance(s, TwilioSettings)]

    def twilio_channels(self) -> list[str]:
        """The names of the channels that send through Twilio."""
        return [name for name, s in self.settings.channels.items() if isinstance(s, TwilioSettings)]

    def public_url_for(self, request: Request) -> str:
        """The URL the provider called, as it saw it: our public base + path + query.

        Signatures (Twilio's) are computed over the public URL, not the one the request
        reached us on behind a proxy."""
        base = self.settings.messages.public_url.rstrip("/")
        query = f"?{request.url.query}" if request.url.query else ""
        return f"{base}{request.url.path}{query}"

    def status_callback_url_for(self, request: Request, account: TwilioSettings) -> str:
        """The URL Twilio called with a status callback of ``account``'s messages: the
        channel's ``status_callback_url`` (without its own query) with this request's query
        (which is that URL's query and the ``delivery`` we add to it), else
        :meth:`public_url_for`, as the channel tells Twilio (broadcaster.dispatch.channels).
        """
        configured = account.status_callback_url
        if configured is None:
            return self.public_url_for(request)
        base = urlsplit(configured)._replace(query="", fragment="").geturl()
        query = f"?{request.url.query}" if request.url.query else ""
        return f"{base}{query}"

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def actor(self, request: Request, principal: Principal) -> Actor:
        """The caller of one request, for :mod:`broadcaster.operations`."""
        return Actor(
            self.database,
            self.clock,
            principal,
            client_source(request),
            self.escalation,
            self.directory or Directory(self.settings.staff),
        )


def client_source(request: Request) -> str:
    """Where a request came from, for the audit log: the client's address."""
    return request.client.host if request.client else ""


def state_of(request: Request) -> WebState:
    state: WebState = request.app.state.broadcaster
    return state
