"""The `tensorboard` sink in a real `rung run`: TensorBoard's own reader finds every logged
number as a scalar at its step (equal to metrics.jsonl's) and text metrics as text; the sink
writes its events without importing torch or TensorFlow."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorboard")
pytest.importorskip("rung_torch")

from tests.sinks.tiny_run import jsonl_records, tiny_run  # noqa: E402


def read_events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_events_hold_what_the_run_logged(tmp_path):
    run_dir, _ = tiny_run(tmp_path, [{"name": "tensorboard"}])
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    events = read_events(run_dir / "tensorboard")

    logged = jsonl_records(run_dir)
    numbers: dict[str, list[tuple[int, float]]] = {}
    texts: dict[str, list[tuple[int, str]]] = {}
    for record in logged:
        for key, value in record.items():
            if key == "step":
                continue
            if isinstance(value, str):
                texts.setdefault(key, []).append((record["step"], value))
            else:
                numbers.setdefault(key, []).append((record["step"], float(value)))
    assert {"loss", "eval_loss", "lr", "tokens"} <= set(numbers) and len(numbers["loss"]) == 6
    assert texts, "the sft run logs its chat template's name as text at step 0"

    assert sorted(events.Tags()["scalars"]) == sorted(numbers)
    for key, expected in numbers.items():
        got = [(e.step, e.value) for e in events.Scalars(key)]
        # TensorBoard stores scalars as float32: equal to the logged float64 rounded so
        assert got == [(step, float(np.float32(value))) for step, value in expected], key
    for key, expected in texts.items():
        got = [(e.step, e.tensor_proto.string_val[0].decode()) for e in events.Tensors(key)]
        assert got == expected, key
        plugin = events.SummaryMetadata(key).plugin_data.plugin_name
        assert plugin == "text"




def test_writes_without_torch_and_skips_text_when_asked(tmp_path):
    # In a fresh interpreter, build the sink as a run does (by name, through the registry),
    # log numbers and text with `text: false`, and check torch and TensorFlow stayed unimported.
    script = f"""
import sys
from rung.plugins import get_plugins
from rung.runner import build, validate_section

plugins = get_plugins()
options = validate_section(plugins.registry, "metric_sink", {{"name": "tensorboard", "text": False}}, "sink")
sink = build(plugins, "metric_sink", options, run_dir={str(tmp_path)!r})
sink.log(1, {{"loss": 2.5, "sample_0": "def f():"}})
sink.log(2, {{"loss": 2.25, "nan_metric": float("nan")}})
sink.close()
print(sorted(m for m in ("torch", "tensorflow", "jax") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={"RUNG_LOAD_PLUGINS": "rung-tensorboard", "PATH": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"
    events = read_events(tmp_path / "tensorboard")
    assert events.Tags()["tensors"] == []  # the text was skipped
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 2.5), (2, 2.25)]
    assert np.isnan(events.Scalars("nan_metric")[0].value)
