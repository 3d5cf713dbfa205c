"""Progress of the preparation stages: tasks write their counts to small files, the parent
draws rich progress bars from them.

Worker processes cannot share a progress bar, so each task (`ProgressFile`) writes the bytes
and documents it has processed to ``<folder>/<rank>.json`` now and then; `Display.polling`
sums a stage's files (`read_progress`) into its bar while the stage runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class ProgressFile:
    """Bytes a task has processed, written now and then to a small JSON file the parent polls."""

    def __init__(self, folder: str | None, rank: int, every: float = 0.25) -> None:
        self.path = Path(folder) / f"{rank:05d}.json" if folder else None
        self.every, self.last, self.bytes, self.docs = every, 0.0, 0, 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, nbytes: int, docs: int = 1) -> None:
        self.bytes += nbytes
        self.docs += docs
        now = time.monotonic()
        if self.path is not None and now - self.last > self.every:
            self.last = now
            self._write(False)

    def close(self) -> None:
        if self.path is not None:
            self._write(True)

    def _write(self, done: bool) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"bytes": self.bytes, "docs": self.docs, "done": done}))
        os.replace(tmp, self.path)


def read_progress(folder: str | Path) -> tuple[int, int]:
    """(bytes, docs) summed over the progress files of a stage."""
    total = docs = 0
    for path in Path(folder).glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        total += data.get("bytes", 0)
        docs += data.get("docs", 0)
    return total, docs


class Display:
    """Rich progress bars fed by the tasks' progress files (or nothing when quiet)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None

    def __enter__(self) -> Display:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TransferSpeedColumn,
            )

            from rung.console import get_console

            self._progress = Progress(TextColumn("[bold]{task.description:<18}"), BarColumn(), DownloadColumn(),
                                      TransferSpeedColumn(), TimeElapsedColumn(), TextColumn("{task.fields[info]}"),
                                      console=get_console())
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def add(self, description: str, total: float | None) -> Any:
        if self._progress is None:
            return None
        return self._progress.add_task(description, total=total, info="")

    def update(self, task: Any, **fields: Any) -> None:
        if self._progress is not None and task is not None:
            self._progress.update(task, **fields)

    @contextlib.contextmanager
    def polling(self, task: Any, folder: str | None) -> Iterator[None]:
        """Update `task` from a stage's progress files while the stage runs."""
        if self._progress is None or task is None or folder is None:
            yield
            return
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(0.2):
                done, docs = read_progress(folder)
                self._progress.update(task, completed=done, info=f"{docs:,} docs")

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            done, docs = read_progress(folder)
            self._progress.update(task, completed=done, total=max(done, 1), info=f"{docs:,} docs")


def counted(texts: Iterator[str], display: Display, task: Any, fed: list[int]) -> Iterator[str]:
    """`texts`, counting their bytes into `fed[0]` and the progress bar (work done in-process,
    such as tokenizer training, has no progress files)."""
    last = time.monotonic()
    for text in texts:
        fed[0] += len(text.encode("utf-8"))
        if time.monotonic() - last > 0.2:
            display.update(task, completed=fed[0])
            last = time.monotonic()
        yield text
