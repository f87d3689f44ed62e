"""The ntfy channel against a fake ntfy server speaking ntfy's publish API over real HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

import pytest
from pydantic import ValidationError

from channels.base import ContactPointState, DeliveryError, Message, Target
from channels.ntfy import NtfyChannel, NtfySettings, header_value, sequence_id, truncate_utf8
from tests.fakes.control import ResettingServer, Scripted
from tests.fakes.http import free_port, serve
from tests.fakes.ntfy import NtfyServer

TOKEN = "tk_testtoken0123456789abcdefghij"
PASSWORD = "hunter2-but-longer"
T0 = 1_767_225_600.0


class ChannelFactory(Protocol):
    def __call__(self, **settings: Any) -> NtfyChannel: ...


@pytest.fixture
def server() -> NtfyServer:
    return NtfyServer(tokens=[TOKEN], users={"ops": PASSWORD}, clock=lambda: T0)


@pytest.fixture
def base_url(server: NtfyServer) -> Iterator[str]:
    with serve(server.app) as url:
        yield url


@pytest.fixture
async def make_channel(base_url: str) -> AsyncIterator[ChannelFactory]:
    channels: list[NtfyChannel] = []

    def make(**settings: Any) -> NtfyChannel:
        settings.setdefault("base_url", base_url)
        settings.setdefault("timeout", 5.0)
        channel = NtfyChannel("ntfy", NtfySettings(**settings), clock=lambda: T0)
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        await channel.aclose()


def message(**overrides: Any) -> Message:
    fields: dict[str, Any] = {
        "subject": "Line 4 stopped",
        "text": "Trains on line 4 are stopped. Next update by 14:30.",
        "idempotency_key": "delivery-42",
        "headers": {
            "X-Broadcaster-Kind": "first",
            "X-Broadcaster-Severity": "critical",
            "X-Broadcaster-Link": "https://status.example.com/incidents/7",
        },
    }
    fields.update(overrides)
    return Message(**fields)


TOPIC = Target(address="ada_alerts-7f3k", customer_id="c-1")


async def test_publish_carries_title_priority_tags_click_and_sequence(
    make_channel: ChannelFactory, server: NtfyServer
) -> None:
    receipt = await make_channel(icon="https://status.example.com/icon.png").send(TOPIC, message())
    [got] = server.published
    assert got.topic == "ada_alerts-7f3k"
    assert receipt.provider_message_id == got.message["id"]
    assert got.message == {
        "id": got.message["id"],
        "time": int(T0),
        "expires": int(T0) + 43200,
        "event": "message",
        "topic": "ada_alerts-7f3k",
        "message": "Trains on line 4 are stopped. Next update by 14:30.",
        "title": "Line 4 stopped",
        "priority": 5,
        "tags": ["warning"],
        "click": "https://status.example.com/incidents/7",
        "icon": "https://status.example.com/icon.png",
        "sequence_id": "delivery-42",
    }
    assert got.headers["x-priority"] == "5" and "priority" not in got.headers
    assert "authorization" not in got.headers


async def test_non_ascii_title_and_tags_travel_as_encoded_words(
    make_channel: ChannelFactory, server: NtfyServer
) -> None:
    title = "Störung auf Linie 4 – Züge fallen aus 🚆, bitte Ersatzverkehr nutzen"
    await make_channel(tags=["warning", "Bahnübergang"]).send(TOPIC, message(subject=title))
    [got] = server.published
    assert got.message["title"] == title
    assert got.message["tags"] == ["warning", "Bahnübergang"]
    assert got.headers["x-title"].isascii()
    assert all(len(word) <= 75 for word in got.headers["x-title"].split())


@pytest.mark.parametrize(
    ("headers", "priority", "tags"),
    [
        ({"X-Broadcaster-Severity": "minor"}, 3, ["warning"]),
        ({"X-Broadcaster-Severity": "major"}, 4, ["warning"]),
        ({"X-Broadcaster-Severity": "unheard-of"}, 4, ["warning"]),
        ({}, 4, ["warning"]),
        (
            {"X-Broadcaster-Kind": "resolution", "X-Broadcaster-Severity": "critical"},
            3,
            ["white_check_mark"],
        ),
        # The escalation step's urgency: one up or down, within ntfy's 1 to 5.
        ({"X-Broadcaster-Severity": "major", "X-Broadcaster-Urgency": "high"}, 5, ["warning"]),
        ({"X-Broadcaster-Severity": "major", "X-Broadcaster-Urgency": "low"}, 3, ["warning"]),
        ({"X-Broadcaster-Severity": "major", "X-Broadcaster-Urgency": "normal"}, 4, ["warning"]),
        ({"X-Broadcaster-Severity": "critical", "X-Broadcaster-Urgency": "high"}, 5, ["warning"]),
    ],
)
async def test_priority_mapping(
    make_channel: ChannelFactory,
    server: NtfyServer,
    headers: dict[str, str],
    priority: int,
    tags: list[str],
) -> None:
    await make_channel().send(TOPIC, message(headers=headers))
    [got] = server.published
    assert got.message.get("priority", 3) == priority
    assert got.message["tags"] == tags
    assert "click" not in got.message


async def test_sequence_id_from_any_delivery_id_is_one_ntfy_accepts(
    make_channel: ChannelFactory, server: NtfyServer
) -> None:
    key = "round 7/customer ü/" + "x" * 80
    await make_channel().send(TOPIC, message(idempotency_key=key))
    await make_channel().send(TOPIC, message(idempotency_key=key))
    first, second = server.published
    assert first.message["sequence_id"] == second.message["sequence_id"] == sequence_id(key)
    assert sequence_id("a/b") != sequence_id("a_b")
    await make_channel(sequence_id=False).send(TOPIC, message())
    assert "sequence_id" not in server.published[-1].message


async def test_long_text_is_cut_to_the_message_limit(
    make_channel: ChannelFactory, server: NtfyServer
) -> None:
    await make_channel().send(TOPIC, message(text="Zug fällt aus. " * 600))
    [got] = server.published
    body = got.message["message"].encode()
    # Whole sentences (a cut by bytes split words), as close to the limit as they go.
    assert len(body) <= 4096 and got.message["message"].endswith("Zug fällt aus.")
    assert ("Zug fällt aus. " * 600).startswith(got.message["message"]) and len(body) > 4070
    words = truncate_utf8("Züge fallen zwischen Maarn und Driebergen aus " * 200, 4096)
    assert words.decode().endswith("…") and words.decode()[-2] != " "
    assert words.decode()[:-1].split()[-1] in {"Züge", "fallen", "zwischen", "Maarn", "und"} | {
        "Driebergen",
        "aus",
    }
    assert truncate_utf8("äää", 4) == "…".encode()
    assert truncate_utf8("short", 4096) == b"short"


async def test_token_and_basic_auth(base_url: str, make_channel: ChannelFactory) -> None:
    closed = NtfyServer(tokens=[TOKEN], users={"ops": PASSWORD}, anonymous_write=False)
    with serve(closed.app) as url:
        await make_channel(base_url=url, token=TOKEN).send(TOPIC, message())
        await make_channel(base_url=url, username="ops", password=PASSWORD).send(TOPIC, message())
        with pytest.raises(DeliveryError) as anonymous:
            await make_channel(base_url=url).send(TOPIC, message())
        with pytest.raises(DeliveryError) as wrong:
            await make_channel(base_url=url, token="tk_wrong").send(TOPIC, message())
    assert [p.user for p in closed.published] == ["token:tk_tes", "ops"]
    assert anonymous.value.retryable is False and "403" in anonymous.value.reason
    assert wrong.value.retryable is False and "401" in wrong.value.reason
    assert anonymous.value.contact_point is None and wrong.value.contact_point is None


@pytest.mark.parametrize(
    "topic", ["", "has space", "slash/topic", "ü-topic", "x" * 65, "docs", "reset-password"]
)
async def test_an_unusable_topic_disables_without_a_request(
    make_channel: ChannelFactory, server: NtfyServer, topic: str
) -> None:
    with pytest.raises(DeliveryError) as caught:
        await make_channel().send(Target(address=topic), message())
    assert caught.value.retryable is False
    assert caught.value.contact_point is ContactPointState.DISABLED
    assert server.requests == []


RETRY_TABLE: list[tuple[Scripted, bool, ContactPointState | None, str]] = [
    (Scripted(429), True, None, "42901"),
    (Scripted(500), True, None, "50001"),
    (Scripted(502, body=b"<html>bad gateway</html>"), True, None, "502: untyped body, 24 bytes"),
    (Scripted(503), True, None, "503"),
    (Scripted(507), True, None, "507"),
    (Scripted(408), True, None, "408"),
    (Scripted(401), False, None, "40101"),
    (Scripted(403), False, None, "40301"),
    (Scripted(404), False, None, "40401"),
    (Scripted(413), False, None, "41301"),
    (Scripted(400), False, None, "40007"),
    (
        Scripted(400, body=json.dumps({"code": 40009, "http": 400, "error": "topic"}).encode()),
        False,
        ContactPointState.DISABLED,
        "40009",
    ),
]


@pytest.mark.parametrize(("answer", "retryable", "contact_point", "said"), RETRY_TABLE)
async def test_status_table(
    make_channel: ChannelFactory,
    server: NtfyServer,
    answer: Scripted,
    retryable: bool,
    contact_point: ContactPointState | None,
    said: str,
) -> None:
    server.faults.push(answer)
    with pytest.raises(DeliveryError) as caught:
        await make_channel().send(TOPIC, message())
    assert caught.value.retryable is retryable
    assert caught.value.contact_point is contact_point
    assert said in caught.value.reason


async def test_429_retry_after(make_channel: ChannelFactory, server: NtfyServer) -> None:
    server.faults.push(Scripted(429, headers={"Retry-After": "17"}), Scripted(503))
    with pytest.raises(DeliveryError) as limited:
        await make_channel().send(TOPIC, message())
    assert limited.value.retry_after == 17.0
    assert "too many requests" in limited.value.reason
    with pytest.raises(DeliveryError) as unavailable:
        await make_channel().send(TOPIC, message())
    assert unavailable.value.retry_after is None


@pytest.mark.parametrize("status", [408, 429, 503])
async def test_every_retryable_answer_honours_retry_after(
    make_channel: ChannelFactory, server: NtfyServer, status: int
) -> None:
    server.faults.push(Scripted(status, headers={"Retry-After": "5"}))
    with pytest.raises(DeliveryError) as caught:
        await make_channel().send(TOPIC, message())
    assert (caught.value.retryable, caught.value.retry_after) == (True, 5.0)


async def test_a_body_that_is_not_json_is_described_not_quoted(
    make_channel: ChannelFactory, server: NtfyServer
) -> None:
    server.faults.push(Scripted(400, body=b"bad request: Authorization: Bearer tk_whatever"))
    with pytest.raises(DeliveryError) as caught:
        await make_channel().send(TOPIC, message())
    assert caught.value.reason == "ntfy 400: untyped body, 46 bytes, not shown"


async def test_timeout_reset_and_refused_are_retryable(
    make_channel: ChannelFactory, server: NtfyServer
) -> None:
    server.faults.push(Scripted(200, hang=10.0))
    with pytest.raises(DeliveryError) as timed_out:
        await make_channel(timeout=0.2).send(TOPIC, message())
    assert timed_out.value.retryable is True and "timed out" in timed_out.value.reason
    with ResettingServer() as resetting, pytest.raises(DeliveryError) as reset:
        await make_channel(base_url=resetting.url).send(TOPIC, message())
    assert reset.value.retryable is True
    with pytest.raises(DeliveryError) as refused:
        await make_channel(base_url=f"http://127.0.0.1:{free_port()}").send(TOPIC, message())
    assert refused.value.retryable is True


async def test_closed_channel_refuses_retryably(make_channel: ChannelFactory) -> None:
    channel = make_channel()
    await channel.aclose()
    with pytest.raises(DeliveryError) as caught:
        await channel.send(TOPIC, message())
    assert caught.value.retryable is True


def test_settings_validation() -> None:
    with pytest.raises(ValidationError):
        NtfySettings(token=TOKEN, username="ops", password=PASSWORD)
    with pytest.raises(ValidationError):
        NtfySettings(username="ops")
    with pytest.raises(ValidationError):
        NtfySettings(base_url="https://ops:pw@ntfy.example.com")
    with pytest.raises(ValidationError):
        NtfySettings(base_url="ntfy.example.com")
    with pytest.raises(ValidationError):
        NtfySettings(default_priority=6)
    assert NtfySettings(base_url="https://ntfy.example.com/").base_url == "https://ntfy.example.com"


async def test_secrets_stay_out_of_errors_and_settings(
    make_channel: ChannelFactory, server: NtfyServer
) -> None:
    for settings in (
        NtfySettings(token=TOKEN),
        NtfySettings(username="ops", password=PASSWORD),
    ):
        for text in (str(settings), repr(settings), settings.model_dump_json()):
            assert TOKEN not in text and PASSWORD not in text
    errors: list[DeliveryError] = []
    for answer in (Scripted(500), Scripted(401), Scripted(200, hang=10.0)):
        for auth in ({"token": TOKEN}, {"username": "ops", "password": PASSWORD}):
            server.faults.push(answer)
            with pytest.raises(DeliveryError) as caught:
                await make_channel(timeout=0.2, **auth).send(TOPIC, message())
            errors.append(caught.value)
    assert len(errors) == 6 and len(server.requests) == 6 and server.published == []
    for error in errors:
        for text in (str(error), repr(error)):
            assert TOKEN not in text and PASSWORD not in text


def test_header_value_is_ascii_and_one_line() -> None:
    assert header_value("plain\r\ntitle") == "plain title"
    encoded = header_value("é" * 100)
    assert encoded.isascii() and "\n" not in encoded


@pytest.mark.parametrize("token", ["tk_AgQdq7mVBoFD\n", "tk_a b", "tk_é"])
def test_a_token_a_header_cannot_carry_is_refused_at_load(token: str) -> None:
    with pytest.raises(ValidationError) as refused:
        NtfySettings.model_validate({"token": token})
    [error] = refused.value.errors(include_input=False)  # as the config loader reports it
    assert error["loc"] == ("token",)
    assert "token has a space, a line break or another character" in error["msg"]
    assert token.strip() not in error["msg"]  # the secret itself is not repeated


@pytest.mark.parametrize("field", ["text", "subject"])
async def test_text_that_is_not_unicode_fails_for_good_and_sends_nothing(
    make_channel: ChannelFactory, server: NtfyServer, field: str
) -> None:
    with pytest.raises(DeliveryError) as refused:
        await make_channel().send(TOPIC, message(**{field: "Line 4 \ud800 stopped"}))
    assert not refused.value.retryable and refused.value.contact_point is None
    assert "lone surrogate" in refused.value.reason
    assert server.published == []
