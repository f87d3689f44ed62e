"""``python -m bench.summary PATH ...``: one markdown table of the result files given.

It reads the JSON files ``python -m bench`` wrote (each PATH a file, or a folder searched
with its sub-folders) and
prints their rows as a markdown table, with the machine they ran on and, per file, the
sizes (quick or full), the backends skipped and the CPU placement: what the README's
performance section and ``docs/performance.md`` quote, copied rather than retyped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _figure(row: dict[str, Any]) -> str:
    value = row.get("value")
    unit = row["unit"]
    if value is None:
        return "not measured"
    if unit == "msg/s":
        return f"{value:,.0f} msg/s"
    if unit == "%":
        return f"{value:.1f} %"
    if unit in ("MiB", "MB"):
        return f"{value:,.0f} {unit}"
    return f"{value:,.2f} {unit}"


def _target(row: dict[str, Any]) -> str:
    if row.get("target") is not None:
        return f"≥ {row['target']:g}×"
    if row.get("limit") is not None:
        return f"< {row['limit']:g} {row['unit']}"
    if row.get("at_least") is not None:
        return f"≥ {row['at_least']:g} {row['unit']}"
    return ""


def markdown(documents: list[dict[str, Any]]) -> str:
    lines = [
        "| what | figure | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for document in documents:
        for row in document["rows"]:
            ratio = f"{row['ratio']:.2f}×" if row.get("ratio") is not None else ""
            met = {True: "yes", False: "**no**", None: ""}[row.get("met")]
            what = row["what"] + (f" ({row['note']})" if row.get("note") else "")
            lines.append(
                f"| {what} | {_figure(row)} | {row.get('baseline', '')} | {ratio} "
                f"| {_target(row)} | {met} |"
            )
    return "\n".join(lines)


def conditions(path: Path, document: dict[str, Any]) -> str:
    """One line on how the file's figures were measured: quick or full sizes, the backends
    skipped (PostgreSQL not reachable) and where the processes ran."""
    sizes = "quick" if document.get("quick") else "full"
    if "skipped_backends" in document:
        skipped = ", ".join(document["skipped_backends"]) or "none"
    else:  # written before the field was
        skipped = "not recorded"
    if document.get("skipped"):  # the whole scenario (firstround without PostgreSQL)
        skipped += f"; scenario skipped: {document['skipped']}"
    placement = document.get("placement", "not recorded")
    if isinstance(placement, dict):
        placement = ", ".join(f"{key} {value}" for key, value in placement.items())
    return (
        f"- {path} ({document['scenario']}): {sizes} sizes; skipped backends: {skipped}; "
        f"placement: {placement}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("paths", type=Path, nargs="+")
    args = parser.parse_args()
    files = [p for path in args.paths for p in ([path] if path.is_file() else path.rglob("*.json"))]
    found = [(path, json.loads(path.read_text(encoding="utf-8"))) for path in sorted(files)]
    order = {"fanout": 0, "latency": 1, "scale": 2, "promises": 3, "firstround": 4}
    found.sort(key=lambda pair: order.get(pair[1]["scenario"], 9))
    documents = [document for _, document in found]
    machines = {
        (d["machine"]["cpus"], d["machine"]["cpu_model"], d["machine"]["date"][:10])
        for d in documents
    }
    for cpus, model, date in sorted(machines):
        print(f"Machine: {cpus} CPUs, {model}, {date}")
    print()
    for path, document in found:
        print(conditions(path, document))
    print()
    print(markdown(documents))


if __name__ == "__main__":
    main()
