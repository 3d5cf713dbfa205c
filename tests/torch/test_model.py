"""rung's Transformer against transformers' LlamaForCausalLM: same names, same logits, both ways."""

from __future__ import annotations

import pytest
import torch

from rung.errors import RungError
from rung.model_config import preset
from rung_torch.model import Transformer
from rung_torch.modeling import forward_logits
from rung_torch.weights import load_model, save_weights

# Both compute in fp32 with the same operations; differences are rounding only.
ATOL = 1e-4


@pytest.mark.parametrize("tied", [True, False])
def test_transformers_loads_a_rung_checkpoint_with_the_same_logits(tmp_path, tied):
    from transformers import LlamaForCausalLM

    config = preset("test", vocab_size=300, tie_embeddings=tied, init_std=0.1)
    assert config.kv_heads < config.n_heads  # grouped-query attention is on
    model = Transformer(config, seed=1).eval()
    save_weights(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    hf = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert sorted(hf.state_dict()) == sorted(model.state_dict())  # the very same parameter names
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = forward_logits(model, ids), forward_logits(hf, ids)
    assert ours.shape == (2, 40, 300)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    if tied:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()


def test_rung_loads_a_transformers_llama_with_the_same_logits(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=200, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, rope_theta=5000.0,
    )).eval()
    hf.save_pretrained(tmp_path)  # safetensors
    model = load_model(tmp_path).eval()
    assert (model.config.kv_heads, model.config.rope_theta, model.config.tie_embeddings) == (2, 5000.0, False)
    ids = torch.randint(0, 200, (3, 30), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, 20:] = 0  # right padding, as training batches have
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=ATOL, rtol=0)
        ours, theirs = forward_logits(model, ids, mask), forward_logits(hf, ids, mask)
    torch.testing.assert_close(ours[:, :20], theirs[:, :20], atol=ATOL, rtol=0)


def test_loading_reads_safetensors_only_and_checks_names(tmp_path):
    model = Transformer(preset("test", vocab_size=50))
    model.config.save(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(RungError, match="pytorch_model.bin: pickle files are never loaded"):
        load_model(tmp_path)

    from safetensors.torch import save_file

    state = {k: v for k, v in model.state_dict().items() if "layers.1.mlp" not in k and k != "lm_head.weight"}
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(RungError, match="missing model.layers.1.mlp"):
        load_model(tmp_path)


def test_a_loaded_model_keeps_tied_weights_tied(tmp_path):
    model = Transformer(preset("test", vocab_size=50), seed=3)
    save_weights(model, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())


def test_the_model_trains_and_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = Transformer(preset("test", vocab_size=64), seed=0)
    ids = torch.randint(0, 64, (2, 16))

    def grads():
        model.zero_grad()
        logits = forward_logits(model, ids[:, :-1])
        torch.nn.functional.cross_entropy(logits.reshape(-1, 64), ids[:, 1:].reshape(-1)).backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.activation_checkpointing = True
    again = grads()
    for a, b in zip(plain, again):
        torch.testing.assert_close(a, b)
    assert all(g.abs().sum() > 0 for g in plain)
