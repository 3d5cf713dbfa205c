"""TorchEngine in one process, what is torch's own: activation checkpointing, trainable
parameters only, its checkpoint folders (atomic, checksummed, no pickle).

What every engine must do (cadence, resume, NaN stop, learning rate, evaluation, accumulation)
is tested on both engines in tests/engines/test_engine_contract.py.
"""

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
from rung_torch.engine.optim import param_groups  # noqa: E402


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


def test_activation_checkpointing_changes_memory_not_results(tmp_path):
    _, _, plain = fit(tmp_path, "plain", steps=3)
    _, _, ckpted = fit(tmp_path, "ckpt", steps=3, backend={"activation_checkpointing": True})
    for step in (1, 2, 3):
        assert ckpted[step]["loss"] == pytest.approx(plain[step]["loss"], rel=1e-6)


def overflowing_first():
    """The objective, with a huge (finite) loss on step 1: its scaled fp16 gradients overflow."""
    calls = {"n": 0}

    def objective(model, batch):
        calls["n"] += 1
        loss, metrics = sup.objective(model, batch)
        return loss * (1e30 if calls["n"] == 1 else 1.0), metrics

    return objective


def test_fp16_overflowing_gradients_skip_the_update_and_do_not_stop_the_run(tmp_path):
    model = sup.make_model(0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    engine, result, metrics = fit(tmp_path, model=model, precision="fp16", objective=overflowing_first(), steps=1)
    assert engine.precision == "fp16" and result.steps == 1
    assert not math.isfinite(float(metrics[1]["grad_norm"])) and math.isfinite(metrics[1]["loss"])
    for name, p in model.named_parameters():  # the scaler skipped the update
        assert torch.equal(p.detach(), before[name]), name
    _, _, later = fit(tmp_path, "later", precision="fp16", objective=overflowing_first(), steps=2)
    assert math.isfinite(later[2]["grad_norm"]) and later[2]["loss"] < 10  # the next step trains


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
        fit(tmp_path, "other-model", model=sup.make_model(0, n_layers=1), steps=2, resume=str(root))


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


def test_a_checkpoint_changed_at_the_same_size_is_skipped_and_said(tmp_path, capsys):
    """Damage that looks complete: a file overwritten in place at its own size passes the size
    check; its SHA-256 does not, so resume takes the previous checkpoint and says why."""
    _, _, straight = fit(tmp_path, steps=8, save_every=2, keep_checkpoints=3)
    root = tmp_path / "run/checkpoints"
    newest = root / "step-00000008"
    model_file = newest / "model.safetensors"
    data = bytearray(model_file.read_bytes())
    data[-8:] = bytes(8)  # the last weights' bytes zeroed: same size, a readable file
    model_file.write_bytes(bytes(data))
    (root / "latest").write_bytes(b"\xff\xfe\x00 binary")  # a pointer that is not text is only a hint
    assert ckpt.is_complete(newest)  # the sizes alone are fooled
    assert "SHA-256 differs" in ckpt.verify(newest)
    capsys.readouterr()
    _, result, resumed = fit(tmp_path, steps=8, save_every=2, keep_checkpoints=3, resume="auto")
    out = "".join(capsys.readouterr().err.split())  # the console writes to stderr, wrapped at any column
    assert "".join(f"skipping damaged checkpoint {newest}: model.safetensors has changed".split()) in out
    assert "resumingfrom" in out and "step-00000006(step6)" in out
    assert result.steps == 8 and resumed[8]["loss"] == straight[8]["loss"]


def test_when_every_checkpoint_is_damaged_resume_is_an_error_that_keeps_them(tmp_path):
    fit(tmp_path, steps=4, save_every=2, keep_checkpoints=2)
    root = tmp_path / "run/checkpoints"
    for folder in root.glob("step-*"):
        path = folder / "optimizer.safetensors"
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    with pytest.raises(RungError, match=r"every checkpoint in .* is damaged \(step-00000004: optimizer.safetensors "
                                        r"has changed.*step-00000002: .*\); they are kept"):
        fit(tmp_path, steps=6, save_every=2, resume="auto")
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000002", "step-00000004"]
    with pytest.raises(RungError, match="checkpoint .*step-00000002 is damaged: optimizer.safetensors"):
        fit(tmp_path, "explicit", steps=6, resume=str(root / "step-00000002"))
    _, fresh, _ = fit(tmp_path, steps=2, resume="never")  # told to start over
    assert fresh.steps == 2
