"""The engine contract, on both engines: the core's loop (`rung.loop`) driving torch's and jax's step.

Each test runs once per framework on a real tiny model (the `test` preset) in this process:
cadence of log, eval and checkpoint; the metrics record; bit-exact resume; the NaN stop; an
ended stream; weights that are not finite; the learning rate logged == the one applied;
evaluation in eval mode on the current weights; gradient accumulation.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from rung.errors import RungError
from tests.engines.frameworks import (
    SEQ,
    Halves,
    Interrupted,
    JaxFramework,
    RecordingRun,
    TorchFramework,
    Tokens,
    training_options,
)


@pytest.fixture(params=["torch", "jax"])
def framework(request):
    pytest.importorskip(request.param)
    pytest.importorskip(f"rung_{request.param}")
    if request.param == "jax":
        request.getfixturevalue("jax_compilation_cache")
        return JaxFramework()
    return TorchFramework()


def fit(fw, tmp_path, name="run", stream=None, evaluate=None, engine=None, **training):
    engine = engine or fw.engine()
    run = RecordingRun(tmp_path / name)
    result = engine.fit(fw.objective, stream or Tokens(8), training_options(**training), run, evaluate=evaluate)
    return engine, result, run


def checkpoint_folders(fw, tmp_path, name="run") -> list[str]:
    root = tmp_path / name / "checkpoints"
    names = {fw.checkpoint_name(s) for s in range(100)}
    return sorted((p.name for p in root.iterdir() if p.name in names), key=lambda n: int(n.split("-")[-1])) \
        if root.is_dir() else []


# ---------------------------------------------------------------------- cadence and metrics


def test_cadence_of_log_eval_and_checkpoint_and_the_metrics_record(framework, tmp_path):
    fw = framework
    evaluated = []

    def evaluate(model):
        evaluated.append(len(evaluated))
        return {"held": 1.0 * len(evaluated)}

    _, result, run = fit(fw, tmp_path, steps=7, log_every=3, eval_every=2, save_every=5, keep_checkpoints=5,
                         evaluate=evaluate)
    # every 3rd step logs, every 2nd evaluates, every 5th saves; the last step does all three
    assert sorted(run.logs) == [2, 3, 4, 6, 7]
    assert [s for s, r in run.logs.items() if "loss" in r] == [3, 6, 7]
    assert [s for s, r in run.logs.items() if "held" in r] == [2, 4, 6, 7]
    assert run.logs[2] == {"held": 1.0} and run.logs[4] == {"held": 2.0}
    assert [s for s, _ in run.checkpoints] == [5, 7]
    assert checkpoint_folders(fw, tmp_path) == [fw.checkpoint_name(5), fw.checkpoint_name(7)]
    assert Path(run.checkpoints[-1][1]).name == fw.checkpoint_name(7)
    options = training_options(steps=7)
    for step in (3, 6, 7):
        record = run.logs[step]
        for key in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "peak_mem_mb", "tokens", "scale"):
            assert isinstance(record[key], float) and math.isfinite(record[key]), (step, key, record)
        assert record["tokens"] == step * 8 * SEQ
        assert record["lr"] == options.learning_rate_at(step - 1)
        assert record["scale"] == 1.0  # the objective's own metric
        assert record["tokens_per_s"] > 0 and 0 < record["mfu"] < 1 and record["peak_mem_mb"] > 0
    if fw.name == "jax":  # the first log says how long the step took to compile, once
        assert run.logs[3]["compile_s"] > 0 and "compile_s" not in run.logs[6]
    assert result.steps == 7 and result.final_loss == run.logs[7]["loss"]
    assert result.checkpoint == run.checkpoints[-1][1]
    assert result.metrics["held"] == 4.0 and result.metrics["loss"] == run.logs[7]["loss"]


def test_training_learns_at_the_default_precision(framework, tmp_path):
    from rung.hardware import cpu_has_fast_bf16

    engine, result, run = fit(framework, tmp_path, engine=framework.engine(precision="auto"),
                              steps=30, log_every=5, learning_rate=1e-2)
    assert engine.precision == ("bf16" if cpu_has_fast_bf16() else "fp32")
    first, last = run.logs[5]["loss"], run.logs[30]["loss"]
    assert last < 0.6 * first, (first, last)  # ln(64) = 4.16 at the start


def test_the_logged_learning_rate_is_the_one_the_optimizer_applied(framework, tmp_path):
    fw, applied = framework, {}
    engine = fw.engine()

    def evaluate(model):  # runs after the step's update: the optimizer still holds that step's rate
        applied[len(applied) + 1] = fw.applied_lr(engine)
        return {}

    _, _, run = fit(fw, tmp_path, engine=engine, steps=6, warmup_steps=2, learning_rate=1e-3, min_lr_ratio=0.1,
                    eval_every=1, evaluate=evaluate)
    options = training_options(steps=6, warmup_steps=2, learning_rate=1e-3, min_lr_ratio=0.1)
    logged = {s: run.logs[s]["lr"] for s in range(1, 7)}
    assert logged == {s: options.learning_rate_at(s - 1) for s in range(1, 7)}
    assert len(set(logged.values())) == 5  # warm-up to the peak, then down the cosine: the rates differ
    for step, rate in logged.items():
        # jax keeps hyperparameters in float32: the same number, rounded once
        expected = rate if fw.name == "torch" else float(np.float32(rate))
        assert applied[step] == expected, (step, applied[step], rate)


# ---------------------------------------------------------------------- resume


def test_a_stopped_run_resumes_bit_exactly(framework, tmp_path):
    fw = framework
    common = dict(steps=6, save_every=2, batch_size=4, grad_accum_steps=2)
    whole_engine, whole, straight = fit(fw, tmp_path, "whole", stream=Halves(Tokens(8)), **common)

    # Stopped from outside when step 5 asks for its batches: checkpoint 4 is the last.
    with pytest.raises(Interrupted):
        fit(fw, tmp_path, "stopped", stream=Halves(Tokens(8, stop_at=4)), **common)
    assert checkpoint_folders(fw, tmp_path, "stopped") == [fw.checkpoint_name(2), fw.checkpoint_name(4)]

    engine, result, resumed = fit(fw, tmp_path, "stopped", stream=Halves(Tokens(8)), **{**common, "resume": "auto"})
    assert sorted(resumed.logs) == [5, 6]
    for step in (5, 6):
        for key in ("loss", "lr", "grad_norm", "tokens", "scale"):
            assert resumed.logs[step][key] == straight.logs[step][key], (step, key)
    assert result.steps == 6 and result.final_loss == whole.final_loss
    expected = fw.weights(whole_engine)
    for name, value in fw.weights(engine).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)

    # Finished already: nothing trains, and the model gets the last checkpoint's weights.
    engine, done, nothing = fit(fw, tmp_path, "stopped", stream=Halves(Tokens(8)), **{**common, "resume": "auto"})
    assert done.steps == 6 and done.final_loss == whole.final_loss and nothing.logs == {}
    assert done.metrics["loss"] == whole.metrics["loss"]
    for name, value in fw.weights(engine).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)


def _damage_in_place(folder: Path) -> str:
    """Flip the last byte of the checkpoint's largest file: same size, still a file, other bytes."""
    target = max((p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".json")),
                 key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    return target.relative_to(folder).as_posix()


def test_a_damaged_checkpoint_is_skipped_and_said_and_all_damaged_is_an_error(framework, tmp_path, capsys):
    fw = framework
    common = dict(steps=4, save_every=2, batch_size=4)
    _, whole, straight = fit(fw, tmp_path, "whole", **common)
    with pytest.raises(Interrupted):
        fit(fw, tmp_path, "stopped", stream=Tokens(8, stop_at=4), steps=6, save_every=2, batch_size=4)
    root = tmp_path / "stopped" / "checkpoints"
    newest = root / fw.checkpoint_name(4)
    changed = _damage_in_place(newest)
    capsys.readouterr()
    _, result, resumed = fit(fw, tmp_path, "stopped", **{**common, "resume": "auto"})
    said = "".join(capsys.readouterr().err.split())
    assert "".join(f"skipping damaged checkpoint {newest}: {changed} has changed".split()) in said
    assert sorted(resumed.logs) == [3, 4]  # from the step-2 checkpoint
    assert resumed.logs[4]["loss"] == straight.logs[4]["loss"] and result.final_loss == whole.final_loss

    for folder in root.iterdir():
        if folder.name in {fw.checkpoint_name(s) for s in range(10)}:
            _damage_in_place(folder)
    with pytest.raises(RungError, match=r"every checkpoint in .* is damaged .*they are kept"):
        fit(fw, tmp_path, "stopped", **{**common, "steps": 6, "resume": "auto"})


# ---------------------------------------------------------------------- stops


def test_a_nan_loss_stops_the_run_naming_the_last_good_checkpoint(framework, tmp_path):
    fw = framework
    # batch 5 makes step 6 NaN; logging every 4 steps lets jax read step 6 while step 7 runs
    with pytest.raises(RungError, match=rf"loss became nan at step 6; the last good checkpoint is \S*"
                                        rf"{fw.checkpoint_name(4)}\b") as info:
        fit(fw, tmp_path, stream=Tokens(8, nan_at=5), steps=8, save_every=4, log_every=4)
    assert str(tmp_path / "run" / "checkpoints") in str(info.value)
    assert checkpoint_folders(fw, tmp_path) == [fw.checkpoint_name(4)]  # nothing after the NaN was saved


def test_a_stream_that_ends_is_a_clear_error(framework, tmp_path):
    with pytest.raises(RungError, match="the batch stream ran out at step 4 of 6"):
        fit(framework, tmp_path, stream=Tokens(8, end_at=3), steps=6)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # 1e39 as float32
def test_weights_that_are_not_finite_are_never_saved(framework, tmp_path):
    # A rate no float32 weight survives: the step's loss is finite, the weights after it are not.
    with pytest.raises(RungError, match="a weight is not finite after step 1, so it was not saved; "
                                        "no checkpoint was written"):
        fit(framework, tmp_path, steps=1, warmup_steps=0, learning_rate=1e39)
    assert checkpoint_folders(framework, tmp_path) == []


# ---------------------------------------------------------------------- evaluation


def test_evaluation_runs_in_eval_mode_on_the_current_weights(framework, tmp_path):
    fw = framework
    held_batch = {k: v for k, v in next(Tokens(8, seed=99)).items() if k != "scale"}
    constant = dict(steps=4, warmup_steps=0, min_lr_ratio=1.0)  # the same rates whatever `steps` is
    engine = fw.engine()
    seen = []

    def held(model):
        return {"held": fw.loss(model, held_batch)}

    def evaluate(model):
        # the model an evaluator gets is the engine's (the backend's): it may generate through it
        seen.append((model is engine.model, fw.in_eval_mode(model), fw.gradients_off(model)))
        return held(model)

    _, _, evaluated = fit(fw, tmp_path, "evaluated", engine=engine, eval_every=2, evaluate=evaluate, **constant)
    assert seen == [(True, True, True)] * 2
    assert not fw.in_eval_mode(engine.model)  # back in training mode after each evaluation
    # Evaluating changed nothing in training (jax donates the buffers the evaluation looked at).
    plain_engine, _, plain = fit(fw, tmp_path, "plain", save_every=2, **constant)
    assert [plain.logs[s]["loss"] for s in range(1, 5)] == [evaluated.logs[s]["loss"] for s in range(1, 5)]
    # At step 4 the evaluator saw the final weights, at step 2 those of checkpoint 2.
    assert engine.evaluate(held)["held"] == evaluated.logs[4]["held"]
    assert plain_engine.evaluate(held)["held"] == evaluated.logs[4]["held"]
    at_two, _, _ = fit(fw, tmp_path, "at-two", **{**constant, "steps": 2},
                       resume=str(tmp_path / "plain" / "checkpoints" / fw.checkpoint_name(2)))
    assert at_two.evaluate(held)["held"] == evaluated.logs[2]["held"]


def test_gradient_accumulation_matches_one_big_batch(framework, tmp_path):
    # 2 micro-batches of 4 rows == 1 batch of 8 rows (the loss is a mean over equal halves).
    fw = framework
    _, _, big = fit(fw, tmp_path, "big", steps=3)
    _, _, accumulated = fit(fw, tmp_path, "accum", stream=Halves(Tokens(8)), steps=3, batch_size=4,
                            grad_accum_steps=2)
    for step in (1, 2, 3):
        assert accumulated.logs[step]["loss"] == pytest.approx(big.logs[step]["loss"], rel=1e-5)
        assert accumulated.logs[step]["grad_norm"] == pytest.approx(big.logs[step]["grad_norm"], rel=1e-4)
        assert accumulated.logs[step]["tokens"] == big.logs[step]["tokens"]
