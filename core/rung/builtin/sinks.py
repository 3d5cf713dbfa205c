"""Built-in metric sinks: the console and a JSONL file in the run folder."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

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
    """Appends ``{"step": 10, "loss": 3.21, ...}`` per logged step; a resumed run appends."""

    def __init__(self, options: JsonlSinkOptions, run_dir: Path | None = None) -> None:
        path = Path(options.path)
        self.path = path if path.is_absolute() or run_dir is None else Path(run_dir) / path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def log(self, step: int, metrics: Mapping[str, float | str]) -> None:
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _jsonable(value: float | str) -> float | str | None:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    return value
