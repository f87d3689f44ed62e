"""Providers failing 20% of requests at random: every delivery still ends sent, once per key.

Two channels (the signed webhook and Twilio SMS) each talk to their fake provider through a
:class:`~tests.reliability.chaos.ResetProxy` (4% of requests reset at the TCP level) and a
:class:`~tests.reliability.chaos.Chaos` middleware (16% answered with 5xx, 429 + Retry-After,
a timeout, a late answer after the provider accepted, or a slow answer). Three rounds go out
(first, no news, resolution) on a fake clock, so backoff costs no wall time; the channels'
real HTTP timeouts do.

What must hold: every delivery row ends ``sent``; each provider received every delivery key
of its channel, for the right address, and nothing else; the only repeated keys are those a
"late" answer made the client retry (the provider had accepted; the receiver drops them by
key), and their count is reported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from broadcaster.clock import FakeClock
from broadcaster.config.settings import Settings
from broadcaster.engine import Engine
from broadcaster.incidents import service
from broadcaster.store import Database, Delivery
from channels.base import Channel
from channels.twilio_sms import TwilioSettings, TwilioSmsChannel
from channels.webhook import WebhookChannel, WebhookSettings
from tests.fakes.http import serve
from tests.fakes.twilio import FakeTwilio, new_sid
from tests.fakes.webhook import WebhookReceiver
from tests.reliability.chaos import KINDS, Chaos, ResetProxy
from tests.reliability.common import START, add_customers, address, delivery_states, drain

CUSTOMERS = 40
CLIENT_TIMEOUT = 0.6
HTTP_FAULTS = 0.16
RESETS = 0.04
"""Together: one request in five fails."""
SECRET = "whsec-provider-faults-0123456789"


def settings() -> Settings:
    return Settings.model_validate(
        {
            "schedule": {"cadence": {"critical": "15m"}, "audience_batch": 50},
            "delivery": {
                "channels": ["hook", "sms"],
                "batch_size": 40,
                "lease": "10m",
                "max_attempts": 40,
                "backoff": {"initial": "1s", "maximum": "20s", "jitter": 0.2},
            },
            "channels": {"hook": {"type": "console"}, "sms": {"type": "console"}},
        }
    )


class Providers:
    """The two fakes, behind chaos and reset proxies, and channels pointed at them."""

    def __init__(self, seed: int) -> None:
        self.receiver = WebhookReceiver(SECRET)
        self.twilio = FakeTwilio()
        self.hook_chaos = Chaos(
            self.receiver.app, rate=HTTP_FAULTS, client_timeout=CLIENT_TIMEOUT, seed=seed
        )
        self.sms_chaos = Chaos(
            self.twilio.app, rate=HTTP_FAULTS, client_timeout=CLIENT_TIMEOUT, seed=seed + 1
        )
        self.proxies: list[ResetProxy] = []
        self.channels: dict[str, Channel] = {}
        self._seed = seed

    def open(self, hook_url: str, sms_url: str) -> None:
        hook_port = int(hook_url.rsplit(":", 1)[1])
        sms_port = int(sms_url.rsplit(":", 1)[1])
        hook_proxy = ResetProxy(hook_port, rate=RESETS, seed=self._seed + 2).__enter__()
        sms_proxy = ResetProxy(sms_port, rate=RESETS, seed=self._seed + 3).__enter__()
        self.proxies = [hook_proxy, sms_proxy]
        self.channels = {
            "hook": WebhookChannel(
                "hook",
                WebhookSettings(
                    url=f"{hook_proxy.url}/hooks/in", secret=SECRET, timeout=CLIENT_TIMEOUT
                ),
            ),
            "sms": TwilioSmsChannel(
                "sms",
                TwilioSettings(
                    account_sid=self.twilio.account_sid,
                    auth_token=self.twilio.auth_token,
                    messaging_service_sid=new_sid("MG"),
                    base_url=sms_proxy.url,
                    status_callback_url="http://127.0.0.1:9/sms/status",
                    timeout=CLIENT_TIMEOUT,
                ),
            ),
        }

    def close(self) -> None:
        for proxy in self.proxies:
            proxy.__exit__(None, None, None)

    def hook_keys(self) -> list[tuple[str, str]]:
        """(idempotency key, address) of every request the webhook receiver accepted,
        duplicates included (the receiver keeps the first and counts the rest)."""
        return [
            (r.headers["idempotency-key"], str(r.json()["address"])) for r in self.receiver.accepted
        ]

    def sms_keys(self) -> list[tuple[str, str]]:
        """(delivery key, number) of every message request that reached Twilio's fake."""
        out = []
        for request in self.twilio.received():
            callback = urlsplit(request.form["StatusCallback"])
            out.append((parse_qs(callback.query)["delivery"][0], request.form["To"]))
        return out


@pytest.fixture
def providers() -> Iterator[Providers]:
    rig = Providers(seed=9)
    with serve(rig.hook_chaos) as hook_url, serve(rig.sms_chaos) as sms_url:
        rig.open(hook_url, sms_url)
        try:
            yield rig
        finally:
            rig.close()


async def test_every_delivery_sent_once_per_key_under_random_faults(
    database: Database, providers: Providers
) -> None:
    clock = FakeClock(START)
    await add_customers(database, clock.now(), CUSTOMERS, ["webhook", "sms"])
    engine = await Engine.create(settings(), database, clock, providers.channels, owner="chaos")
    try:
        incident = await service.declare(
            database,
            clock,
            service.Declaration(
                title="Card payments failing",
                severity="critical",
                message="Card payments fail.",
                components=["payments"],
            ),
        )
        await drain(engine, clock, database)
        clock.set(START + timedelta(minutes=15))  # the "no news" round at the cadence
        await drain(engine, clock, database)
        await service.resolve(database, clock, incident.id, service.UpdateRequest("Fixed."))
        await drain(engine, clock, database)
    finally:
        await engine.aclose()

    assert await delivery_states(database) == {"sent": 3 * 2 * CUSTOMERS}
    async with database.session() as session:
        rows = (
            await session.execute(select(Delivery.id, Delivery.channel, Delivery.address))
        ).all()
    expected = {
        channel: {f"delivery-{row_id}": str(addr) for row_id, ch, addr in rows if ch == channel}
        for channel in ("hook", "sms")
    }
    received = {"hook": providers.hook_keys(), "sms": providers.sms_keys()}
    for channel, pairs in received.items():
        by_key = dict(pairs)
        assert by_key == expected[channel], f"{channel}: keys or addresses differ from the store"
    hook_repeats = providers.receiver.duplicates
    sms_repeats = sum(n - 1 for n in Counter(k for k, _ in received["sms"]).values())
    late = providers.hook_chaos.counts["late"] + providers.sms_chaos.counts["late"]
    counts = providers.hook_chaos.counts + providers.sms_chaos.counts
    resets = sum(p.resets for p in providers.proxies)
    requests = counts["requests"] + resets
    faults = sum(counts[k] for k in KINDS if k != "slow") + resets
    print(
        f"\n[{database.dialect}] {requests} requests, {faults} failed "
        f"({faults / requests:.0%}): {dict(counts)}, resets {resets}; "
        f"repeated keys dropped by the receivers: webhook {hook_repeats}, sms {sms_repeats} "
        f"(late answers: {late})"
    )
    # The faults really happened, every kind of them, at about the rate asked for.
    assert all(counts[k] > 0 for k in KINDS) and resets > 0, (dict(counts), resets)
    assert 0.12 < (faults + counts["slow"]) / requests < 0.30
    # A key repeats only when the provider accepted but the answer came after the client's
    # timeout: a late answer, or (on a very loaded machine) a slow one.
    assert hook_repeats + sms_repeats <= late + counts["slow"]
    assert providers.receiver.accepted[0].headers["idempotency-key"].startswith("delivery-")
    assert address("sms", 0) in {to for _, to in received["sms"]}
