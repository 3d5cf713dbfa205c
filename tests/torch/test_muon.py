"""Muon (rung_torch.engine.muon) in the torch engine: orthogonalised updates of the hidden
matrices, AdamW's exact steps for the rest, state in the checkpoint (a resumed run equals an
unbroken one), and a tiny run whose loss falls."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine_support as sup  # noqa: E402

from rung.errors import RungError  # noqa: E402
from rung.training import TrainingOptions  # noqa: E402
from rung_torch.engine import TorchEngine  # noqa: E402
from rung_torch.engine.muon import MuonWithAdamW, newton_schulz  # noqa: E402
from rung_torch.engine.optim import build_optimizer, hidden_matrices  # noqa: E402


class MuonTraining(TrainingOptions):
    """The optimizer fields as the pretrain trainer's options carry them."""

    optimizer: str = "muon"
    muon_lr: float = 0.02
    muon_momentum: float = 0.95


def fit(tmp_path, name="run", model=None, **training):
    engine = TorchEngine(model or sup.make_model(0), sup.backend_options())
    run = sup.make_run(tmp_path / name)
    base = dict(steps=8, batch_size=8, learning_rate=3e-3, warmup_steps=2, log_every=1, grad_clip=1.0,
                resume="never")
    try:
        result = engine.fit(sup.objective, sup.CountingTokens(8), MuonTraining(**{**base, **training}), run)
    finally:
        run.close()
    return engine, result, sup.read_metrics(tmp_path / name)


@pytest.mark.parametrize("shape", [(32, 96), (96, 32), (48, 48)])
def test_newton_schulz_brings_every_singular_value_near_one(shape):
    generator = torch.Generator().manual_seed(0)
    # A badly conditioned matrix: singular values spread over two orders of magnitude (5 steps
    # lift values down to ~1e-2 of the largest; Muon's gradients are conditioned like that).
    u, _ = torch.linalg.qr(torch.randn(shape[0], shape[0], generator=generator))
    v, _ = torch.linalg.qr(torch.randn(shape[1], shape[1], generator=generator))
    k = min(shape)
    spread = torch.logspace(0, -2, k)
    matrix = u[:, :k] @ torch.diag(spread) @ v[:, :k].T
    before = torch.linalg.svdvals(matrix)
    after = torch.linalg.svdvals(newton_schulz(matrix))
    assert before.max() / before.min() > 90
    assert after.min() > 0.6 and after.max() < 1.25, after
    # The same singular vectors: the result is (close to) U V^T of the input's SVD.
    polar = u[:, :k] @ v[:, :k].T
    assert torch.linalg.matrix_norm(newton_schulz(matrix) - polar) / torch.linalg.matrix_norm(polar) < 0.35


def test_a_muon_step_moves_a_matrix_by_an_orthogonal_update_and_vectors_as_adamw_does():
    torch.manual_seed(0)
    matrix = torch.nn.Parameter(torch.randn(24, 40) * 0.1)
    vector = torch.nn.Parameter(torch.randn(40))
    twin = torch.nn.Parameter(vector.detach().clone())
    lr, muon_lr = 1e-2, 0.05
    optimizer = MuonWithAdamW([{"params": [vector], "muon": False, "weight_decay": 0.0},
                               {"params": [matrix], "muon": True, "weight_decay": 0.0, "lr_ratio": muon_lr / lr,
                                "nesterov": False, "momentum": 0.0}], lr=lr)
    adamw = torch.optim.AdamW([twin], lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    for step in range(3):
        before = matrix.detach().clone()
        gradient = torch.randn(24, 40) @ torch.diag(torch.logspace(0, -2, 40))  # skewed spectrum
        matrix.grad = gradient
        vector.grad = twin.grad = torch.randn(40)
        optimizer.step()
        adamw.step()
        update = (before - matrix.detach()) / muon_lr
        singular = torch.linalg.svdvals(update)
        assert singular.min() > 0.55 and singular.max() < 1.3, (step, singular)
        assert torch.allclose(vector, twin, atol=1e-7), step  # AdamW's own step, exactly


def test_hidden_matrices_leave_embeddings_the_head_and_norms_to_adamw():
    model = sup.make_model(0, tie_embeddings=False)
    names = {id(p): name for name, p in model.named_parameters()}
    chosen = sorted(names[i] for i in hidden_matrices(model))
    assert chosen and all(name.endswith("_proj.weight") and ".layers." in name for name in chosen)
    assert len(chosen) == 7 * model.config.n_layers
    optimizer = build_optimizer(model, MuonTraining(learning_rate=1e-3), torch.device("cpu"))
    muon = [g for g in optimizer.param_groups if g["muon"]]
    assert len(muon) == 1 and muon[0]["lr_ratio"] == pytest.approx(20.0)
    others = {names[id(p)] for g in optimizer.param_groups if not g["muon"] for p in g["params"]}
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= others


def test_a_tiny_run_with_muon_learns(tmp_path):
    _, result, metrics = fit(tmp_path, steps=40, log_every=5, learning_rate=1e-2, muon_lr=0.03)
    assert result.steps == 40
    assert metrics[40]["loss"] < 0.6 * metrics[5]["loss"], {s: m["loss"] for s, m in metrics.items()}


def test_a_resumed_muon_run_equals_an_unbroken_one(tmp_path):
    _, _, straight = fit(tmp_path, "straight", steps=6)
    fit(tmp_path, "broken", steps=3, save_every=3)
    _, result, resumed = fit(tmp_path, "broken", steps=6, save_every=3, resume="auto")
    assert result.steps == 6
    assert [resumed[s]["loss"] for s in (4, 5, 6)] == [straight[s]["loss"] for s in (4, 5, 6)]


def test_muon_checkpoints_hold_its_momentum_and_refuse_an_adamw_resume(tmp_path):
    from rung_torch.engine import checkpoint as ckpt

    fit(tmp_path, steps=2, save_every=2)
    step = ckpt.CheckpointDir(tmp_path / "run" / "checkpoints").latest()
    tensors = ckpt.load_tensors(step, "optimizer")
    assert any(name.endswith(".momentum_buffer") and ".q_proj." in name for name in tensors)
    assert any(name.endswith(".exp_avg") and "embed_tokens" in name for name in tensors)
    engine = TorchEngine(sup.make_model(0), sup.backend_options())
    run = sup.make_run(tmp_path / "run")
    try:
        with pytest.raises(RungError, match="does not fit this model"):
            engine.fit(sup.objective, sup.CountingTokens(8),
                       sup.training_options(steps=4, resume="auto"), run)  # adamw this time
    finally:
        run.close()


def test_an_unknown_optimizer_is_one_line():
    with pytest.raises(RungError, match="trainer.optimizer: 'sgd' is not one of adamw, muon"):
        build_optimizer(sup.make_model(0), MuonTraining(optimizer="sgd"), torch.device("cpu"))
