"""One shared console for progress bars and metric lines, so they never tear each other."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def get_console() -> Any:
    """The rich Console every part of rung prints through (stderr, so stdout stays data)."""
    from rich.console import Console

    return Console(stderr=True)


class ProgressBar:
    """A handle on one task of a rich progress display (a silent one when `progress` is off)."""

    def __init__(self, progress: Any = None, task: Any = None) -> None:
        self._progress, self._task = progress, task

    def advance(self, amount: float = 1, **fields: Any) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=amount, **fields)

    def update(self, completed: float | None = None, **fields: Any) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, **fields)


@contextmanager
def progress(
    total: float | None, description: str, unit: str = "", *, start: float = 0, enabled: bool = True
) -> Iterator[ProgressBar]:
    """A progress bar on the console, from `start`; `enabled=False` gives a silent one (e.g.
    on every process but the first of a distributed run)."""
    if not enabled:
        yield ProgressBar()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=get_console(), transient=False) as bar:
        task = bar.add_task(description, total=total, completed=start, info="")
        yield ProgressBar(bar, task)
