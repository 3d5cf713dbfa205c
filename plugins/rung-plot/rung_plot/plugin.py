"""Registration only: the `plot` command (imported on use)."""

from __future__ import annotations

from rung.hookspecs import hookimpl


@hookimpl
def rung_register_commands(register):
    register("plot", impl="rung_plot.plot_cmd:plot",
             summary="Draw the loss and metric curves of one or several runs in one PNG.")
