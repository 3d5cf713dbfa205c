"""TorchEngine in one process: learning, schedule, accumulation, NaN stop, checkpoints."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine_support as sup  # noqa: E402

from rung.errors import RungError  # noqa: E402
from rung_torch.engine import TorchEngine  # noqa: E402
from rung_torch.engine import checkpoint as ckpt  # noqa: E402
from rung_torch.engine.optim import CosineSchedule, param_groups  # noqa: E402
from rung.hardware import cpu_has_fast_bf16  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the subprocess tests compare against runs made the same way."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fit(tmp_path, name="run", model=None, stream=None, precision="fp32", backend=None, objective=None,
        evaluate=None, **training):
    engine = TorchEngine(model or sup.make_model(0), sup.backend_options(precision=precision, **(backend or {})))
    run = sup.make_run(tmp_path / name)
    try:
        result = engine.fit(objective or sup.objective, stream or sup.CountingTokens(8),
                            sup.training_options(**training), run, evaluate=evaluate)
    finally:
        run.close()
    return engine, result, sup.read_metrics(tmp_path / name)


def test_loss_falls_and_every_metric_is_logged(tmp_path):
    # "auto" precision: bf16 autocast on this CPU when it has AMX/AVX512-BF16, else fp32.
    seen = []

    def evaluate(model):
        seen.append((model.training, torch.is_grad_enabled()))
        ids = torch.from_numpy(next(sup.CountingTokens(8, seed=99))["input_ids"])
        return {"val_loss": sup.objective(model, {"input_ids": ids})[0]}

    engine, result, metrics = fit(tmp_path, precision="auto", steps=30, log_every=5, learning_rate=1e-2,
                                  eval_every=10, evaluate=evaluate)
    assert seen == [(False, False)] * 3  # steps 10, 20, 30: eval mode, no gradients
    assert [s for s in metrics if "val_loss" in metrics[s]] == [10, 20, 30]
    assert metrics[30]["val_loss"] < metrics[10]["val_loss"]
    assert engine.precision == ("bf16" if cpu_has_fast_bf16() else "fp32")
    assert sorted(metrics) == [5, 10, 15, 20, 25, 30]
    first, last = metrics[5]["loss"], metrics[30]["loss"]
    assert last < 0.6 * first, (first, last)  # ln(64) = 4.16 at the start
    for record in metrics.values():
        for key in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "peak_mem_mb", "tokens", "accuracy"):
            assert isinstance(record[key], float) and math.isfinite(record[key]), (key, record)
        assert record["tokens_per_s"] > 0 and 0 < record["mfu"] < 1 and record["peak_mem_mb"] > 0
    assert metrics[30]["tokens"] == 30 * 8 * sup.SEQ
    assert result.steps == 30 and result.final_loss == pytest.approx(last)
    assert result.metrics["loss"] == pytest.approx(last)
    # saved at the end even without save_every
    assert result.checkpoint and Path(result.checkpoint).name == "step-00000030"


def test_schedule_warmup_then_cosine_to_the_floor(tmp_path):
    s = CosineSchedule(peak=1.0, steps=12, warmup_steps=4, min_lr_ratio=0.1)
    assert [s.lr(i) for i in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert s.lr(4) == pytest.approx(1.0)
    assert s.lr(11) == pytest.approx(0.1)
    mid = 4 + (11 - 4) / 2  # halfway down the cosine: halfway between peak and floor
    assert s.lr(mid) == pytest.approx(0.55)
    decay = [s.lr(i) for i in range(4, 12)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert CosineSchedule(1.0, 5, 0, 0.0).lr(0) == 1.0  # no warm-up: the peak at once
    # the engine logs the rate each step used
    _, _, metrics = fit(tmp_path, steps=6, warmup_steps=2, learning_rate=1e-3, min_lr_ratio=0.5)
    expected = CosineSchedule(1e-3, 6, 2, 0.5)
    assert [metrics[i]["lr"] for i in range(1, 7)] == pytest.approx([expected.lr(i) for i in range(6)])


class Halves:
    """Each batch of `inner` as two micro-batches of half the rows."""

    def __init__(self, inner):
        self.inner, self.pending = inner, None

    def __next__(self):
        if self.pending is None:
            batch = next(self.inner)
            half = len(batch["input_ids"]) // 2
            self.pending = {"input_ids": batch["input_ids"][half:]}
            return {"input_ids": batch["input_ids"][:half]}
        out, self.pending = self.pending, None
        return out

    def state_dict(self):
        return {"inner": self.inner.state_dict(), "half": self.pending is not None}

    def load_state_dict(self, state):
        self.inner.load_state_dict(state["inner"])


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    # 2 micro-batches of 4 rows == 1 batch of 8 rows (the loss is a mean over equal halves).
    m1, m2 = sup.make_model(0), sup.make_model(0)
    _, r1, big = fit(tmp_path, "big", model=m1, steps=5)
    _, r2, acc = fit(tmp_path, "accum", model=m2, stream=Halves(sup.CountingTokens(8)), steps=5,
                     batch_size=4, grad_accum_steps=2)
    for step in range(1, 6):
        assert acc[step]["loss"] == pytest.approx(big[step]["loss"], rel=1e-5)
        assert acc[step]["grad_norm"] == pytest.approx(big[step]["grad_norm"], rel=1e-4)
        assert acc[step]["tokens"] == big[step]["tokens"]
    for (name, a), b in zip(m1.named_parameters(), m2.parameters()):
        # Adam turns ~1e-7 gradient differences into at most ~1e-3 of one lr-sized step
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_activation_checkpointing_changes_memory_not_results(tmp_path):
    _, _, plain = fit(tmp_path, "plain", steps=3)
    _, _, ckpted = fit(tmp_path, "ckpt", steps=3, backend={"activation_checkpointing": True})
    for step in (1, 2, 3):
        assert ckpted[step]["loss"] == pytest.approx(plain[step]["loss"], rel=1e-6)


def test_only_trainable_parameters_are_optimized(tmp_path):
    model = sup.make_model(0)
    trainable = {name for name, p in model.named_parameters() if "layers.1." in name}
    assert trainable
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    engine, _, _ = fit(tmp_path, model=model, steps=3, weight_decay=0.5)
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        assert changed == (name in trainable), name
    groups = param_groups(model, 0.5)
    decayed = {id(p) for p in groups[0]["params"]}
    for name, p in model.named_parameters():
        if name in trainable:
            assert (id(p) in decayed) == (p.dim() >= 2), name
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    # the checkpoint's optimizer state covers the trainable parameters only
    state = ckpt.read_state(Path(tmp_path / "run/checkpoints/step-00000003"))
    assert sorted(state["optimizer"]["keys"]) == sorted(trainable)


def nan_at(step_index):
    """The objective, poisoned: the loss of optimizer step `step_index` (1-based) is NaN."""
    calls = {"n": 0}

    def objective(model, batch):
        calls["n"] += 1
        loss, metrics = sup.objective(model, batch)
        if calls["n"] == step_index:
            loss = loss * float("nan")
        return loss, metrics

    return objective


def test_nan_loss_stops_with_the_last_good_checkpoint(tmp_path):
    with pytest.raises(RungError, match=r"loss became nan at step 5; the last good checkpoint is .*step-00000004"):
        fit(tmp_path, objective=nan_at(5), steps=8, save_every=2)
    root = tmp_path / "run/checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000002", "step-00000004"]
    assert ckpt.CheckpointDir(root).latest().name == "step-00000004"
    assert ckpt.is_complete(root / "step-00000004")
    with pytest.raises(RungError, match="no checkpoint was written"):
        fit(tmp_path, "early", objective=nan_at(1), steps=3)


def test_a_half_written_checkpoint_is_never_chosen(tmp_path):
    _, _, straight = fit(tmp_path, steps=8, save_every=2, keep_checkpoints=3)
    root = tmp_path / "run/checkpoints"
    assert [p.name for p in ckpt.CheckpointDir(root).complete_steps()] == [
        "step-00000008", "step-00000006", "step-00000004"]
    # A save killed before its rename: a temp folder with some files and no state.json.
    stale = root / ".tmp-step-00000010-4242"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 100)
    # The newest folder with a file cut short (a disk that lied): state.json sizes disagree.
    newest = root / "step-00000008"
    data = (newest / "optimizer.safetensors").read_bytes()
    (newest / "optimizer.safetensors").write_bytes(data[: len(data) // 2])
    assert (root / "latest").read_text().strip() == "step-00000008"
    assert not ckpt.is_complete(newest) and not ckpt.is_complete(stale)
    assert ckpt.CheckpointDir(root).latest().name == "step-00000006"
    (root / "latest").write_text("garbage")
    assert ckpt.CheckpointDir(root).latest().name == "step-00000006"
    # resume: auto continues from step 6 and reaches the same losses as the unbroken run
    _, result, resumed = fit(tmp_path, steps=8, save_every=2, keep_checkpoints=3, resume="auto")
    assert result.steps == 8
    assert [resumed[s]["loss"] for s in (7, 8)] == [straight[s]["loss"] for s in (7, 8)]
    assert not stale.exists()  # the next save cleaned up the dead temp folder
    assert (root / "latest").read_text().strip() == "step-00000008"
    assert ckpt.is_complete(newest)  # rewritten whole
    # resume from an explicit path, and a clear error for a wrong one
    _, again, from_path = fit(tmp_path, "from-path", steps=8, resume=str(root / "step-00000006"))
    assert again.steps == 8 and sorted(from_path) == [7, 8]
    assert from_path[8]["loss"] == straight[8]["loss"]
    _, done, nothing = fit(tmp_path, "finished", steps=8, resume=str(tmp_path / "run"))
    assert done.steps == 8 and done.final_loss == straight[8]["loss"] and nothing == {}
    with pytest.raises(RungError, match="no complete checkpoint"):
        fit(tmp_path, "nowhere", steps=2, resume=str(tmp_path / "missing"))
    with pytest.raises(RungError, match="does not fit this model"):
        fit(tmp_path, "other-model", model=sup.TinyLM(), steps=2, resume=str(root))


class Finite(sup.CountingTokens):
    def __next__(self):
        if self.index == 3:
            raise StopIteration
        return super().__next__()


def test_a_stream_that_ends_is_a_clear_error(tmp_path):
    with pytest.raises(RungError, match="the batch stream ran out at step 4 of 6"):
        fit(tmp_path, stream=Finite(8), steps=6)


def test_optimizer_state_round_trips_without_pickle():
    model = sup.make_model(0)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.95))
    sup.objective(model, {"input_ids": torch.from_numpy(next(sup.CountingTokens(4))["input_ids"])})[0].backward()
    opt.step()
    tensors, meta = ckpt.flatten_optimizer(opt.state_dict())
    import json

    meta = json.loads(json.dumps(meta))  # it really is JSON
    back = ckpt.unflatten_optimizer(tensors, meta)
    original = opt.state_dict()
    assert back["param_groups"] == original["param_groups"]
    for key, entry in original["state"].items():
        for name, value in entry.items():
            torch.testing.assert_close(back["state"][key][name], value)
