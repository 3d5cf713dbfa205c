"""Registration only: the `tensorboard` metric sink (imported on use)."""

from __future__ import annotations

from rung.hookspecs import hookimpl


@hookimpl
def rung_register_metric_sinks(register):
    register("tensorboard", impl="rung_tensorboard.sink:TensorBoardSink",
             options="rung_tensorboard.sink:TensorBoardSinkOptions",
             summary="TensorBoard event files in the run folder (scalars; text samples as text)")
