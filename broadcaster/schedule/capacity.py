"""Capacity: can a round finish within its cadence at the configured provider rates?

100,000 SMS at 100 messages/s take 16 min 40 s: longer than a 15-minute cadence, so the
next promise would be broken before this round is out. The planner says so, and what
would fix it, in the logs, ``/healthz`` and ``incident show``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from broadcaster.config.durations import format_duration
from broadcaster.config.settings import DeliverySettings


@dataclass(frozen=True)
class CapacityWarning:
    incident_id: int
    round_number: int
    channel: str
    deliveries: int
    per_second: float
    needs: timedelta
    cadence: timedelta

    @property
    def rate_needed(self) -> float:
        """Messages per second that would carry the round within the cadence."""
        return self.deliveries / max(self.cadence.total_seconds(), 1.0)

    def __str__(self) -> str:
        needs = "for ever" if self.needs == timedelta.max else format_duration(_whole(self.needs))
        return (
            f"incident {self.incident_id} round {self.round_number}: {self.deliveries} "
            f"{self.channel} messages at {self.per_second:g}/s take {needs}, "
            f"longer than the {format_duration(_whole(self.cadence))} cadence; it needs "
            f"{self.rate_needed:.3g}/s: raise delivery.rate_limits.{self.channel} to at least "
            f"that if the provider account allows it (with several daemons, each one's share), "
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
) -> list[CapacityWarning]:
    """Warnings for the channels whose configured rate cannot carry this round in time."""
    if cadence is None or cadence <= timedelta(0):
        return []
    warnings = []
    for channel, count in sorted(per_channel.items()):
        limit = delivery.rate_limits.get(channel)
        if limit is None or count == 0:
            continue
        try:
            needs = timedelta(seconds=max(count - limit.burst, 0) / limit.per_second)
        except OverflowError:  # a rate so small that the round never ends
            needs = timedelta.max
        if needs > cadence:
            warnings.append(
                CapacityWarning(
                    incident_id, round_number, channel, count, limit.per_second, needs, cadence
                )
            )
    return warnings
