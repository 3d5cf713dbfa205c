"""LoRA in NNX: only adapters train, alpha scales them, and peft loads the saved adapter on the
rung-torch model with the same logits."""

from __future__ import annotations

import json

import numpy as np
import pytest

import jax.numpy as jnp
from flax import nnx

from rung.model_config import preset
from rung.training import TrainingOptions
from tests.jax.helpers import RecordingRun, SmallStream

VOCAB = 64


def _sft_stream():
    """One batch over and over, HF-style labels: aligned with input_ids, the first half masked."""

    class SftStream(SmallStream):
        def __next__(self):
            self.pos = 0
            batch = super().__next__()
            labels = batch["input_ids"].copy()
            labels[:, : labels.shape[1] // 2] = -100
            return {"input_ids": batch["input_ids"], "labels": labels}

    return SftStream(VOCAB, 4, 16)


def test_lora_trains_only_adapters_and_peft_loads_them(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    pytest.importorskip("rung_torch")
    from rung_jax.engine import JaxEngine
    from rung_jax.lora import LoRALinear, apply_lora, load_adapter, save_adapter
    from rung_jax.model import init_model
    from rung_jax.objectives import next_token_loss
    from rung_jax.weights import base_params, save_model

    model = init_model(preset("test", vocab_size=VOCAB), seed=4)
    save_model(model, tmp_path / "base")
    before = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(base_params(model))}
    ids = jnp.asarray(np.arange(12)[None] % VOCAB)
    plain = np.asarray(model(ids))

    apply_lora(model, rank=4, alpha=8.0, targets=("q_proj", "v_proj", "gate_proj"))
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, LoRALinear) and q.scaling == 2.0
    np.testing.assert_allclose(np.asarray(model(ids)), plain, atol=1e-6)  # B starts at zero

    run = RecordingRun(tmp_path / "run")
    options = TrainingOptions(steps=3, log_every=1, learning_rate=5e-2, warmup_steps=0, resume="never")
    JaxEngine(model, precision="fp32").fit(next_token_loss, _sft_stream(), options, run)
    losses = [m["loss"] for _, m in run.logs]
    assert losses[-1] < losses[0]
    after = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(base_params(model))}
    for path in before:  # the base is frozen
        np.testing.assert_array_equal(after[path], before[path], err_msg=str(path))
    assert np.abs(np.asarray(q.lora.lora_b.get_value())).max() > 0
    adapted = np.asarray(model(ids))
    assert np.abs(adapted - plain).max() > 1e-4

    save_adapter(model, tmp_path / "adapter", base_model=str(tmp_path / "base"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0
    assert config["target_modules"] == ["gate_proj", "q_proj", "v_proj"]

    # the same adapter back into JAX
    again = load_adapter(init_model(preset("test", vocab_size=VOCAB), seed=4), tmp_path / "adapter")
    np.testing.assert_allclose(np.asarray(again(ids)), adapted, atol=1e-5)

    # and into torch through peft, on the rung-torch model of the saved base
    from peft import PeftModel

    from rung_torch.weights import load_model

    base = load_model(tmp_path / "base").eval()
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        out = peft_model(torch.from_numpy(np.asarray(ids)).long())
    logits = (out if torch.is_tensor(out) else out.logits).numpy()
    np.testing.assert_allclose(logits, adapted, atol=1e-4, rtol=1e-4)
