"""The email channel's CPU per message: building the MIME bytes, and sending them.

``python -m bench.email_build [--count N] [--json PATH]`` measures, in this process
(``time.process_time``, so other load on the machine does not count):

- ``build``: :meth:`channels.email.EmailChannel.build` for messages shaped like the
  fan-out's (the default English templates' text and HTML, the dispatcher's delivery
  headers, a per-customer List-Unsubscribe), with ASCII and with non-ASCII names,
  subjects and bodies;
- ``stdlib``: the same messages through ``email.message.EmailMessage`` with the default
  policy, flattened as ``aiosmtplib``'s ``send_message`` flattens them: how the channel
  built messages before, for comparison;
- ``send``: :meth:`~channels.email.EmailChannel.send` to the benchmark's aiosmtpd sink
  (its own process, :mod:`bench.sinks`) on the channel's pool of 4 connections, against
  ``aiosmtplib``'s ``sendmail`` replaying the same bytes on 4 connections: the CPU this
  process spends per message, and the wall-clock rate;
- ``transaction``: the channel's ``send`` as it is, and the same channel running each
  transaction through ``aiosmtplib``'s ``sendmail`` as it did until the seventh round of
  work, in alternating runs (``--rounds``, medians): what the channel's own SMTP
  transaction saves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtplib.email import flatten_message

from bench.sinks import Sinks
from channels.base import Message, Target
from channels.email import EmailChannel, EmailSettings, OutgoingEmail

TEXT = """Dear {name},

We are sorry to tell you about a disruption that affects you: Line 1: no trains.

Trains on line 1 are not running between Central and Harbour because of a signal \
failure. Replacement buses run every 10 minutes from the station forecourt.

Status: we are investigating. We do not know the cause yet.

We will send you the next update by 23:32 GMT, even if there is no news.

Follow this incident: http://127.0.0.1:8080/incidents/1

Example Transit

You receive this because you subscribed to service updates from Example Transit.
Manage your notifications: http://127.0.0.1:8080/preferences/{token}.preferences.bMW4Gigpy0SVg
Unsubscribe: http://127.0.0.1:8080/u/{token}.unsubscribe.KGNFCeIbfNRBP1pRK-Y8Vde5osBkDvaM1n
"""
HTML = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Line 1: no trains</title></head>
<body style="font-family:sans-serif;line-height:1.5;max-width:40em">
<p>Dear {name},</p>
<p>We are sorry to tell you about a disruption that affects you: Line 1: no trains.</p>
<p>Trains on line 1 are not running between Central and Harbour because of a signal \
failure. Replacement buses run every 10 minutes from the station forecourt.</p>
<p>Status: we are investigating. We do not know the cause yet.</p>
<p><strong>We will send you the next update by 23:32 GMT, even if there is no news.</strong></p>
<p>Follow this incident: <a href="http://127.0.0.1:8080/incidents/1">\
http://127.0.0.1:8080/incidents/1</a></p>
<p>Example Transit</p>
<hr>
<p style="font-size:small;color:#555">You receive this because you subscribed to service \
updates from Example Transit.<br>
<a href="http://127.0.0.1:8080/preferences/{token}.preferences.bMW4Gigpy0SVg">Manage your \
notifications</a> · <a href="http://127.0.0.1:8080/u/{token}.unsubscribe.KGNFCeIbfNRBP1pR\
">Unsubscribe</a></p>
</body>
</html>
"""
GERMAN = {
    "subject": "[Störung] Linie 1: keine Züge",
    "replace": [("Dear", "Liebe(r)"), ("trains", "Züge"), ("Trains", "Züge"), ("buses", "Busse")],
}


def messages(n: int, *, non_ascii: bool) -> list[tuple[Target, Message]]:
    """``n`` (target, message) pairs as the dispatcher hands them to the channel."""
    out: list[tuple[Target, Message]] = []
    now = datetime.now(UTC)
    for i in range(n):
        name = f"Jürgen Müller-Lüdenscheidt {i}" if non_ascii else f"Customer {i}"
        token = f"YzAwMDAw{i:08d}.1797980473"
        text, html = TEXT.format(name=name, token=token), HTML.format(name=name, token=token)
        subject = "[Disruption] Line 1: no trains"
        if non_ascii:
            subject = str(GERMAN["subject"])
            for old, new in GERMAN["replace"]:
                text, html = text.replace(old, new), html.replace(old, new)
        headers = {
            "X-Broadcaster-Link": "http://127.0.0.1:8080/incidents/1",
            "List-Unsubscribe": f"<http://127.0.0.1:8080/u/{token}.unsubscribe.KGNFCeIbfNR>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "X-Broadcaster-Delivery": str(i + 1),
            "X-Broadcaster-Round": "1/1",
            "X-Broadcaster-Kind": "first",
            "X-Broadcaster-Severity": "major",
        }
        message = Message(subject, text, html, f"delivery-{i + 1}", headers, now)
        out.append((Target(f"c{i:08d}@example.com", name, f"c{i}"), message))
    return out


def stdlib_bytes(channel: EmailChannel, target: Target, message: Message) -> bytes:
    """How the channel built and serialised a message before (EmailMessage, default
    policy, flattened by aiosmtplib's send_message), kept here for comparison."""
    email = EmailMessage()
    email["From"] = channel._sender
    email["To"] = Address(display_name=" ".join(target.name.split()), addr_spec=target.address)
    email["Subject"] = message.subject
    assert message.created_at is not None
    email["Date"] = format_datetime(message.created_at.astimezone(UTC), usegmt=True)
    email["Message-ID"] = make_msgid(idstring=message.idempotency_key, domain="example.com")
    for key, value in message.headers.items():
        email[key] = value
    email.set_content(message.text)
    if message.html is not None:
        email.add_alternative(message.html, subtype="html")
    return flatten_message(email, cte_type="8bit")


def cpu_per_message(run: Callable[[], Iterator[Any]], n: int) -> float:
    """Microseconds of CPU per message: the best of three runs over ``n`` messages."""
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for _ in run():
            pass
        best = min(best, time.process_time() - started)
    return best / n * 1e6


def settings(port: int) -> EmailSettings:
    return EmailSettings.model_validate(
        {"host": "127.0.0.1", "port": port, "security": "none", "from": "Ops <ops@example.com>"}
    )


async def send_run(port: int, pairs: list[tuple[Target, Message]]) -> dict[str, float]:
    channel = EmailChannel("email", settings(port))
    try:
        await channel.send(*pairs[0])  # connect outside the clock
        # As the dispatcher does: many sends in flight, the channel's pool of 4 serving them.
        slots = asyncio.Semaphore(64)

        async def one(target: Target, message: Message) -> None:
            async with slots:
                await channel.send(target, message)

        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(t, m) for t, m in pairs))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await channel.aclose()
    return {"cpu_us": cpu / len(pairs) * 1e6, "rate": len(pairs) / wall}


class SendmailChannel(EmailChannel):
    """The email channel with the transaction it ran until the seventh round of work:
    ``sendmail``, which parses each address again and scans the message for SIZE."""

    async def _transact(
        self, client: aiosmtplib.SMTP, recipient: str, outgoing: OutgoingEmail
    ) -> None:
        await client.sendmail(
            self._sender_addr,
            [recipient],
            outgoing.data,
            mail_options=["SMTPUTF8"] if outgoing.smtputf8 else None,
        )


async def transaction_runs(
    port: int, pairs: list[tuple[Target, Message]], rounds: int
) -> dict[str, list[float]]:
    """CPU per message of the channel as it is and of :class:`SendmailChannel`, in
    alternating runs of all of ``pairs``, 800 sends in flight (a dispatcher's 4 batches)."""
    found: dict[str, list[float]] = {"channel": [], "sendmail": []}
    for _ in range(rounds):
        for label, kind in (("sendmail", SendmailChannel), ("channel", EmailChannel)):
            channel = kind("email", settings(port))
            try:
                await channel.send(*pairs[0])  # connect outside the clock
                cpu = time.process_time()
                for start in range(0, len(pairs), 800):
                    await asyncio.gather(
                        *(channel.send(t, m) for t, m in pairs[start : start + 800])
                    )
                found[label].append((time.process_time() - cpu) / len(pairs) * 1e6)
            finally:
                await channel.aclose()
    return found


async def raw_run(port: int, data: bytes, n: int) -> dict[str, float]:
    todo = iter(range(n))

    async def connection() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=30)
        await client.connect()
        try:
            for _ in todo:
                await client.sendmail("ops@example.com", ["c00000000@example.com"], data)
        finally:
            await client.quit()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(4)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"cpu_us": cpu / n * 1e6, "rate": n / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="messages per measurement")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--rounds", type=int, default=4, help="alternating runs of the transaction comparison"
    )
    args = parser.parse_args()
    n: int = args.count
    channel = EmailChannel("email", settings(25))
    results: dict[str, Any] = {"count": n, "cpu_us_per_message": {}}
    figures = results["cpu_us_per_message"]
    for label, non_ascii in (("ascii", False), ("non-ascii", True)):
        pairs = messages(n, non_ascii=non_ascii)

        def built(pairs: list[tuple[Target, Message]] = pairs) -> Iterator[object]:
            return (channel.build(t, m) for t, m in pairs)

        def reference(pairs: list[tuple[Target, Message]] = pairs) -> Iterator[object]:
            return (stdlib_bytes(channel, t, m) for t, m in pairs)

        figures[f"build {label}"] = cpu_per_message(built, n)
        figures[f"stdlib {label}"] = cpu_per_message(reference, n)
    pairs = messages(n, non_ascii=False)
    with Sinks() as sinks:
        sent = asyncio.run(send_run(sinks.smtp_port, pairs))
        raw = asyncio.run(raw_run(sinks.smtp_port, channel.build(*pairs[0]).data, n))
        compared = asyncio.run(transaction_runs(sinks.smtp_port, pairs, args.rounds))
    figures["send (channel)"] = sent["cpu_us"]
    figures["sendmail (raw aiosmtplib)"] = raw["cpu_us"]
    results["rate"] = {"send (channel)": sent["rate"], "sendmail (raw aiosmtplib)": raw["rate"]}
    results["transaction_runs_cpu_us"] = compared
    figures["send, own transaction"] = statistics.median(compared["channel"])
    figures["send, through sendmail"] = statistics.median(compared["sendmail"])
    print(f"{'what':<28} {'CPU µs/msg':>10}")
    for what, value in figures.items():
        print(f"{what:<28} {value:>10.1f}")
    for what, value in results["rate"].items():
        print(f"{what:<28} {value:>10.0f} msg/s wall (4 connections; sink in its own process)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
