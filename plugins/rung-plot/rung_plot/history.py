"""A run's metric history, read from the metrics.jsonl its jsonl sink wrote.

Each line is `{"step": N, "<metric>": value, ...}`; evaluation tasks log `<task>/<metric>`,
generated samples are strings (they are not drawn), and the jsonl sink writes NaN and
infinities as the strings "nan", "inf", "-inf". The history is the latest one: a run that
restarted or resumed from an earlier step logs that step again, and its new records replace
the old ones from there on, so every curve is the one the final weights went through.

A line that is not a JSON object with an integer `step` is an error naming the file and line,
except the last line when it has no newline yet: a record the run is still writing.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rung.errors import RungError

METRICS_FILE = "metrics.jsonl"
_SPECIAL = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}  # how the jsonl sink writes them


@dataclass
class RunHistory:
    """One run's records (its latest history) and where they came from."""

    folder: Path  # the run folder
    path: Path  # its metrics file
    records: list[dict[str, Any]] = field(default_factory=list)

    def metrics(self) -> dict[str, int]:
        """Every metric with a numeric value, and how many steps it has one at, in first-logged order."""
        counts: dict[str, int] = {}
        for record in self.records:
            for key, value in record.items():
                if key != "step" and number(value) is not None:
                    counts[key] = counts.get(key, 0) + 1
        return counts

    def logged(self) -> set[str]:
        """Every key any record has, numbers and text alike."""
        return {key for record in self.records for key in record if key != "step"}

    def series(self, metric: str, x: str = "step") -> tuple[list[float], list[float]]:
        """The (x, value) points of `metric`, finite values only, with x the step or the tokens seen."""
        place = self._tokens_at() if x == "tokens" else float
        xs: list[float] = []
        ys: list[float] = []
        for record in self.records:
            value = number(record.get(metric))
            if value is None or not math.isfinite(value):
                continue
            where = place(record["step"])
            if where is not None:
                xs.append(where)
                ys.append(value)
        return xs, ys

    def _tokens_at(self):
        """Step -> tokens seen, from the records that log `tokens`; other steps linearly between
        two of them (step 0, before training, is 0 tokens); None outside the logged range."""
        known = sorted({r["step"]: t for r in self.records if (t := number(r.get("tokens"))) is not None}.items())
        if not known:
            raise RungError(f"{self.path}: logs no 'tokens' to put on the x axis (use --x step)")
        steps = [step for step, _ in known]

        def place(step: int) -> float | None:
            i = bisect.bisect_left(steps, step)
            if i < len(steps) and steps[i] == step:
                return known[i][1]
            if step == 0:
                return 0.0
            if i == 0 or i == len(steps):
                return None
            (s0, t0), (s1, t1) = known[i - 1], known[i]
            return t0 + (t1 - t0) * (step - s0) / (s1 - s0)

        return place


def number(value: Any) -> float | None:
    """A logged value as a float, or None for text (booleans are not numbers here)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value in _SPECIAL:
        return _SPECIAL[value]
    return None


def metrics_path(run: str | Path) -> tuple[Path, Path]:
    """(run folder, metrics file) for RUN: a run folder or a metrics file itself.

    In a folder, the file is the one its saved config.yaml's jsonl sink names (`path:`), else
    metrics.jsonl.
    """
    given = Path(run)
    if given.is_file():
        return given.parent, given
    if not given.exists():
        raise RungError(f"{run}: no such run folder or metrics file")
    path = given / _configured_metrics_file(given)
    if not path.is_file():
        raise RungError(f"{run}: no {path.name} in this folder (a run writes it with the jsonl sink: "
                        "logging.sinks: [{name: jsonl}])")
    return given, path


def _configured_metrics_file(folder: Path) -> str:
    config = folder / "config.yaml"
    if not config.is_file():
        return METRICS_FILE
    import yaml

    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
        sinks = data["logging"]["sinks"]
        jsonl = next(s for s in sinks if isinstance(s, dict) and s.get("name") == "jsonl")
        return str(jsonl.get("path") or METRICS_FILE)
    except (yaml.YAMLError, KeyError, TypeError, StopIteration, OSError):
        return METRICS_FILE  # not a run's saved config, or no jsonl sink in it: the default name


def read_history(run: str | Path) -> RunHistory:
    """The latest history of RUN (a run folder or a metrics file), each step once
    (`rung.jsonl.latest_history`); bad lines are errors at file:line (`rung.jsonl.read_jsonl`),
    and a last line still being written is left for the next plot."""
    from rung.jsonl import latest_history, read_jsonl

    folder, path = metrics_path(run)
    records: list[dict[str, Any]] = []
    for record, where in read_jsonl(path, skip_partial_last=True):
        if not isinstance(record, dict):
            raise RungError(f"{where}: not a JSON object of metrics")
        step = record.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            raise RungError(f"{where}: no integer 'step' in this record")
        records.append(record)
    return RunHistory(folder=folder, path=path, records=latest_history(records))
