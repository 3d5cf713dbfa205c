"""The `tensorboard` sink: each logged step as TensorBoard events in `<run folder>/tensorboard`.

Numbers become scalars (one chart per metric name; `task/metric` names group into sections);
strings (generated samples) become text summaries, shown in TensorBoard's Text tab, or are
skipped with `text: false`. The events are written with TensorBoard's own `EventFileWriter`
and protobufs, not torch's `SummaryWriter`, so nothing here needs torch or TensorFlow.

A resumed run appends a new event file to the same folder; TensorBoard reads them as one run.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field

from rung.options import Options


class TensorBoardSinkOptions(Options):
    """Write metrics as TensorBoard event files."""

    dir: str = Field("tensorboard", description="the event files' folder, relative to the run folder")
    text: bool = Field(True, description="log string metrics (generated samples) as text; false: skip them")
    flush_secs: float = Field(10.0, gt=0, description="write buffered events to disk at least this often")


class TensorBoardSink:
    """Writes one TensorBoard event per metric and step; `tensorboard --logdir <run folder>` shows them."""

    def __init__(self, options: TensorBoardSinkOptions, run_dir: Path | None = None) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        folder = Path(options.dir)
        self.dir = folder if folder.is_absolute() or run_dir is None else Path(run_dir) / folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self.options = options
        self._writer = EventFileWriter(str(self.dir), flush_secs=options.flush_secs)

    def log(self, step: int, metrics: Mapping[str, float | str]) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = []
        for key, value in metrics.items():
            if isinstance(value, bool):
                value = float(value)
            if isinstance(value, (int, float)):
                values.append(Summary.Value(tag=key, simple_value=float(value)))
            elif isinstance(value, str) and self.options.text:
                values.append(_text_value(key, value))
        if values:
            self._writer.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))

    def close(self) -> None:
        self._writer.close()


def _text_value(tag: str, text: str):
    """A text summary value, as TensorBoard's text plugin reads it (a string tensor tagged 'text')."""
    from tensorboard.plugins.text.summary_v2 import text_pb

    return text_pb(tag, text).value[0]
