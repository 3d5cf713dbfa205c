"""A pretraining run's metric history: what the engine logged, as the loss plot reads it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


class RecordingRun:
    """The run as the engine sees it, keeping every logged metric for the plot."""

    def __init__(self, run: Any) -> None:
        self._run = run
        self.records: list[dict[str, Any]] = []

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.records.append({"step": step, **metrics})
        self._run.log(step, metrics)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._run, name)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl, as the latest history (`rung.jsonl.latest_history`): a
    restart or a resume that went back in steps replaces the records from that step on; a damaged line
    is left out (this feeds the plot a run draws at its end)."""
    from rung.jsonl import latest_history, read_jsonl

    return latest_history(record for record, _ in read_jsonl(path, skip_partial_last=True, skip_invalid=True))


def metrics_file(run: Any) -> Path | None:
    """Where the run's jsonl sink writes, if it has one."""
    for sink in getattr(run.config.logging, "sinks", []):
        if getattr(sink, "name", None) == "jsonl":
            path = Path(getattr(sink, "path", "metrics.jsonl"))
            return path if path.is_absolute() else Path(run.output_dir) / path
    return None


def history(run: Any, recorder: RecordingRun) -> list[dict[str, Any]]:
    """The whole run's records (all its resumes, from metrics.jsonl) or this process's."""
    path = metrics_file(run)
    return read_metrics(path) if path is not None and path.is_file() else recorder.records
