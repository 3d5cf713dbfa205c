"""Registration only: the `wandb` metric sink (imported on use)."""

from __future__ import annotations

from rung.hookspecs import hookimpl


@hookimpl
def rung_register_metric_sinks(register):
    register("wandb", impl="rung_wandb.sink:WandbSink", options="rung_wandb.sink:WandbSinkOptions",
             summary="a Weights & Biases run (online, or offline in the run folder)")
