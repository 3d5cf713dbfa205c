"""`rung plot`: metrics files written by the core's jsonl sink (two runs, one resumed, with
text samples, a NaN and an evaluation task's metrics) drawn into one PNG, a subplot per metric
and a line per run holding that run's values; bad input is one line and a non-zero exit."""

from __future__ import annotations

import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from rung.builtin.sinks import JsonlSink, JsonlSinkOptions  # noqa: E402
from rung.cli.main import main as rung_main  # noqa: E402
from rung_plot.plot_cmd import draw  # noqa: E402

RUNG = str(Path(sys.executable).with_name("rung"))
TOKENS_PER_STEP = 512


NAN_STEP = 7  # the resumed run's loss is NaN here (the jsonl sink writes it as "nan")


def train_values(step: int, steps: int, scale: float, offset: float, tokens: bool = True) -> dict:
    out = {"loss": scale * (5.0 - 0.3 * step) + offset, "lr": 1e-3 * (1 - step / (2 * steps))}
    if tokens:
        out["tokens"] = float(TOKENS_PER_STEP * step)
    return out


def eval_values(step: int, steps: int, scale: float) -> dict:
    return {"val_loss": scale * (5.2 - 0.25 * step), "arith/accuracy": step / (2 * steps),
            "sample_0": f"def f{step}():"}


def write_run(folder: Path, steps: int, scale: float, resume_at: int | None = None, tokens: bool = True) -> Path:
    """A run's metrics.jsonl through the real jsonl sink: every step a loss and lr, every 4th a
    validation loss, a task accuracy and a text sample. With `resume_at`, a first attempt logs
    every step (losses 0.5 higher) and then the run restarts from `resume_at`: its new records
    must replace the first attempt's from there on."""
    sink = JsonlSink(JsonlSinkOptions(), run_dir=folder)
    sink.log(0, {"train_examples": 64.0, "template": "chatml"})  # step-0 facts: one point, and text
    attempts = [(1, 0.5), (resume_at, 0.0)] if resume_at is not None else [(1, 0.0)]
    for first, offset in attempts:
        for step in range(first, steps + 1):
            record = train_values(step, steps, scale, offset, tokens)
            if resume_at is not None and step == NAN_STEP and offset == 0.0:
                record["loss"] = math.nan
            sink.log(step, record)
            if step % 4 == 0:
                sink.log(step, eval_values(step, steps, scale))
    sink.close()
    return folder


def expected_points(metric: str, steps: int, scale: float, resume_at: int | None) -> tuple[list, list]:
    """The curve the plot must draw, from how write_run makes its values: the latest attempt,
    the first attempt before the restart, no NaN point."""
    xs, ys = [], []
    for step in range(1, steps + 1):
        offset = 0.5 if resume_at is not None and step < resume_at else 0.0
        values = {**train_values(step, steps, scale, offset), **(eval_values(step, steps, scale) if step % 4 == 0
                                                                  else {})}
        if metric in values and not (metric == "loss" and resume_at is not None and step == NAN_STEP):
            xs.append(float(step))
            ys.append(values[metric])
    return xs, ys


RUNS = {"baseline": dict(steps=12, scale=1.0, resume_at=6), "wider": dict(steps=8, scale=0.8, resume_at=None)}


@pytest.fixture()
def runs(tmp_path):
    a = write_run(tmp_path / "baseline", **RUNS["baseline"])
    b = write_run(tmp_path / "wider", **RUNS["wider"])
    return a, b


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_two_runs_in_one_png(runs, tmp_path):
    a, b = runs
    path, figure = draw([str(a), str(b)], output=tmp_path / "out" / "both.png")
    assert path == tmp_path / "out" / "both.png"

    # The default metrics: each logged at two steps or more (not step 0's one-off count, not the
    # text, not `tokens`), the losses first.
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == ["loss", "val_loss", "lr", "arith/accuracy"]
    for ax in figure.axes:
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert sorted(lines) == ["baseline", "wider"]
        for name, line in lines.items():
            xs, ys = expected_points(ax.get_title(), **RUNS[name])
            assert list(line.get_xdata()) == xs and list(line.get_ydata()) == ys
    loss = {line.get_label(): line for line in figure.axes[0].get_lines()}["baseline"]
    assert float(NAN_STEP) not in list(loss.get_xdata()) and len(loss.get_xdata()) == 11
    assert list(loss.get_ydata())[:2] == [5.2, 4.9]  # the first attempt's, before the restart

    width, height = png_size(path)
    assert (width, height) == pytest.approx(tuple(figure.get_size_inches() * figure.dpi), abs=2)
    assert width >= 600 and height >= 400

    # The pixels show both runs' colours (C0 and C1), so the lines were drawn, not only the axes.
    import numpy as np
    from matplotlib import colors
    from matplotlib.image import imread

    pixels = imread(path)[..., :3]
    for colour in ("C0", "C1"):
        rgb = np.array(colors.to_rgb(colour))
        assert (np.abs(pixels - rgb).max(axis=-1) < 0.02).sum() > 200, colour


def test_chosen_metrics_against_tokens(runs, tmp_path):
    a, b = runs
    _, figure = draw([str(a), str(b)], metrics=["loss", "val_loss"], x="tokens", output=tmp_path / "t.png")
    assert [ax.get_title() for ax in figure.axes] == ["loss", "val_loss"]
    for ax in figure.axes:
        assert ax.get_xlabel() == "tokens seen"
        for line in ax.get_lines():
            steps, values = expected_points(ax.get_title(), **RUNS[line.get_label()])
            assert list(line.get_xdata()) == [s * TOKENS_PER_STEP for s in steps]
            assert list(line.get_ydata()) == values


def test_one_run_defaults_to_its_folder_and_several_to_the_current_one(runs, tmp_path):
    a, b = runs
    single = subprocess.run([RUNG, "plot", str(a), "-m", "loss"], capture_output=True, text=True, cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    assert single.stdout.strip() == f"wrote {a / 'plot.png'} (1 metrics, 1 run)"
    assert png_size(a / "plot.png")[0] > 300

    both = subprocess.run([RUNG, "plot", str(a), str(b / "metrics.jsonl")], capture_output=True, text=True,
                          cwd=tmp_path)
    assert both.returncode == 0, both.stderr
    assert both.stdout.strip() == f"wrote {tmp_path / 'plot.png'} (4 metrics, 2 runs)"
    assert png_size(tmp_path / "plot.png")[1] > 400


def test_reads_the_file_the_saved_config_names_and_skips_a_line_being_written(tmp_path):
    import yaml

    run = tmp_path / "custom"
    write_run(run / "logs", steps=8, scale=1.0)
    (run / "config.yaml").write_text(yaml.safe_dump({"logging": {"sinks": [{"name": "jsonl",
                                                                            "path": "logs/metrics.jsonl"}]}}))
    with (run / "logs" / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 9, "loss": 1.')  # the run is writing this record now
    _, figure = draw([str(run)], metrics=["loss"], output=tmp_path / "c.png")
    assert list(figure.axes[0].get_lines()[0].get_xdata()) == [float(s) for s in range(1, 9)]
    assert figure.axes[0].get_lines()[0].get_label() == "custom"


def run_cli(*args: str, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        rung_main(["plot", *args])
    err = capsys.readouterr().err
    return exited.value.code, err


@pytest.mark.parametrize("case", ["missing", "no_metrics", "corrupt", "no_step", "unknown", "text", "no_tokens"])
def test_bad_input_is_one_line(case, runs, tmp_path, capsys):
    a, _ = runs
    args, expected = {
        "missing": ([str(tmp_path / "nope")], f"{tmp_path / 'nope'}: no such run folder or metrics file"),
        "no_metrics": ([str(tmp_path)], f"{tmp_path}: no metrics.jsonl in this folder"),
        "corrupt": ([str(a)], f"{a / 'metrics.jsonl'}:3: not valid JSON"),
        "no_step": ([str(a)], f"{a / 'metrics.jsonl'}:3: no integer 'step' in this record"),
        "unknown": ([str(a), "-m", "loss,val_los"], "no run logs metric 'val_los' (did you mean 'val_loss'?)"),
        "text": ([str(a), "-m", "sample_0"], "metric 'sample_0' is text in every run"),
        "no_tokens": ([str(a), str(tmp_path / "plain"), "--x", "tokens"],
                      f"{tmp_path / 'plain' / 'metrics.jsonl'}: logs no 'tokens'"),
    }[case]
    if case in ("corrupt", "no_step"):
        lines = (a / "metrics.jsonl").read_text().splitlines()
        lines[2] = '{"step": 2, "loss": 4.' if case == "corrupt" else '{"loss": 4.0}'
        (a / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if case == "no_tokens":
        write_run(tmp_path / "plain", steps=4, scale=1.0, tokens=False)
    code, err = run_cli(*args, capsys=capsys)
    assert code != 0
    assert err.count("\n") == 1 and err.startswith(f"rung: error: {expected}"), err
    assert "Traceback" not in err
    assert not (a / "plot.png").exists() and not (tmp_path / "plot.png").exists()
