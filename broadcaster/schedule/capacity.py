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

    def __str__(self) -> str:
        return (
            f"incident {self.incident_id} round {self.round_number}: {self.deliveries} "
            f"{self.channel} messages at {self.per_second:g}/s take {format_duration(self.needs)}, "
            f"longer than the {format_duration(self.cadence)} cadence; raise "
            f"delivery.rate_limits.{self.channel} (the provider account's throughput), add "
            f"daemons or sender numbers, or move {self.channel} to a later escalation step"
        )


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
        needs = timedelta(seconds=max(count - limit.burst, 0) / limit.per_second)
        if needs > cadence:
            warnings.append(
                CapacityWarning(
                    incident_id, round_number, channel, count, limit.per_second, needs, cadence
                )
            )
    return warnings
