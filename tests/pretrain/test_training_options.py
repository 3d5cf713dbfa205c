"""General pretraining options on a real tiny run: held-out bits per byte beside nats per token,
`trainer.optimizer: muon`, and `backend.architecture.qk_norm` (saved as transformers' Qwen3,
loaded back by rung's torch and jax backends and by transformers; GGUF export refuses it)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("datatrove")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_trainer import config, make_corpus, records  # noqa: E402

import rung  # noqa: E402
from rung.errors import RungError  # noqa: E402


@pytest.fixture(scope="module")
def muon_qk(tmp_path_factory):
    """One 30-step run with Muon and QK-norm on the tiny corpus."""
    tmp = tmp_path_factory.mktemp("options")
    corpus = make_corpus(tmp / "corpus")
    data = config(tmp, corpus, optimizer="muon", muon_lr=0.03, sample_every=None)
    data["backend"]["architecture"] = {"qk_norm": True}
    result = rung.run(data)
    return tmp, corpus, data, result


def test_validation_reports_bits_per_byte_of_the_held_out_tokens(muon_qk):
    import torch

    from rung_pretrain import prepare
    from rung_torch.objectives import token_nll_sum

    tmp, corpus, data, result = muon_qk
    val = {r["step"]: r for r in records(tmp / "run") if "val_loss" in r}
    assert sorted(val) == [10, 20, 30] and all("val_bpb" in r for r in val.values())
    assert result.metrics["val_bpb"] == pytest.approx(val[30]["val_bpb"])
    # Recomputed here a second way: each target token decoded alone, its UTF-8 bytes counted
    # (special tokens spell nothing), against the saved model's summed nats.
    prepared = prepare(data)
    tokenizer = prepared.tokenizer
    special = set(tokenizer.special_tokens.values())
    windows = prepared.validation_batches(batch_size=8, seq_len=32, max_batches=2)
    backend = rung.backend("torch", model=str(tmp / "run" / "model"), precision="fp32")
    nats = n_bytes = 0.0
    with torch.no_grad():
        for window in windows:
            nll, _ = token_nll_sum(backend.model.eval(), window)
            nats += float(nll)
            n_bytes += sum(len(tokenizer.decode([int(t)]).encode("utf-8"))
                           for t in window["targets"].ravel() if int(t) not in special)
    assert val[30]["val_bpb"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-4)
    # Bits per byte of a ~3-bytes-per-token BPE sit well below its nats per token.
    assert val[30]["val_bpb"] < val[30]["val_loss"]


def test_the_final_summary_says_bits_per_byte_beside_nats_per_token():
    from rung_pretrain.run_report import summary

    line = summary(6.0, 2.0, 2.1, 0.75)
    assert "final validation loss 2.0000 nats/token (perplexity 7.4, 0.7500 bits/byte)" in line
    assert "bits/byte" not in summary(6.0, 2.0, 2.1)


def test_muon_with_qk_norm_learns_and_saves_a_qwen3_model(muon_qk):
    import torch

    tmp, _, _, result = muon_qk
    losses = [r["loss"] for r in records(tmp / "run") if "loss" in r]
    assert losses[-1] < 0.7 * losses[0], losses
    assert result.metrics["val_loss"] < result.metrics["unigram_loss"]
    model_dir = tmp / "run" / "model"
    saved = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    assert saved["model_type"] == "qwen3" and saved["architectures"] == ["Qwen3ForCausalLM"]
    # transformers' own Qwen3 computes the same logits from the folder.
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    backend = rung.backend("torch", model=str(model_dir), precision="fp32")
    assert backend.model.config.qk_norm
    norms = {n: p for n, p in backend.model.named_parameters() if n.endswith(("q_norm.weight", "k_norm.weight"))}
    assert len(norms) == 2 * backend.model.config.n_layers
    assert any(not torch.allclose(p, torch.ones_like(p)) for p in norms.values())  # trained, not left at one
    ids = torch.tensor([backend.tokenizer.encode("def alpha_beta_0(x, y=0):\n    return x")])
    with torch.no_grad():
        ours, theirs = backend.model.eval()(ids), hf(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    # The saved model decodes through rung's backend (the module forward: qk_norm's norms included).
    greedy = backend.generate(rung.GenerationRequest(prompt="def ", raw=True, max_tokens=6, temperature=0))
    assert greedy.usage.completion_tokens == 6


def test_the_jax_backend_loads_a_qk_norm_model_and_agrees(muon_qk):
    pytest.importorskip("jax")
    import numpy as np
    import torch

    tmp, *_ = muon_qk
    model_dir = str(tmp / "run" / "model")
    torch_backend = rung.backend("torch", model=model_dir, precision="fp32")
    jax_backend = rung.backend("jax", model=model_dir, precision="fp32")
    ids = torch_backend.tokenizer.encode("import math\n\n\ndef gamma")
    with torch.no_grad():
        ours = torch_backend.model.eval()(torch.tensor([ids])).numpy()
    from rung_jax.model import forward_logits

    theirs = np.asarray(forward_logits(jax_backend.model, np.asarray([ids])))
    assert np.abs(ours - theirs).max() < 1e-4


def test_gguf_export_refuses_a_qk_norm_model_in_one_line(muon_qk, tmp_path):
    from rung.exporting import export

    tmp, *_ = muon_qk
    with pytest.raises(RungError) as error:
        export("gguf", tmp / "run" / "model", tmp_path / "out.gguf")
    assert "qwen3" in str(error.value) and "\n" not in str(error.value)


def test_qk_norm_round_trips_through_config_json_and_a_sliding_window_qwen3_is_refused(tmp_path):
    from rung.errors import ConfigError
    from rung.model_config import ModelConfig, preset

    config = preset("test", vocab_size=64, qk_norm=True)
    config.save(tmp_path)
    assert ModelConfig.load(tmp_path).to_hf() == config.to_hf() and ModelConfig.load(tmp_path).qk_norm
    plain = preset("test", vocab_size=64)
    assert plain.to_hf()["model_type"] == "llama" and not ModelConfig.from_hf(plain.to_hf()).qk_norm
    assert config.num_params() == plain.num_params() + 2 * config.n_layers * config.head_dim
    windowed = {**config.to_hf(), "use_sliding_window": True, "sliding_window": 64}
    with pytest.raises(ConfigError, match=r"^cfg.json: this Qwen3 model uses a sliding window"):
        ModelConfig.from_hf(windowed, source="cfg.json")
