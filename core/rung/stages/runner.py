"""Running a plan: every stage in order (skipping what is finished and unchanged), or `--from
STAGE` on, or `--only STAGE`; the record kept in stages.json; one summary table at the end."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rung.errors import RungError
from rung.stages.plan import Plan, Stage
from rung.stages.record import Records


@dataclass
class Row:
    """One line of the summary table."""

    stage: str
    kind: str
    status: str  # ran, resumed, skipped; a serve stage: printed (its command) or served
    seconds: float | None  # the stage's time, every attempt of it (a resumed stage: its killed ones too)
    metrics: dict[str, float]
    output: str
    this_run: float = 0.0  # the part of it spent in this run


def run_plan(plan: Plan, *, start: str | None = None, only: str | None = None, plugins: Any = None) -> list[Row]:
    """Run `plan`'s stages; return (and print) the summary table's rows.

    `start`: rerun that stage and every later one, finished or not (earlier ones run only if
    unfinished). `only`: run that one stage, finished or not; the stages it reads must have run.
    """
    from rung.console import get_console
    from rung.folder_lock import owned

    if start and only:
        raise RungError("--from and --only: give one of them")
    if plugins is None:
        from rung.plugins import get_plugins

        plugins = get_plugins()
    first = plan.stage(start, "--from").index if start else None
    chosen = [plan.stage(only, "--only")] if only else plan.stages
    console = get_console()
    rows: list[Row] = []
    with owned(plan.output_dir, "staged run"):
        records = Records(plan.output_dir, plan.source)
        if only:
            _check_inputs(chosen[0], records, plan)
        for stage in chosen:
            forced = only == stage.name or (first is not None and stage.index >= first)
            if not forced and records.skippable(stage):
                entry = records.get(stage.name) or {}
                console.print(f"stage {stage.name}: finished before and unchanged, skipped", highlight=False,
                              markup=False)
                rows.append(Row(stage.name, stage.kind.name, "skipped", entry.get("seconds"),
                                entry.get("metrics") or {}, _shown_output(stage, entry)))
                continue
            resume = not forced and records.resumable(stage)
            console.rule(f"stage {stage.index + 1}/{len(plan.stages)}: {stage.name} ({stage.kind.title})"
                         + (", resuming" if resume else ""))
            records.started(stage, resume=resume)
            began = time.perf_counter()
            extra = stage.kind.run(stage, plugins, fresh=not resume, serve=only == stage.name)
            seconds = time.perf_counter() - began
            metrics = stage.kind.metrics(stage)
            records.finished(stage, seconds, metrics, extra)
            status = "served" if extra.get("served") else "printed" if "command" in extra else \
                "resumed" if resume else "ran"
            entry = records.get(stage.name) or {}
            rows.append(Row(stage.name, stage.kind.name, status, entry.get("seconds", seconds), metrics,
                            _shown_output(stage, entry), this_run=seconds))
    print_table(rows, plan)
    return rows


def _check_inputs(stage: Stage, records: Records, plan: Plan) -> None:
    """`--only STAGE` reads what earlier stages wrote: they must have run."""
    for name in stage.depends:
        earlier = plan.stage(name, "stage")
        if records.run_id(name) is None or not earlier.kind.done(earlier):
            raise RungError(f"--only {stage.name}: it reads stage '{name}', which has not finished; run it first "
                            f"(rung run {plan.source} --only {name}) or run without --only")


def _shown_output(stage: Stage, entry: dict[str, Any]) -> str:
    return str(entry.get("command") or entry.get("written") or stage.output or stage.output_dir)


def _metric_text(metrics: dict[str, float], limit: int = 6) -> str:
    shown = [f"{key} {value:.4g}" for key, value in list(metrics.items())[:limit]]
    if len(metrics) > limit:
        shown.append(f"(+{len(metrics) - limit} more in stages.json)")
    return "\n".join(shown)


def print_table(rows: list[Row], plan: Plan) -> None:
    """The summary: each stage, its status, time, key metrics and where its outputs are."""
    from rich.table import Table

    from rung.console import get_console

    table = Table(title=f"{plan.source}: {len(rows)} stage{'s' * (len(rows) != 1)}", title_justify="left")
    for column in ("stage", "kind", "status", "time", "key metrics", "outputs"):
        table.add_column(column, overflow="fold")
    for row in rows:
        time_text = "" if row.seconds is None else f"{row.seconds:.1f} s"
        table.add_row(row.stage, row.kind, row.status, time_text, _metric_text(row.metrics), row.output)
    console = get_console()
    if console.is_terminal:
        console.print(table)
    else:  # a log file gets the whole table, not 80 columns of it
        from rich.console import Console

        Console(file=console.file, width=160).print(table)
    total = sum(row.this_run for row in rows)
    console.print(f"{total:.1f} s this run; record: {Path(plan.output_dir) / 'stages.json'}", highlight=False,
                  markup=False)
