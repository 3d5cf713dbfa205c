"""rung_torch.transformers_view: a transformers Llama seen as rung's Transformer, so that
`sample_tokens` decodes it with rung's own batched decoder (GRPO on the hf backend)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers import Qwen3Config, Qwen3ForCausalLM  # noqa: E402

from rung.decoding import Sampling  # noqa: E402
from rung_torch.modeling import weights_changed  # noqa: E402
from rung_torch.sampling import _sample_transformers, sample_tokens  # noqa: E402
from rung_torch.transformers_view import view  # noqa: E402

PROMPTS = [[5, 6, 7, 8, 9], [11, 12], [30, 31, 32]] * 2


def llama(**overrides) -> LlamaForCausalLM:
    torch.manual_seed(0)
    settings = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False)
    return LlamaForCausalLM(LlamaConfig(**{**settings, **overrides})).eval()


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_the_view_is_the_same_network_on_the_same_parameters(tied):
    model = llama(tie_word_embeddings=tied)
    seen = view(model)
    assert seen is not None and view(model) is seen  # built once
    ours = dict(seen.named_parameters(remove_duplicate=False))
    assert all(ours[name] is p for name, p in model.named_parameters(remove_duplicate=False))  # no copies
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        assert torch.equal(seen(ids), model(ids).logits)


def test_a_qwen3_without_biases_has_a_view_with_its_qk_norms():
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                         max_position_embeddings=128)).eval()
    seen = view(model)
    assert seen is not None and seen.config.qk_norm
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        torch.testing.assert_close(seen(ids), model(ids).logits, rtol=0, atol=1e-5)
    sampling = Sampling(max_tokens=12, stop_ids=frozenset())
    assert sample_tokens(model, PROMPTS, sampling) == _sample_transformers(model, model, PROMPTS, sampling)


def test_sampling_through_the_view_gives_generates_tokens():
    model = llama()
    for sampling in (Sampling(max_tokens=16, stop_ids=frozenset()),
                     Sampling(max_tokens=16, temperature=1.0, seed=4, stop_ids=frozenset())):
        assert sample_tokens(model, PROMPTS, sampling) == _sample_transformers(model, model, PROMPTS, sampling)


@pytest.mark.parametrize("model", [
    lambda: llama(attention_bias=True),
    lambda: llama(mlp_bias=True),
    lambda: llama(hidden_act="gelu"),
    lambda: llama(rope_scaling={"rope_type": "linear", "factor": 2.0}),
    lambda: GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=32, n_layer=1, n_head=2, n_positions=64)),
], ids=["attention-bias", "mlp-bias", "gelu", "scaled-rope", "gpt2"])
def test_another_network_gets_no_view_and_keeps_generate(model):
    built = model()
    assert view(built) is None
    sampling = Sampling(max_tokens=6, stop_ids=frozenset())
    assert len(sample_tokens(built, PROMPTS[:2], sampling)[0]) == 6


def test_a_wrapped_projection_gets_no_view():
    model = llama()

    class Scaled(torch.nn.Linear):  # as a quantised or adapter layer is: a Linear whose forward is not W x
        def forward(self, x):
            return 2 * super().forward(x)

    old = model.model.layers[0].mlp.up_proj
    scaled = Scaled(old.in_features, old.out_features, bias=False)
    scaled.weight = old.weight
    model.model.layers[0].mlp.up_proj = scaled
    assert view(model) is None


def test_weights_changed_where_torch_keeps_no_record_are_seen():
    model = llama()
    sampling = Sampling(max_tokens=12, stop_ids=frozenset())
    before = sample_tokens(model, PROMPTS, sampling)
    with torch.no_grad():
        for p in model.parameters():
            p.data.copy_(torch.randn_like(p) * 0.5)  # through .data: the version counters stay
    weights_changed(model)  # what the engine calls after each optimizer step
    after = sample_tokens(model, PROMPTS, sampling)
    assert after != before
    assert after == _sample_transformers(model, model, PROMPTS, sampling)


def test_a_replaced_parameter_builds_the_view_again():
    model = llama()
    first = view(model)
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    second = view(model)
    assert second is not first and second.lm_head.weight is model.lm_head.weight
    sampling = Sampling(max_tokens=10, stop_ids=frozenset())
    assert sample_tokens(model, PROMPTS, sampling) == _sample_transformers(model, model, PROMPTS, sampling)


@pytest.mark.parametrize("model", [llama, lambda: llama(attention_bias=True)], ids=["view", "generate"])
def test_a_repetition_penalty_is_refused_on_either_path(model):
    from rung.errors import RungError

    with pytest.raises(RungError, match="repetition penalty"):
        sample_tokens(model(), PROMPTS, Sampling(max_tokens=4, repetition_penalty=1.3, stop_ids=frozenset()))
