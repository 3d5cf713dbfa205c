"""`trainer.optimizer: muon` on the jax backend (rung_jax.muon): the same steps as rung-torch's
Muon from the same weights, a pretrain run through `rung.run` that learns, a resumed run equal
to an unbroken one, and one line for a model Muon has nothing to move in."""

from __future__ import annotations

import numpy as np
import pytest

from rung.errors import RungError
from rung.model_config import preset
from rung.training import TrainingOptions
from tests.jax.helpers import RecordingRun, SmallStream

VOCAB, BATCH, SEQ = 64, 8, 16


class MuonTraining(TrainingOptions):
    """The optimizer fields as the pretrain trainer's options carry them."""

    optimizer: str = "muon"
    muon_lr: float = 0.02
    muon_momentum: float = 0.95


def options(**overrides) -> MuonTraining:
    base = dict(steps=3, batch_size=BATCH, learning_rate=3e-3, warmup_steps=1, log_every=1, grad_clip=1.0,
                weight_decay=0.1, resume="never")
    return MuonTraining(**{**base, **overrides})


def jax_fit(model, run_dir, objective=None, **overrides) -> RecordingRun:
    from rung_jax.engine import JaxEngine
    from rung_jax.objectives import next_token_loss

    run = RecordingRun(run_dir)
    JaxEngine(model, precision="fp32").fit(objective or next_token_loss, SmallStream(VOCAB, BATCH, SEQ),
                                           options(**overrides), run)
    return run


def test_three_muon_steps_equal_rung_torch_from_the_same_weights(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("rung_torch")
    from rung_jax.weights import load_model, to_hf_tensors
    from rung_torch.engine import TorchEngine
    from rung_torch.model import Transformer
    from rung_torch.objectives import next_token_loss
    from rung_torch.options import TorchOptions
    from rung_torch.weights import save_weights

    torch.manual_seed(0)
    # untied: the output head stays on AdamW beside the embedding; 32 -> 16 k_proj: a wide matrix
    # (scale 1) and 32 -> 128 gate_proj: a tall one (scale 2) in torch's [out, in]
    model = Transformer(preset("test", vocab_size=VOCAB, tie_embeddings=False), seed=1)
    save_weights(model, tmp_path / "start")
    jax_model = load_model(tmp_path / "start")

    torch_run = RecordingRun(tmp_path / "torch")
    engine = TorchEngine(model, TorchOptions(model="test", device="cpu", precision="fp32"))
    engine.fit(next_token_loss, SmallStream(VOCAB, BATCH, SEQ), options(), torch_run)
    jax_run = jax_fit(jax_model, tmp_path / "jax")

    torch_losses = [m["loss"] for _, m in torch_run.logs]
    jax_losses = [m["loss"] for _, m in jax_run.logs]
    assert len(jax_losses) == 3 and jax_losses[2] < jax_losses[0]
    np.testing.assert_allclose(jax_losses, torch_losses, rtol=1e-5)
    np.testing.assert_allclose([m["lr"] for _, m in jax_run.logs], [m["lr"] for _, m in torch_run.logs])
    expected = {name: p.detach().numpy() for name, p in model.state_dict().items()}
    got = to_hf_tensors(jax_model)  # torch layout: kernels transposed back to [out, in]
    assert sorted(got) == sorted(expected)
    start = to_hf_tensors(load_model(tmp_path / "start"))
    for name in expected:
        assert np.abs(expected[name] - start[name]).max() > 1e-3, name  # every parameter was trained
        # fp32, the same arithmetic in another order: ~1e-7 apart; a wrong scale or orientation: ~1e-2
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-6, err_msg=name)


def pretrain_config(tmp_path, name: str, **trainer) -> dict:
    """tests/pretrain's tiny corpus and config (bpe tokenizer, packed shards) with Muon: 12 steps,
    each logged, no validation or samples."""
    import sys
    from pathlib import Path

    pytest.importorskip("datatrove")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pretrain"))
    from test_trainer import config, make_corpus

    corpus = tmp_path / "corpus"
    if not corpus.is_dir():
        make_corpus(corpus)
    data = config(tmp_path, corpus, name=name, optimizer="muon", muon_lr=0.03, steps=12, log_every=1,
                  **{"eval_every": None, "sample_every": None, "val_batches": 0, **trainer})
    return data


def test_a_jax_pretrain_run_with_muon_learns_and_resumes_on_the_same_losses(tmp_path, jax_env):
    import json
    import subprocess
    import sys

    import yaml

    from tests.jax.helpers import ROOT

    # one CPU device (the pretrain trainer's usual case), jax_env's compilation cache: the
    # resumed run loads the train step the first one compiled
    env = {**jax_env, "OMP_NUM_THREADS": "1", "XLA_FLAGS": "--xla_backend_optimization_level=0"}

    def run(name: str, **trainer) -> list[dict]:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(pretrain_config(tmp_path, name, **trainer)), encoding="utf-8")
        done = subprocess.run([sys.executable, "-m", "rung.cli.main", "run", str(path), "backend.name=jax"],
                              capture_output=True, text=True, env=env, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-3000:]
        lines = (tmp_path / name / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        return [row for row in map(json.loads, lines) if "loss" in row]

    whole = run("whole", save_every=6)
    losses = [row["loss"] for row in whole]
    assert len(losses) == 12 and max(losses[-3:]) < 0.8 * losses[0], losses
    # a second run picks up the first one's step-6 checkpoint (params, Muon's momentum, AdamW's
    # moments, the data position) and trains steps 7-12 again
    resumed = run("resumed", resume=str(tmp_path / "whole" / "checkpoints" / "6"))
    assert [row["step"] for row in resumed] == list(range(7, 13))
    assert [row["loss"] for row in resumed] == losses[6:]


def test_muon_on_a_model_without_a_hidden_matrix_is_one_line(tmp_path):
    import optax
    from flax import nnx

    class Bigram(nnx.Module):
        """Embeddings and an output head only: nothing Muon moves."""

        def __init__(self):
            self.embed = nnx.Embed(VOCAB, 16, rngs=nnx.Rngs(0))
            self.lm_head = nnx.Linear(16, VOCAB, use_bias=False, rngs=nnx.Rngs(1))

    def objective(model, batch):
        logits = model.lm_head(model.embed(batch["input_ids"]))
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean(), {}

    with pytest.raises(RungError) as error:
        jax_fit(Bigram(), tmp_path / "run", objective)
    assert str(error.value) == ("trainer.optimizer: muon found no trainable hidden matrix (linear layer) in "
                                "the model; use adamw")
