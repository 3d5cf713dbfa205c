"""`rung plot RUN [RUN...]`: the loss and metric curves of one or several runs in one PNG."""

from __future__ import annotations

from pathlib import Path

import click

OUTPUT_NAME = "plot.png"


def default_output(runs: list, folders: list[Path]) -> Path:
    """One run: plot.png in its folder, beside its metrics. Several: plot.png in the current folder."""
    return folders[0] / OUTPUT_NAME if len(runs) == 1 else Path.cwd() / OUTPUT_NAME


def draw(runs: tuple[str, ...] | list[str], metrics: list[str] | None = None, x: str = "step",
         output: str | Path | None = None) -> tuple[Path, object]:
    """Read every run, draw them, write the PNG; (its path, the figure). Bad input is a RungError."""
    from rung_plot.figure import labels, plot_runs, save
    from rung_plot.history import read_history

    histories = [read_history(run) for run in runs]
    figure = plot_runs(histories, metrics, x, labels(histories, list(runs)))
    path = Path(output) if output else default_output(list(runs), [h.folder for h in histories])
    if path.is_dir():
        path = path / OUTPUT_NAME
    return save(figure, path), figure


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--metrics", "-m", default=None, metavar="NAME,NAME",
              help="metrics to draw, comma-separated (e.g. loss,val_loss,arith/accuracy); default: every "
                   "metric logged at two steps or more, but tokens")
@click.option("--x", "x_axis", type=click.Choice(["step", "tokens"]), default="step", show_default=True,
              help="the x axis: optimizer step, or tokens seen (runs that log `tokens`)")
@click.option("--output", "-o", type=click.Path(), default=None,
              help="the PNG to write; default: plot.png in the run's folder for one run, in the current "
                   "folder for several")
def plot(runs: tuple[str, ...], metrics: str | None, x_axis: str, output: str | None) -> None:
    """Draw the loss and metric curves of each RUN (a run folder, or its metrics.jsonl) in one PNG.

    \b
    rung plot runs/stdlib                          # runs/stdlib/plot.png
    rung plot runs/a runs/b -m loss,val_loss -o cmp.png
    rung plot runs/a runs/b --x tokens
    One subplot per metric, one line per run, labelled by its folder's name.
    """
    wanted = [name.strip() for name in metrics.split(",") if name.strip()] if metrics else None
    path, figure = draw(runs, wanted, x_axis, output)
    click.echo(f"wrote {path} ({len(figure.axes)} metrics, {len(runs)} run{'s' if len(runs) > 1 else ''})")
