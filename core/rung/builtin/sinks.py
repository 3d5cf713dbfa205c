"""Built-in metric sinks: the console and a JSONL file in the run folder.

When a run resumes from step N (the step its checkpoint holds), the loop tells the run, and the
run each sink that has a `resumed(step)` method: what the killed attempt logged after N is
superseded. The JSONL sink then rewrites its file (atomically) so that it holds each step once,
as the resumed run's history is, for any reader (jq, pandas, `rung plot`), not only those that
know to dedupe (`rung.jsonl.latest_history`). Rewriting rather than appending a
`{"resumed_from": N}` marker: a marker would leave every reader to interpret the file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rung.options import Options


def _format(value: float | str) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


class ConsoleSinkOptions(Options):
    """Print metric lines to the console."""


class ConsoleSink:
    """Prints ``step 10 | loss 3.21 | lr 3e-4`` lines above any progress bar."""

    def __init__(self, options: ConsoleSinkOptions, run_dir: Path | None = None) -> None:
        from rung.console import get_console

        self.console = get_console()

    def log(self, step: int, metrics: Mapping[str, float | str]) -> None:
        parts = [f"step {step}"] + [f"{key} {_format(value)}" for key, value in metrics.items()]
        self.console.print(" | ".join(parts), highlight=False, markup=False)

    def close(self) -> None:
        pass


class JsonlSinkOptions(Options):
    """Append metrics as JSON lines."""

    path: str = "metrics.jsonl"  # relative to the run folder


class JsonlSink:
    """Appends ``{"step": 10, "loss": 3.21, ...}`` per logged step. A resumed run appends to
    the same file; when it resumes from step N, the file is rewritten once to the run's own
    history: what earlier attempts logged up to N, what this attempt logged, each step once."""

    def __init__(self, options: JsonlSinkOptions, run_dir: Path | None = None) -> None:
        path = Path(options.path)
        self.path = path if path.is_absolute() or run_dir is None else Path(run_dir) / path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._earlier = _drop_partial_last_line(self.path)  # earlier attempts wrote here
        self._mine: list[dict[str, Any]] = []  # this attempt's records until it resumes (a few)
        self._resumed = False
        self._file = self.path.open("a", encoding="utf-8")

    def log(self, step: int, metrics: Mapping[str, float | str]) -> None:
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        if not self._resumed and self._earlier:
            self._mine.append(record)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def resumed(self, step: int) -> None:
        """Rewrite the file as the resumed run's history: earlier attempts' records up to
        `step`, less those this attempt logged again (same step, same metric names: a trainer's
        step-0 summary), then this attempt's, in step order. Written beside and renamed over,
        so a kill during it leaves the old file or the new one, never half of one."""
        self._resumed = True
        if not self._earlier:
            return
        from rung.jsonl import read_jsonl

        records = [r for r, _ in read_jsonl(self.path, skip_partial_last=True, skip_invalid=True)]
        earlier = records[: len(records) - len(self._mine)]  # this attempt's records end the file
        again = {(r["step"], frozenset(r)) for r in self._mine}
        old = [r for r in earlier if isinstance(r, dict) and _step_at_most(r, step)
               and (r.get("step"), frozenset(r)) not in again]
        history = sorted(old + self._mine, key=lambda r: r["step"])  # stable: old first at a step
        self._file.close()
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with temporary.open("w", encoding="utf-8") as out:
                out.writelines(json.dumps(r) + "\n" for r in history)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        finally:
            temporary.unlink(missing_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        self._mine = []

    def close(self) -> None:
        self._file.close()


def _step_at_most(record: Mapping[str, Any], step: int) -> bool:
    value = record.get("step")
    return isinstance(value, int) and not isinstance(value, bool) and value <= step


def _drop_partial_last_line(path: Path) -> bool:
    """Cut a last line a killed writer left without its newline (appending after it would
    spoil the next record too); whether the file holds records of earlier attempts."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size == 0:
        return False
    with path.open("rb+") as handle:
        handle.seek(size - 1)
        if handle.read(1) != b"\n":
            end = size
            while end > 0:  # back to the last newline, a block at a time
                start = max(0, end - (1 << 16))
                handle.seek(start)
                cut = handle.read(end - start).rfind(b"\n")
                if cut >= 0:
                    end = start + cut + 1
                    break
                end = start
            handle.truncate(end)
            size = end
    return size > 0


def _jsonable(value: float | str) -> float | str | None:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    return value
