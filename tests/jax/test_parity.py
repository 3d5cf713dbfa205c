"""Cross-framework parity: checkpoints move between rung-torch and rung-jax with the same logits,
and greedy generation picks the same tokens."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("rung_torch")

import jax.numpy as jnp  # noqa: E402

import rung  # noqa: E402
from rung.model_config import preset  # noqa: E402
from rung.records import GenerationRequest  # noqa: E402

# fp32 on both sides; the same math in a different order: |diff| stays ~1e-6 of logits ~1
ATOL, RTOL = 1e-4, 1e-4
IDS = np.array([[3, 17, 42, 5, 9, 63, 0, 12, 33, 7, 21, 50]], dtype=np.int64)


def torch_logits(model, ids):
    with torch.no_grad():
        return model(torch.from_numpy(ids)).float().numpy()


def test_torch_checkpoint_loads_in_jax_with_the_same_logits(tmp_path):
    from rung_jax.weights import load_model
    from rung_torch.model import Transformer
    from rung_torch.weights import save_weights

    config = preset("test", vocab_size=64, tie_embeddings=False)  # untied: lm_head.weight on disk
    model = Transformer(config, seed=1).eval()
    save_weights(model, tmp_path)
    jax_model = load_model(tmp_path)
    assert jax_model.config.to_hf() == config.to_hf()
    expected = torch_logits(model, IDS)
    got = np.asarray(jax_model(jnp.asarray(IDS)))
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=RTOL)


def test_jax_checkpoint_loads_in_torch_with_the_same_logits(tmp_path):
    from rung_jax.model import init_model
    from rung_jax.weights import save_model
    from rung_torch.weights import load_model

    config = preset("test", vocab_size=64)  # tied: no lm_head.weight on disk
    jax_model = init_model(config, seed=2)
    save_model(jax_model, tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), framework="numpy") as f:
        names = set(f.keys())
        assert f.get_tensor("model.layers.0.self_attn.q_proj.weight").shape == (32, 32)  # [out, in]
        assert f.get_tensor("model.layers.0.self_attn.k_proj.weight").shape == (16, 32)  # GQA
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    model = load_model(tmp_path).eval()
    np.testing.assert_allclose(torch_logits(model, IDS), np.asarray(jax_model(jnp.asarray(IDS))),
                               atol=ATOL, rtol=RTOL)


@pytest.fixture(scope="module")
def shared_checkpoint(tmp_path_factory):
    """A model whose greedy continuation varies (large init), saved once with a byte tokenizer."""
    from rung_jax.model import init_model
    from rung_jax.weights import save_model
    from rung_tokenizers import ByteTokenizer

    tokenizer = ByteTokenizer()
    directory = tmp_path_factory.mktemp("shared")
    config = preset("test", vocab_size=tokenizer.vocab_size, init_std=0.4, max_seq_len=64)
    save_model(init_model(config, seed=3), directory)
    tokenizer.save(directory)
    return directory


def test_greedy_generation_matches_torch_token_for_token(shared_checkpoint):
    jax_backend = rung.backend("jax", model=str(shared_checkpoint))
    torch_backend = rung.backend("torch", model=str(shared_checkpoint), precision="fp32")
    request = GenerationRequest(prompt="def main():", max_tokens=24)
    tokenizer = jax_backend.tokenizer
    from rung_jax.generation import generate_ids

    prompt, sampling = jax_backend._prepare(request)
    jax_ids = generate_ids(jax_backend.model, prompt, sampling)
    expected = torch_backend.generate(request)
    got = jax_backend.generate(request)
    assert got.text == expected.text
    assert got.finish_reason == expected.finish_reason
    assert got.usage == expected.usage
    hidden = sampling.stop_ids | set(tokenizer.special_tokens.values())  # never part of the text
    assert tokenizer.decode([t for t in jax_ids if t not in hidden]) == got.text
    assert len(set(jax_ids)) > 3  # a varied continuation, not one token repeated


def test_streaming_sampling_and_stop_strings(shared_checkpoint):
    backend = rung.backend("jax", model=str(shared_checkpoint))
    request = GenerationRequest(prompt="def main():", max_tokens=20)
    whole = backend.generate(request)
    deltas = list(backend.stream(request))
    assert "".join(d.text for d in deltas) == whole.text
    assert deltas[-1].finish_reason == whole.finish_reason and deltas[-1].usage == whole.usage
    # a stop string cuts the text before it, finish_reason "stop" (the fixture's model says 20
    # tokens of varied text: a short or repetitive one would be a broken fixture, and fails here)
    assert whole.finish_reason == "length" and len(whole.text) >= 8
    stop = whole.text[5:7]
    expected = whole.text[: whole.text.find(stop)]
    assert expected  # the stop is not at the very start: text before it must survive
    cut = backend.generate(GenerationRequest(prompt="def main():", max_tokens=20, stop=[stop]))
    assert (cut.finish_reason, cut.text) == ("stop", expected)
    assert cut.usage.completion_tokens < whole.usage.completion_tokens
    streamed = list(backend.stream(GenerationRequest(prompt="def main():", max_tokens=20, stop=[stop])))
    assert "".join(d.text for d in streamed) == expected and streamed[-1].finish_reason == "stop"
    # sampling: the same seed gives the same text, temperature/top-k/top-p change nothing compiled
    sampled = [backend.generate(GenerationRequest(prompt="def main():", max_tokens=20, temperature=1.0,
                                                  top_k=20, top_p=0.9, seed=seed)).text for seed in (7, 7, 8)]
    assert sampled[0] == sampled[1] != whole.text
    assert sampled[2] != sampled[0]
