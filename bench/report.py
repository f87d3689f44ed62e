"""Rows of figures, the printed table, the machine they ran on, and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Row:
    """One figure. With ``ratio`` and ``target``, the target is ``ratio >= target``; with
    ``limit``, it is ``value < limit`` (a time or a size that must stay under it); with
    ``at_least``, ``value >= at_least`` (a share that must reach it).

    A row with a target is not met when its figure is missing (the work it times never
    finished) or when ``complete`` is False (part of the work was not done, so the figure
    flatters), whatever the figure; ``skipped`` (the scenario did not run here) leaves
    ``met`` empty."""

    what: str
    value: float | None
    unit: str
    baseline: str = ""
    ratio: float | None = None
    target: float | None = None
    limit: float | None = None
    at_least: float | None = None
    note: str = ""
    complete: bool = True
    skipped: bool = False

    @property
    def met(self) -> bool | None:
        if self.skipped or (self.target, self.limit, self.at_least) == (None, None, None):
            return None
        if self.value is None or not self.complete:
            return False
        if self.target is not None:
            # No ratio: the baseline measured nothing, so there is nothing to compare with.
            return None if self.ratio is None else self.ratio >= self.target
        if self.limit is not None:
            return self.value < self.limit
        if self.at_least is not None:
            return self.value >= self.at_least
        return None

    def as_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["met"] = self.met
        return document


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        model = platform.processor()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _figure(value: float | None, unit: str) -> str:
    if value is None:
        return "not measured"
    if unit in ("s", "ms", "MiB", "MB"):
        return f"{value:,.2f} {unit}"
    if unit == "%":
        return f"{value:.1f} %"
    return f"{value:,.0f} {unit}"


def table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of row dicts (as stored in the JSON)."""
    header = ("what", "figure", "baseline", "ratio", "target", "met", "note")
    lines = [header]
    for row in rows:
        ratio = f"{row['ratio']:.2f}x" if row.get("ratio") is not None else ""
        if row.get("target") is not None:
            target = f">= {row['target']:g}x"
        elif row.get("limit") is not None:
            target = f"< {_figure(row['limit'], row['unit'])}"
        elif row.get("at_least") is not None:
            target = f">= {_figure(row['at_least'], row['unit'])}"
        else:
            target = ""
        met = {True: "yes", False: "NO", None: ""}[row.get("met")]
        lines.append(
            (
                row["what"],
                _figure(row.get("value"), row["unit"]),
                row.get("baseline", ""),
                ratio,
                target,
                met,
                row.get("note", ""),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for index, line in enumerate(lines):
        out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def write(path: Path, scenario: str, quick: bool, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"scenario": scenario, "quick": quick, "machine": machine(), **result}
    path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
