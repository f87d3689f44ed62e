"""Capacity: can a round finish within its cadence at the configured provider rates?

100,000 SMS at 100 messages/s take 16 min 40 s: longer than a 15-minute cadence, so the
next promise would be broken before this round is out. The planner says so, and what
would fix it, in the logs, ``/healthz`` and ``incident show``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from broadcaster.config.durations import format_duration
from broadcaster.config.settings import DeliverySettings
from broadcaster.store import Delivery


@dataclass(frozen=True)
class CapacityWarning:
    incident_id: int
    round_number: int
    channel: str
    deliveries: int
    per_second: float
    needs: timedelta
    cadence: timedelta
    queued: int = 0
    """Of ``deliveries``, those of other rounds (other incidents', earlier ones, held ones)
    that fall due before this round's next and share the channel's rate."""
    daemons: int = 1
    """Daemons sending on the channel, each at ``per_second`` (its share of the account)."""

    @property
    def rate_needed(self) -> float:
        """Messages per second that would carry the round within the cadence."""
        return self.deliveries / max(self.cadence.total_seconds(), 1.0)

    def __str__(self) -> str:
        needs = "for ever" if self.needs == timedelta.max else format_duration(_whole(self.needs))
        return (
            f"incident {self.incident_id} round {self.round_number}: {self.deliveries} "
            f"{self.channel} messages"
            + (f" ({self.queued} of them queued from other rounds)" if self.queued else "")
            + f" at {self.per_second * self.daemons:g}/s"
            + (f" ({self.daemons} daemons at {self.per_second:g}/s)" if self.daemons > 1 else "")
            + f" take {needs}, "
            f"longer than the {format_duration(_whole(self.cadence))} cadence; it needs "
            f"{self.rate_needed:.3g}/s: raise delivery.rate_limits.{self.channel} to at least "
            + (
                f"{self.rate_needed / self.daemons:.3g}/s on each of the {self.daemons} daemons"
                if self.daemons > 1
                else "that"
            )
            + " if the provider account allows it, "
            f"add sender numbers, or move {self.channel} to a later escalation step"
        )


def _whole(span: timedelta) -> timedelta:
    """``span`` rounded up to whole seconds, for people to read."""
    return timedelta(seconds=-int(-span.total_seconds() // 1))


def check_round(
    incident_id: int,
    round_number: int,
    per_channel: dict[str, int],
    cadence: timedelta | None,
    delivery: DeliverySettings,
    queued: dict[str, int] | None = None,
    daemons: int = 1,
) -> list[CapacityWarning]:
    """Warnings for the channels whose configured rate cannot carry this round in time,
    with what other rounds have queued on them before it (``queued``, per channel). Each
    of ``daemons`` sends at the configured rate (docs/scaling.md: give each daemon its share
    of the account), so together they send that many times as fast."""
    if cadence is None or cadence <= timedelta(0):
        return []
    warnings = []
    ahead = queued or {}
    for channel, own in sorted(per_channel.items()):
        limit = delivery.rate_limits.get(channel)
        if limit is None or own == 0:
            continue
        count = own + ahead.get(channel, 0)
        try:
            rate, burst = limit.per_second * daemons, limit.burst * daemons
            needs = timedelta(seconds=max(count - burst, 0) / rate)
        except OverflowError:  # a rate so small that the round never ends
            needs = timedelta.max
        if needs > cadence:
            warnings.append(
                CapacityWarning(
                    incident_id,
                    round_number,
                    channel,
                    count,
                    limit.per_second,
                    needs,
                    cadence,
                    ahead.get(channel, 0),
                    daemons,
                )
            )
    return warnings


async def queued_elsewhere(
    session: AsyncSession, round_id: int, channels: Iterable[str], until: datetime
) -> dict[str, int]:
    """Per channel, the deliveries of other rounds still to send (pending or sending) that
    fall due by ``until``: they share the channel's rate with this round."""
    names = list(channels)
    if not names:
        return {}
    found = await session.execute(
        select(Delivery.channel, func.count())
        .where(
            Delivery.state.in_(("pending", "sending")),
            Delivery.channel.in_(names),
            Delivery.round_id != round_id,
            Delivery.next_attempt_at <= until,
        )
        .group_by(Delivery.channel)
    )
    return {channel: count for channel, count in found.all()}
