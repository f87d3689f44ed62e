"""One retry table for every HTTP channel, as Alertmanager keeps one for every integration.

Each row is one answer of the provider (an HTTP status with the provider's own error body,
a Retry-After, a hang past the client timeout, a connection reset, a proxy echoing the
request); each column one channel talking to its fake over real HTTP. A cell is the
decision the channel must take:

- ``OK``: a :class:`~channels.base.Receipt` with the provider's message id;
- ``RETRY``: ``DeliveryError(retryable=True)`` with no ``retry_after``; ``retry(s)``: with
  ``retry_after == s`` (the header's value, or the channel's documented floor);
- ``PERMANENT``: not retryable, the contact point untouched (a configuration or message
  problem: the dispatcher fails over);
- ``DISABLED`` / ``OPTED_OUT``: not retryable, and the contact point is condemned.

The cells follow each channel's docstring and docs/channels/*.md. Cells where the channel
departs from the DESIGN contract are listed in :data:`DEVIATIONS` and run as strict xfails,
so fixing the channel turns them into failures that ask for the entry to be removed.

Every cell also checks that the decision's text holds none of the rig's secrets, and none of
a body the provider sent (only structured error fields may be quoted).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from channels.base import Channel, DeliveryError, Message, Target
from tests.fakes.control import ResettingServer, Scripted
from tests.fakes.http import serve
from tests.integration import retry_cases
from tests.integration.retry_cases import ECHO_MARKER, Rig, echo_app


@dataclass(frozen=True)
class Expect:
    """One cell: the outcome class and, for retries, the ``retry_after`` in seconds."""

    outcome: str
    retry_after: float | None = None

    def __str__(self) -> str:
        wait = f" after {self.retry_after:g}s" if self.retry_after is not None else ""
        return self.outcome + wait


OK = Expect("ok")
RETRY = Expect("retry")
PERMANENT = Expect("permanent")
DISABLED = Expect("disabled")
OPTED_OUT = Expect("opted_out")  # Twilio 21610 (STOP); no bare status produces it


def retry(seconds: float) -> Expect:
    return Expect("retry", seconds)


CHANNELS = ("twilio", "fcm", "apns", "webpush", "ntfy", "webhook")


def row(*cells: Expect) -> dict[str, Expect]:
    """One row of the table: the cells in :data:`CHANNELS` order."""
    return dict(zip(CHANNELS, cells, strict=True))


# fmt: off
TABLE: dict[str, dict[str, Expect]] = {
    #                twilio     fcm        apns       webpush    ntfy       webhook
    # Each fake's normal success: Twilio 201, FCM 200, APNs 200, Web Push 201, ntfy/webhook 200.
    "2xx":      row(OK,        OK,        OK,        OK,        OK,        OK),
    # Twilio's own 400 body is error 21211 (not a valid phone number): the number is bad.
    "400":      row(DISABLED,  PERMANENT, PERMANENT, PERMANENT, PERMANENT, PERMANENT),
    # FCM sees 401 twice: it retries once, inside the send, with a fresh access token.
    "401":      row(PERMANENT, PERMANENT, PERMANENT, PERMANENT, PERMANENT, PERMANENT),
    "403":      row(PERMANENT, PERMANENT, PERMANENT, PERMANENT, PERMANENT, PERMANENT),
    # FCM 404 NOT_FOUND with errorCode UNREGISTERED, push service 404: token / subscription
    # gone. APNs 404 BadPath, ntfy 404, webhook 404: base_url / url is wrong, the contact
    # point is not to blame.
    "404":      row(PERMANENT, DISABLED,  PERMANENT, DISABLED,  PERMANENT, PERMANENT),
    # Google's NOT_FOUND without an FcmError UNREGISTERED (a wrong project_id): FCM's token is
    # not to blame. Elsewhere a JSON body of no known schema: the 404 decides.
    "404-nf":   row(PERMANENT, PERMANENT, PERMANENT, DISABLED,  PERMANENT, PERMANENT),
    # 408 Request Timeout: the server gave up waiting for our request; sending again can help.
    "408":      row(RETRY,     RETRY,     RETRY,     RETRY,     RETRY,     RETRY),
    # The webhook rig posts to a fixed url: its 410 is about the endpoint, not the customer.
    "410":      row(PERMANENT, PERMANENT, DISABLED,  DISABLED,  PERMANENT, PERMANENT),
    "413":      row(PERMANENT, PERMANENT, PERMANENT, PERMANENT, PERMANENT, PERMANENT),
    # FCM QUOTA_EXCEEDED without Retry-After waits at least 60 s (fcm_errors.QUOTA_DEFAULT_WAIT).
    "429":      row(RETRY,     retry(60), RETRY,     RETRY,     RETRY,     RETRY),
    "429-ra7":  row(retry(7),  retry(7),  retry(7),  retry(7),  retry(7),  retry(7)),
    "500":      row(RETRY,     RETRY,     RETRY,     RETRY,     RETRY,     RETRY),
    "502":      row(RETRY,     RETRY,     RETRY,     RETRY,     RETRY,     RETRY),
    "503-ra3":  row(retry(3),  retry(3),  retry(3),  retry(3),  retry(3),  retry(3)),
    "timeout":  row(RETRY,     RETRY,     RETRY,     RETRY,     RETRY,     RETRY),
    "reset":    row(RETRY,     RETRY,     RETRY,     RETRY,     RETRY,     RETRY),
    # A proxy answers 500 with the request, credentials and all: as text/plain (echo), and
    # inside every common JSON error field (json). APNs, a TLS client meeting a plain-HTTP
    # proxy, fails to connect. Either way no credential may reach the reason.
    "500-echo": row(RETRY,     RETRY,     RETRY,     RETRY,     RETRY,     RETRY),
    "500-json": row(RETRY,     RETRY,     RETRY,     RETRY,     RETRY,     RETRY),
}
# fmt: on

DEVIATIONS: dict[tuple[str, str], str] = {}
"""Cells where the channel's current decision departs from the DESIGN contract (reported,
not fixed here): they run as strict xfails. None at present."""

UNREDACTED = re.compile(r"(Bearer |Basic |vapid t=|signature: |eyJ)(?!\[redacted\])")
"""A credential as an echoed request shows it (a JWT starts with ``eyJ``), not redacted."""

TIMEOUT = 5.0
"""Client timeout of every row but ``timeout`` (generous: a slow machine is not a fault)."""
SHORT_TIMEOUT = 0.5
HANG = 2.5
"""How long the fake waits before answering in the ``timeout`` row (well past SHORT_TIMEOUT)."""
REPEAT = 2
"""Each scripted answer is queued this often: the provider answers every request of the
send alike, also the one a channel makes again inside one send (FCM after a 401)."""


@dataclass(frozen=True)
class Case:
    """What the provider does in one row."""

    answer: Scripted | None = None
    """Queued on the fake's FaultPlan; ``None``: it behaves normally. ``body=None`` means the
    provider's own error body for the status."""
    reset: bool = False
    """Connect to a server that resets every connection instead."""
    echo: str = ""
    """``text`` / ``json``: connect instead to a proxy that answers 500 with the request
    (:func:`~tests.integration.retry_cases.echo_app`)."""
    timeout: float = TIMEOUT


GOOGLE_NOT_FOUND = json.dumps(
    {"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND"}}
).encode()
"""What the FCM API answers for a project that does not exist: no FcmError detail."""


CASES: dict[str, Case] = {
    "2xx": Case(),
    "400": Case(Scripted(400)),
    "401": Case(Scripted(401)),
    "403": Case(Scripted(403)),
    "404": Case(Scripted(404)),
    "404-nf": Case(Scripted(404, body=GOOGLE_NOT_FOUND)),
    "408": Case(Scripted(408)),
    "410": Case(Scripted(410)),
    "413": Case(Scripted(413)),
    "429": Case(Scripted(429)),
    "429-ra7": Case(Scripted(429, headers={"Retry-After": "7"})),
    "500": Case(Scripted(500)),
    "502": Case(Scripted(502)),
    "503-ra3": Case(Scripted(503, headers={"Retry-After": "3"})),
    "timeout": Case(Scripted(200, hang=HANG), timeout=SHORT_TIMEOUT),
    "reset": Case(reset=True),
    "500-echo": Case(echo="text"),
    "500-json": Case(echo="json"),
}


def _params() -> list[Any]:
    params = []
    for case, cells in TABLE.items():
        for channel in CHANNELS:
            deviation = DEVIATIONS.get((case, channel))
            marks = (
                [pytest.mark.xfail(strict=True, raises=AssertionError, reason=deviation)]
                if deviation
                else []
            )
            cell = cells[channel]
            params.append(pytest.param(case, channel, cell, marks=marks, id=f"{case}-{channel}"))
    return params


# Fixtures: each fake starts once per module -----------------------------------------------


@pytest.fixture(scope="module")
def twilio_rig() -> Iterator[Rig]:
    with retry_cases.twilio_rig() as opened:
        yield opened


@pytest.fixture(scope="module")
def fcm_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with retry_cases.fcm_rig(tmp_path_factory.mktemp("fcm")) as opened:
        yield opened


@pytest.fixture(scope="module")
def apns_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with retry_cases.apns_rig(tmp_path_factory.mktemp("apns")) as opened:
        yield opened


@pytest.fixture(scope="module")
def webpush_rig() -> Iterator[Rig]:
    with retry_cases.webpush_rig() as opened:
        yield opened


@pytest.fixture(scope="module")
def ntfy_rig() -> Iterator[Rig]:
    with retry_cases.ntfy_rig() as opened:
        yield opened


@pytest.fixture(scope="module")
def webhook_rig() -> Iterator[Rig]:
    with retry_cases.webhook_rig() as opened:
        yield opened


@pytest.fixture(scope="module")
def resetting() -> Iterator[ResettingServer]:
    """One per module: its shutdown waits out a blocked accept()."""
    with ResettingServer() as server:
        yield server


@pytest.fixture(scope="module")
def echo() -> Iterator[dict[str, str]]:
    with serve(echo_app()) as text, serve(echo_app(as_json=True)) as document:
        yield {"text": text, "json": document}


@pytest.fixture
def rig(request: pytest.FixtureRequest, channel: str) -> Iterator[Rig]:
    """The channel's rig with an empty FaultPlan, emptied again afterwards."""
    opened: Rig = request.getfixturevalue(f"{channel}_rig")
    opened.plan.clear()
    yield opened
    opened.plan.clear()


# The table --------------------------------------------------------------------------------


async def _decision(channel: Channel, target: Target, key: str) -> tuple[Expect, str]:
    """What the channel decided, as a cell, and the text behind it (for failure messages)."""
    message = Message(
        subject="Line 4 stopped",
        text="Trains on line 4 are stopped. Next update by 14:30.",
        idempotency_key=key,
    )
    try:
        receipt = await channel.send(target, message)
    except DeliveryError as error:
        text = f"{error!r}"
        if error.retryable:
            outcome = (
                "retry" if error.contact_point is None else f"retry+{error.contact_point.value}"
            )
            return Expect(outcome, error.retry_after), text
        outcome = error.contact_point.value if error.contact_point else "permanent"
        # retry_after on a permanent error would be meaningless; show it if set.
        return Expect(outcome, error.retry_after), text
    if not receipt.provider_message_id:
        return Expect("ok without a provider message id"), repr(receipt)
    return OK, repr(receipt)


@pytest.mark.parametrize(("case", "channel", "expected"), _params())
async def test_retry_decision(
    case: str, channel: str, expected: Expect, rig: Rig, request: pytest.FixtureRequest
) -> None:
    spec = CASES[case]
    if spec.answer is not None:
        rig.plan.push(*[spec.answer] * REPEAT)
    via: str | None = None
    if spec.reset:
        server: ResettingServer = request.getfixturevalue("resetting")
        via = server.url
    if spec.echo:
        via = request.getfixturevalue("echo")[spec.echo]
    sender = rig.make(spec.timeout, via)
    try:
        got, detail = await _decision(sender, rig.target(via), f"retry-table-{case}-{channel}")
    finally:
        await sender.aclose()
    assert got == expected, f"{case} on {channel}: expected {expected}, got {got}: {detail}"
    for secret in rig.secrets:
        assert secret not in detail
    assert not UNREDACTED.search(detail), f"a credential reached the reason: {detail}"
    if spec.echo != "json":  # the JSON echo fills the very fields a reason may quote
        assert ECHO_MARKER not in detail, f"a raw body reached the reason: {detail}"


def test_the_table_covers_every_case_and_channel() -> None:
    assert list(TABLE) == list(CASES)
    for case, cells in TABLE.items():
        assert tuple(cells) == CHANNELS, case
    for case, channel in DEVIATIONS:
        assert channel in TABLE[case]
    outcomes = {cell.outcome for cells in TABLE.values() for cell in cells.values()}
    assert outcomes <= {"ok", "retry", "permanent", "disabled", "opted_out"}


def test_retry_after_appears_only_on_retries() -> None:
    for cells in TABLE.values():
        for cell in cells.values():
            assert cell.retry_after is None or cell.outcome == "retry"
