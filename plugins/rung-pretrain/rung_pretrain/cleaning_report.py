"""The cleaning report: what each step read, kept, changed and removed (and why).

`report_from_stats` builds it from the stages' merged datatrove stats (the counts every
reader, filter and dedup step records); `format_report` draws it as a table for `rung
prepare`; `report_line` says it in one line for an error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


STEP_ORDER = ["rung sources", "unicode normalisation", "control characters", "strip trailing whitespace",
              "length", "quality", "dedup filter"]


STEP_LABELS = {"rung sources": "read", "unicode normalisation": "normalize", "control characters": "control chars",
               "strip trailing whitespace": "strip", "length": "length", "quality": "quality", "dedup filter": "dedup"}


def report_from_stats(stats_files: Sequence[Path]) -> list[dict[str, Any]]:
    """The cleaning report: one entry per step, from datatrove's merged stats.json files."""
    entries: dict[str, dict[str, Any]] = {}
    for path in stats_files:
        if not Path(path).is_file():
            continue
        for step in json.loads(Path(path).read_text()):
            name = step["name"].split(": ", 1)[-1]
            if name not in STEP_ORDER:
                continue
            if name == "dedup filter" or name not in entries:
                entries[name] = _entry(name, step["stats"])
    return [entries[name] for name in STEP_ORDER if name in entries]


def _total(stats: dict[str, Any], key: str) -> int:
    value = stats.get(key)
    if value is None:
        return 0
    if isinstance(value, dict):
        return int(value.get("total", 0))
    return int(value)


def _entry(name: str, stats: dict[str, Any]) -> dict[str, Any]:
    removed: dict[str, dict[str, int]] = {}
    for key in stats:
        for prefix in ("removed/", "skipped/"):
            if key.startswith(prefix):
                reason = key[len(prefix):]
                removed[reason] = {"docs": _total(stats, key),
                                   "bytes": _total(stats, f"{prefix[:-1]}_bytes/{reason}")}
    entry = {
        "step": STEP_LABELS.get(name, name),
        "docs_in": _total(stats, "docs_in"),
        "docs_out": _total(stats, "docs_out"),
        "bytes_in": _total(stats, "bytes_in"),
        "bytes_out": _total(stats, "bytes_out"),
        "changed": _total(stats, "changed"),
        "removed": removed,
    }
    if name == "rung sources":
        entry["docs_in"] = entry["docs_out"] + sum(r["docs"] for r in removed.values())
        entry["bytes_in"] = entry["bytes_out"] + sum(r["bytes"] for r in removed.values())
    return entry


def report_line(report: list[dict[str, Any]]) -> str:
    parts = []
    for entry in report:
        for reason, removed in entry["removed"].items():
            parts.append(f"{entry['step']}: {removed['docs']} {reason}")
    return ", ".join(parts) or "no documents found"


def _mb(nbytes: int) -> str:
    mb = nbytes / 1e6
    return f"{mb:.1f}" if mb >= 1 else f"{mb:.3g}"


def format_report(report: list[dict[str, Any]]) -> Any:
    """The cleaning report as a rich Table (docs and bytes in/out per step, and why removed)."""
    from rich.table import Table

    from rich import box

    table = Table(title="cleaning report", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("step", no_wrap=True)
    table.add_column("docs in→out", justify="right", no_wrap=True)
    table.add_column("MB in→out", justify="right", no_wrap=True)
    table.add_column("removed: docs (MB); changed", no_wrap=True)
    for entry in report:
        notes = [f"{reason} {r['docs']:,} ({r['bytes'] / 1e6:.2f})" for reason, r in sorted(entry["removed"].items())]
        if entry["changed"]:
            notes.append(f"changed {entry['changed']:,}")
        table.add_row(entry["step"], f"{entry['docs_in']:,}→{entry['docs_out']:,}",
                      f"{_mb(entry['bytes_in'])}→{_mb(entry['bytes_out'])}", "\n".join(notes) or "-")
    return table
