"""One figure for one or several runs: a subplot per metric, a line per run (matplotlib, Agg).

The default metrics are those some run logged at two steps or more (a curve), `tokens` left
out (it is an x axis, `x="tokens"`), the losses first; name others to draw them, one-off
figures such as a step-0 dataset count included.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rung.errors import RungError
from rung_plot.history import RunHistory

AXIS_METRICS = {"tokens"}  # cumulative counts that make an x axis rather than a curve


def default_metrics(runs: Sequence[RunHistory]) -> list[str]:
    """Every metric some run logged at two steps or more, but `tokens`; `loss` first, then
    the other losses, then the rest in the order they were first logged."""
    order: dict[str, int] = {}
    for run in runs:
        for name, count in run.metrics().items():
            if count >= 2 and name not in AXIS_METRICS:
                order.setdefault(name, len(order))
    return sorted(order, key=lambda name: (name != "loss", "loss" not in name, order[name]))


def check_metrics(runs: Sequence[RunHistory], wanted: Sequence[str]) -> None:
    """Every wanted metric has numbers in some run; else one line: which, and what there is."""
    numeric = {name for run in runs for name in run.metrics()}
    logged = {name for run in runs for name in run.logged()}
    for name in wanted:
        if name in numeric:
            continue
        if name in logged:
            raise RungError(f"metric '{name}' is text in every run (samples are not drawn); "
                            f"numbers: {', '.join(sorted(numeric)) or 'none'}")
        close = difflib.get_close_matches(name, sorted(numeric), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise RungError(f"no run logs metric '{name}'{hint}; logged: {', '.join(sorted(numeric)) or 'nothing'}")


def labels(runs: Sequence[RunHistory], given: Sequence[str]) -> list[str]:
    """Each run's label: its folder's name, or the path as given when two folders share a name."""
    names = [run.folder.resolve().name or str(run.folder) for run in runs]
    return [name if names.count(name) == 1 else str(path) for name, path in zip(names, given)]


def plot_runs(runs: Sequence[RunHistory], metrics: Sequence[str] | None = None, x: str = "step",
              run_labels: Sequence[str] | None = None) -> Any:
    """The matplotlib Figure: one subplot per metric (`metrics`, or the defaults), one line per run."""
    from matplotlib.figure import Figure

    if x not in ("step", "tokens"):
        raise RungError(f"x axis '{x}': choose step or tokens")
    chosen = list(metrics) if metrics else default_metrics(runs)
    if not chosen:
        raise RungError(f"nothing to plot: no metric is logged at two steps or more in {runs[0].path}"
                        + (f" or {len(runs) - 1} other runs" if len(runs) > 1 else ""))
    check_metrics(runs, chosen)
    run_labels = list(run_labels) if run_labels else [run.folder.name for run in runs]
    series = [[run.series(name, x) for run in runs] for name in chosen]  # may refuse --x tokens first

    columns = 1 if len(chosen) == 1 else 2 if len(chosen) <= 4 else 3
    rows = math.ceil(len(chosen) / columns)
    figure = Figure(figsize=(5.0 * columns, 3.4 * rows + (0.4 if len(runs) > 1 else 0.2)), dpi=100,
                    layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False)
    axes = [ax for row in grid for ax in row]
    for unused in axes[len(chosen):]:
        figure.delaxes(unused)
    for ax, name, per_run in zip(axes, chosen, series):
        for index, ((xs, ys), label) in enumerate(zip(per_run, run_labels)):
            if not xs:
                continue
            few = len(xs) <= 25  # a handful of evaluation points reads better with markers
            ax.plot(xs, ys, label=label, color=f"C{index % 10}", linewidth=1.3,
                    marker="o" if few else None, markersize=3)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("optimizer step" if x == "step" else "tokens seen")
        ax.grid(True, alpha=0.3)
    if len(runs) > 1:
        handles = {}
        for ax in axes[:len(chosen)]:
            for line in ax.get_lines():
                handles.setdefault(line.get_label(), line)
        figure.legend(list(handles.values()), list(handles), loc="outside upper center",
                      ncols=min(len(handles), 4), fontsize=9)
    else:
        figure.suptitle(run_labels[0], fontsize=11)
    return figure


def save(figure: Any, path: str | Path) -> Path:
    """Write the figure as a PNG through the Agg canvas (no display, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure).print_png(str(path))
    return path
