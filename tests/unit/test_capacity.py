from __future__ import annotations

from datetime import timedelta

from broadcaster.config.settings import DeliverySettings
from broadcaster.schedule.capacity import check_round


def delivery(**limits: dict[str, float]) -> DeliverySettings:
    return DeliverySettings.model_validate({"rate_limits": limits})


def test_100k_sms_at_100_per_second_miss_a_15_minute_cadence() -> None:
    [warning] = check_round(
        7,
        3,
        {"sms": 100_000, "email": 100_000},
        timedelta(minutes=15),
        delivery(sms={"per_second": 100, "burst": 100}),
    )
    assert warning.needs == timedelta(seconds=999)
    text = str(warning)
    assert "100000 sms messages at 100/s take 16m39s" in text
    assert "longer than the 15m cadence" in text
    assert "it needs 111/s: raise delivery.rate_limits.sms to at least that" in text


def test_the_warning_reads_in_whole_seconds_and_survives_a_rate_of_almost_nothing() -> None:
    [warning] = check_round(
        1,
        1,
        {"sms": 2000},
        timedelta(minutes=15, seconds=57, milliseconds=830),  # a promise's gap, not round
        delivery(sms={"per_second": 1, "burst": 1}),
    )
    assert "take 33m19s, longer than the 15m58s cadence" in str(warning)
    [never] = check_round(
        1, 1, {"sms": 2000}, timedelta(minutes=15), delivery(sms={"per_second": 1e-15})
    )
    assert never.needs == timedelta.max and "take for ever" in str(never)


def test_no_warning_when_the_rate_carries_the_round_or_is_unlimited() -> None:
    limits = delivery(sms={"per_second": 200, "burst": 1})
    assert check_round(1, 1, {"sms": 100_000}, timedelta(minutes=15), limits) == []
    assert check_round(1, 1, {"email": 10**7}, timedelta(minutes=15), limits) == []
    assert check_round(1, 1, {"sms": 10**7}, None, limits) == []  # the final round


def test_several_daemons_each_send_their_share_of_the_rate() -> None:
    """Two daemons each given 1/s (their share of a 2/s account, as docs/scaling.md says)
    send 2,000 SMS in 16m40s together: the warning that one daemon's rate raised, telling
    operators to raise the limit they had split, was false."""
    limits = delivery(sms={"per_second": 1, "burst": 1})
    cadence = timedelta(minutes=30)
    [alone] = check_round(1, 1, {"sms": 2000}, cadence, limits)
    assert "2000 sms messages at 1/s take 33m19s" in str(alone)
    assert check_round(1, 1, {"sms": 2000}, cadence, limits, daemons=2) == []
    [three] = check_round(1, 1, {"sms": 9000}, cadence, limits, daemons=3)
    assert "9000 sms messages at 3/s (3 daemons at 1/s) take 49m59s" in str(three)


def test_with_several_daemons_the_advice_is_each_ones_share() -> None:
    """It said to raise each daemon's limit to the whole rate needed (111/s on each of two
    daemons would send at 222/s, past the account's rate)."""
    limits = delivery(sms={"per_second": 50, "burst": 50})
    [warning] = check_round(1, 1, {"sms": 100_000}, timedelta(minutes=15), limits, daemons=2)
    text = str(warning)
    assert (
        "it needs 111/s: raise delivery.rate_limits.sms to at least 55.6/s on each of the 2 daemons"
        in text
    )
