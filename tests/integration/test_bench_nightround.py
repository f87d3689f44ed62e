"""The night-round benchmark writes the same round by day and in quiet hours: by day nothing
is held, at night every message is (the shipped rules hold non-critical ones)."""

from __future__ import annotations

from pathlib import Path

from bench import nightround


async def test_the_night_round_holds_every_message_and_the_day_round_none(
    tmp_path: Path,
) -> None:
    result = await nightround.run(tmp_path, backends=["sqlite"], customers=40)
    [run] = result["runs"]
    assert (run["day"]["deliveries"], run["day"]["held"]) == (40, 0)
    assert (run["night"]["deliveries"], run["night"]["held"]) == (40, 40)
    assert [row["what"] for row in result["rows"]] == [
        "major round of 40 by day, sqlite",
        "major round of 40 at night, sqlite",
    ]
