"""The results of `rung eval`: one table of tasks x models, and the same as JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

COUNTS = {"count", "tokens", "bytes"}  # metrics that are whole numbers

# results[task][model label][metric] = value
Results = Mapping[str, Mapping[str, Mapping[str, float]]]


def format_value(metric: str, value: float | None) -> str:
    """A metric's value as the table shows it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if metric in COUNTS:
        return f"{int(value):,}"
    if abs(value) >= 1e6:  # an untrained model's perplexity
        return f"{value:.4g}"
    return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4f}"


def results_table(results: Results, models: Sequence[str]) -> Any:
    """A rich Table: a row per task and metric, a column per model."""
    from rich.table import Table

    table = Table(title="rung eval", show_lines=False)
    table.add_column("task")
    table.add_column("metric")
    for label in models:
        table.add_column(label, justify="right")
    for task, by_model in results.items():
        metrics: list[str] = []
        for label in models:
            metrics.extend(m for m in by_model.get(label, {}) if m not in metrics)
        for i, metric in enumerate(metrics):
            cells = [format_value(metric, by_model.get(label, {}).get(metric)) for label in models]
            table.add_row(task if i == 0 else "", metric, *cells, end_section=i == len(metrics) - 1)
    return table


def finite(value: Any) -> Any:
    """JSON has no NaN or infinity: those become null (nested structures walked)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def results_json(models: Sequence[Mapping[str, Any]], results: Results,
                 harness: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What `--json` and the run folder's results.json hold."""
    out: dict[str, Any] = {"models": [dict(m) for m in models], "results": finite(results)}
    if harness:
        out["harness"] = finite(harness)
    return out


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write `data` as JSON (through rung.evaluation's atomic write; non-JSON values as strings)."""
    from rung.evaluation import write_json_atomic

    write_json_atomic(Path(path), json.loads(json.dumps(data, default=str)))
