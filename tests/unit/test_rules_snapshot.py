"""Plan snapshots (the ladder fixed when escalation starts) and quiet hours."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from rules import PlanSnapshot, QuietHours, SnapshotError, StaffRef, hold_until
from tests.unit.test_rules_support import NOW, customer, example, incident, load

HOUR, MINUTE = timedelta(hours=1), timedelta(minutes=1)
AMSTERDAM = ZoneInfo("Europe/Amsterdam")


def test_snapshot_of_the_default_policy() -> None:
    ruleset = example()
    plan = PlanSnapshot.from_ruleset(ruleset, "default")
    assert plan.to_dict() == {
        "format": 1,
        "policy": "default",
        "source": ruleset.source,
        "digest": ruleset.digest,
        "steps": [
            {
                "after": "0s",
                "every": "30m",
                "channels": ["push", "email"],
                "urgency": "normal",
                "notify": [],
            },
            {
                "after": "1h",
                "every": "20m",
                "channels": ["push", "email", "sms"],
                "urgency": "high",
                "notify": [],
            },
            {
                "after": "4h",
                "every": "15m",
                "channels": ["push", "email", "sms"],
                "urgency": "high",
                "notify": ["group:duty-managers"],
            },
        ],
    }


def test_snapshot_survives_json() -> None:
    plan = PlanSnapshot.from_ruleset(example(), "critical")
    again = PlanSnapshot.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
    assert again.steps[0].notify == (StaffRef("on_call", "duty-managers"),)


def test_step_at_and_next_change() -> None:
    plan = PlanSnapshot.from_ruleset(example(), "default")
    policy = example().policies["default"]
    for age in (-HOUR, timedelta(0), 59 * MINUTE, HOUR, 5 * HOUR):
        assert plan.step_at(age) == policy.step_at(age)
    assert plan.step_at(-HOUR).after == timedelta(0)
    assert plan.next_change(timedelta(0)) == HOUR
    assert plan.next_change(HOUR) == 4 * HOUR
    assert plan.next_change(4 * HOUR) is None


@pytest.mark.parametrize(
    ("age", "gap"),
    [
        (timedelta(0), 30 * MINUTE),  # 30-minute steps until 1 h
        (30 * MINUTE, 30 * MINUTE),  # the next round at 1 h, when the 20-minute step starts
        (50 * MINUTE, 20 * MINUTE),  # an update at 0:50: next at 1:10 (20 min), not 1:20
        (59 * MINUTE, 20 * MINUTE),  # never sooner than the new step's own cadence
        (3 * HOUR + 50 * MINUTE, 15 * MINUTE),  # 4 h step: every 15 min; 3:50 + 15 = 4:05
        (3 * HOUR + 55 * MINUTE, 15 * MINUTE),
        (5 * HOUR, 15 * MINUTE),  # the last step
    ],
)
def test_a_later_step_is_in_force_from_its_start(age: timedelta, gap: timedelta) -> None:
    """The next round came a whole cadence of the old step after the last one: the faster
    step (and its channels) began up to one old cadence late."""
    plan = PlanSnapshot.from_ruleset(example(), "default")
    assert plan.next_round_after(age) == gap


def test_unknown_policy() -> None:
    with pytest.raises(KeyError, match=r"no policy 'nope'.*critical, default"):
        PlanSnapshot.from_ruleset(example(), "nope")


def stored() -> dict[str, Any]:
    return PlanSnapshot.from_ruleset(example(), "default").to_dict()


def with_step(**changes: object) -> dict[str, Any]:
    data = stored()
    data["steps"][1].update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({**stored(), "format": 2}, "unknown snapshot format 2"),
        ({**stored(), "extra": 1}, "unknown keys \\['extra'\\]"),
        ({**stored(), "policy": ""}, "snapshot.policy"),
        ({**stored(), "steps": {}}, "steps: a list is expected"),
        ({**stored(), "steps": []}, "at least one step"),
        (with_step(every="soon"), "steps\\[1\\].every: invalid duration"),
        (with_step(every="0s"), "steps\\[1\\].every: must be longer than 0s"),
        (with_step(after="5h"), "increasing ages"),
        (with_step(urgency="panic"), "unknown urgency"),
        (with_step(notify=["duty-managers"]), "not a staff reference"),
        (with_step(channels=[]), "at least one channel"),
        (with_step(channels="sms"), "a list of strings"),
    ],
)
def test_corrupt_snapshots_are_refused(data: dict[str, Any], message: str) -> None:
    with pytest.raises(SnapshotError, match=message):
        PlanSnapshot.from_dict(data)


# --- the semantics: the ladder is fixed, everything else follows the current rules -------

ORIGINAL = """
policies:
  default:
    steps:
      - {after: 0m, every: 30m, channels: [email]}
      - {after: 1h, every: 20m, channels: [email, sms]}
rules:
  - name: vip
    match: {customer: {tier: vip}}
    followup: {kind: call, owner: account_manager, deadline: 2h}
    continue: true
  - name: policy
    policy: default
"""
EDITED = """
policies:
  faster:
    steps:
      - {after: 0m, every: 5m, channels: [push]}
rules:
  - name: vip
    match: {customer: {tier: vip}}
    followup: {kind: visit, owner: account_manager, deadline: 4h}
    continue: true
  - name: policy
    policy: faster
"""


def test_a_running_incident_keeps_its_ladder_when_rules_change() -> None:
    started = incident("major", timedelta(0))
    before = load(ORIGINAL)
    decision = before.evaluate(started, now=NOW)
    assert decision.policy == "default"
    plan = PlanSnapshot.from_dict(
        json.loads(json.dumps(PlanSnapshot.from_ruleset(before, "default").to_dict()))
    )

    after = load(EDITED)  # the admin edits the rules; the policy "default" is gone
    later = NOW + 90 * MINUTE
    running = after.evaluate(started, customer(tier="vip"), now=later, plan=plan)
    assert running.policy == "default"
    assert running.step is not None
    assert (running.step.every, running.step.channels) == (20 * MINUTE, ("email", "sms"))
    # Customer-level actions follow the rules current at evaluation time.
    assert [(f.kind, f.deadline) for f in running.followups] == [("visit", 4 * HOUR)]
    # Without the plan the current rules speak: what a new incident would get.
    fresh = after.evaluate(started, now=later)
    assert fresh.policy == "faster"
    assert fresh.step is not None and fresh.step.every == 5 * MINUTE


def test_plan_digest_names_the_rules_it_came_from() -> None:
    plan = PlanSnapshot.from_ruleset(load(ORIGINAL), "default")
    assert plan.digest == load(ORIGINAL).digest != load(EDITED).digest
    assert plan.source == "rules.yaml"


# --- quiet hours ---------------------------------------------------------------------------

NIGHT = QuietHours(time(22, 0), time(7, 0))
LUNCH = QuietHours(time(12, 0), time(13, 30))


def local(day: int, hour: int, minute: int = 0, tz: ZoneInfo = AMSTERDAM) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=tz)


@pytest.mark.parametrize(
    ("quiet", "now", "severity", "until"),
    [
        (None, local(2, 23), "minor", None),
        (NIGHT, local(2, 23), "critical", None),
        (NIGHT, local(2, 21, 59), "minor", None),
        (NIGHT, local(2, 22), "minor", local(3, 7)),
        (NIGHT, local(2, 23, 30), "major", local(3, 7)),
        (NIGHT, local(3, 0, 10), "minor", local(3, 7)),
        (NIGHT, local(3, 6, 59), "minor", local(3, 7)),
        (NIGHT, local(3, 7), "minor", None),
        (LUNCH, local(3, 12, 15), "minor", local(3, 13, 30)),
        (LUNCH, local(3, 13, 30), "minor", None),
    ],
)
def test_hold_until(
    quiet: QuietHours | None, now: datetime, severity: str, until: datetime | None
) -> None:
    assert hold_until(quiet, "Europe/Amsterdam", now, severity) == until


def test_hold_until_reads_the_customers_clock_and_answers_in_nows_zone() -> None:
    now = datetime(2026, 3, 2, 23, 0, tzinfo=UTC)  # 00:00 in Amsterdam, 18:00 in New York
    until = hold_until(NIGHT, "Europe/Amsterdam", now, "minor")
    assert until == datetime(2026, 3, 3, 6, 0, tzinfo=UTC) and until.tzinfo is UTC
    assert hold_until(NIGHT, "America/New_York", now, "minor") is None
    assert hold_until(NIGHT, timezone(timedelta(hours=1)), now, "minor") == until


def test_hold_until_across_clock_changes() -> None:
    # 29 March 2026, Amsterdam: 02:00 CET jumps to 03:00 CEST; 02:30 never happens.
    spring = QuietHours(time(1, 0), time(2, 30))
    now = datetime(2026, 3, 29, 1, 30, tzinfo=AMSTERDAM)
    assert hold_until(spring, AMSTERDAM, now, "minor") == datetime(
        2026, 3, 29, 3, 0, tzinfo=AMSTERDAM
    )
    # 25 October 2026: 03:00 CEST falls back to 02:00 CET; 02:10 happens twice.
    autumn = QuietHours(time(1, 0), time(2, 30))
    second_pass = datetime(2026, 10, 25, 2, 10, fold=1, tzinfo=AMSTERDAM)
    until = hold_until(autumn, AMSTERDAM, second_pass, "minor")
    # (An ambiguous local time never equals a time of another zone: compare in UTC.)
    assert until is not None
    assert until.astimezone(UTC) == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)  # 02:30 CET
    first_pass = datetime(2026, 10, 25, 2, 10, fold=0, tzinfo=AMSTERDAM)
    until = hold_until(autumn, AMSTERDAM, first_pass, "minor")
    assert until is not None
    assert until.astimezone(UTC) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST


def test_hold_until_needs_an_aware_now_and_a_real_zone() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        hold_until(NIGHT, "UTC", datetime(2026, 1, 1), "minor")
    with pytest.raises(ValueError, match="unknown time zone"):
        hold_until(NIGHT, "Nowhere/Town", NOW, "minor")
