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
    """A handle on one task of a rich progress display."""

    def __init__(self, progress: Any, task: Any) -> None:
        self._progress, self._task = progress, task

    def advance(self, amount: float = 1, **fields: Any) -> None:
        self._progress.update(self._task, advance=amount, **fields)

    def update(self, completed: float | None = None, **fields: Any) -> None:
        self._progress.update(self._task, completed=completed, **fields)


@contextmanager
def progress(total: float | None, description: str, unit: str = "") -> Iterator[ProgressBar]:
    """A progress bar on the console; silent when it is not a terminal except for its end."""
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
        task = bar.add_task(description, total=total, info="")
        yield ProgressBar(bar, task)
