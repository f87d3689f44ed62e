"""``broadcaster channels``: check a configured channel by sending it one test message.

``channels test CHANNEL --to ADDRESS`` builds the channel exactly as the daemon does and
shows exactly what the daemon would learn from the provider: the receipt (the provider's
message id), or the delivery error with its retry decision (reason, retryable,
retry-after, and whether the contact point would be condemned).

Exit status: 0 sent, 1 the provider refused or could not be reached, 2 the configuration
is invalid, names no such channel, or the channel cannot be built from it.

Secrets never show. The channels keep them out of their reasons; on top of that, every
text printed here is redacted against the secret values of the channel's settings (a
server or proxy that echoes our request back in its error body could otherwise leak a
token). The address is not echoed either: for some channels it is itself a capability
(an ntfy topic, a Web Push endpoint and its keys).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Annotated

import typer
from pydantic import BaseModel, SecretStr

from broadcaster.cli.common import ConfigOption, fail, run, settings_or_exit
from broadcaster.clock import RealClock
from broadcaster.config import Settings
from broadcaster.dispatch.channels import build_channel
from channels.base import DeliveryError, Message, Receipt, Target

SUBJECT = "Broadcaster test message"
REDACTED = "**********"
_MIN_SECRET = 4
"""Shorter secret values are not redacted: matching them would mangle any text while
revealing nothing (a two-letter string in a reason does not point at a password)."""

app = typer.Typer(
    help="Channels: send a test message through a configured channel.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals hold settings and clients: never print them
)


@app.callback()
def _channels() -> None:
    """Check the configured channels."""


class ChannelUnusable(Exception):
    """The channel's settings validate but the channel cannot be built (an unreadable key)."""


def probe_message(now: datetime) -> Message:
    """The one message ``channels test`` sends: recognisable, harmless, unique."""
    stamp = now.strftime("%Y-%m-%d %H:%M:%S %Z")
    return Message(
        subject=SUBJECT,
        text=(
            f"This is a test message from Broadcaster, sent at {stamp} to check this "
            "channel. No action is needed."
        ),
        idempotency_key=f"test-{uuid.uuid4()}",
        created_at=now,
    )


def secret_values(model: BaseModel) -> list[str]:
    """Every secret (``SecretStr``) value in ``model``, nested models and containers included."""
    found = {value for value in _secrets(model) if len(value) >= _MIN_SECRET}
    return sorted(found, key=len, reverse=True)


def _secrets(value: object) -> Iterator[str]:
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secrets(getattr(value, name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _secrets(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _secrets(item)


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret value replaced (longest first, so none survives in part)."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


async def send_once(settings: Settings, name: str, target: Target, message: Message) -> Receipt:
    """Build channel ``name``, send ``message`` to ``target``, close the channel."""
    try:
        channel = build_channel(settings, name)
    except (ValueError, TypeError) as exc:
        raise ChannelUnusable(str(exc)) from None
    try:
        return await channel.send(target, message)
    finally:
        await channel.aclose()


@app.command("test")
def send_test(
    channel: Annotated[
        str, typer.Argument(help="the channel's name under 'channels:' in the config")
    ],
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="the address to send to, as a contact point of the channel's kind holds it "
            "(phone number, email address, device token, topic, URL, subscription JSON)",
            show_default=False,
        ),
    ],
    config: ConfigOption = None,
) -> None:
    """Send one test message through CHANNEL to --to; print the receipt or the error."""
    settings = settings_or_exit(config)
    if channel not in settings.channels:
        configured = ", ".join(sorted(settings.channels)) or "none"
        raise fail(f"no channel {channel!r} in the configuration (configured: {configured})", 2)
    spec = settings.channels[channel]
    secrets = secret_values(spec)
    message = probe_message(RealClock().now())
    heading = f"channel {channel!r} ({spec.type})"
    try:
        receipt = run(send_once(settings, channel, Target(address=to), message))
    except ChannelUnusable as exc:
        raise fail(redact(f"{heading} cannot be built: {exc}", secrets), 2) from None
    except DeliveryError as exc:
        for line in _error_report(heading, exc, message.idempotency_key):
            typer.echo(redact(line, secrets), err=True)
        raise typer.Exit(1) from None
    for line in _receipt_report(heading, receipt, message.idempotency_key):
        typer.echo(redact(line, secrets))


def _receipt_report(heading: str, receipt: Receipt, key: str) -> list[str]:
    lines = [
        f"sent: {heading} accepted the test message",
        f"  provider message id: {receipt.provider_message_id or '(none given)'}",
    ]
    if receipt.detail:
        lines.append(f"  detail: {receipt.detail}")
    lines.append(f"  idempotency key: {key}")
    return lines


def _error_report(heading: str, error: DeliveryError, key: str) -> list[str]:
    if error.retryable:
        decision = "yes (the daemon would try again later)"
    else:
        decision = "no (the daemon would move on to the customer's next channel)"
    wait = f"{error.retry_after:g}s" if error.retry_after is not None else "not given"
    if error.contact_point is not None:
        point = f"{error.contact_point.value} (the daemon would stop using this address)"
    else:
        point = "unchanged"
    return [
        f"error: {heading} did not deliver the test message",
        f"  reason: {error.reason}",
        f"  retryable: {decision}",
        f"  retry after: {wait}",
        f"  contact point: {point}",
        f"  idempotency key: {key}",
    ]
