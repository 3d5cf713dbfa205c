"""What rung-rlhf's trainers need from the torch backend, on rung's own tiny model: score heads
saved as transformers sequence classifiers, shared-prompt log-probabilities and scores,
batched sampling of token ids, a frozen reference copy, adapters switched off."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import rung
from rung.decoding import RowDecoder, Sampling
from rung.errors import RungError
from rung.interfaces import ScoreHeads, TrainableBackend
from rung.records import GenerationRequest, LoraSpec
from rung_torch.objectives import logprobs_and_scores, token_logprobs, token_scores
from rung_torch.sampling import sample_tokens
from tests.torch.engine_support import CountingTokens
from tests.torch.rlhf_support import (GreedyRollouts, check_shared_equals_separate, randomize_lora,
                                      separate_batch, train)

PROMPTS = ["Hello there", "a", "The quick brown fox", "12+34="]


@pytest.fixture
def scored(make_backend):
    """A torch backend (untied embeddings) with a score head."""
    backend = make_backend(architecture={"tie_embeddings": False})
    heads = backend.score_heads()
    assert isinstance(heads, ScoreHeads) and not heads.has_score_head()
    heads.add_score_head(seed=3)
    assert heads.has_score_head()
    return backend


def test_a_score_head_is_a_seeded_trainable_linear_named_score(make_backend):
    heads = [make_backend().score_heads() for _ in range(3)]
    for head, seed in zip(heads, (1, 1, 2)):
        head.add_score_head(seed=seed)
    weights = [h.backend.model.score.weight for h in heads]
    assert weights[0].shape == (1, heads[0].backend.model.config.dim) and weights[0].requires_grad
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])
    assert 0 < float(weights[0].abs().max()) < 1
    with pytest.raises(RungError, match="no score head"):
        token_scores(make_backend().model, {"input_ids": np.ones((1, 4), np.int64)})


def test_shared_prompt_logprobs_and_scores_equal_separate_ones(scored):
    assert check_shared_equals_separate(scored.model) > 20


def test_shared_prompt_equals_separate_under_lora_with_the_head_trainable(scored):
    scored.adapters().add_lora(LoraSpec(r=4, seed=1))
    model = scored.model
    assert "score" in next(iter(model.peft_config.values())).modules_to_save
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("score" in name for name in trainable) and any("lora_A" in name for name in trainable)
    randomize_lora(model)
    check_shared_equals_separate(model)


def test_logprobs_and_scores_is_one_forward_pass(scored):
    calls = []
    hook = scored.model.model.norm.register_forward_hook(lambda *_: calls.append(1))
    batch = separate_batch([4, 9, 30], [7, 7, 2])
    (logprobs, scores), _ = logprobs_and_scores(scored.model, batch)
    hook.remove()
    assert len(calls) == 1
    torch.testing.assert_close(logprobs, token_logprobs(scored.model, batch)[0])
    torch.testing.assert_close(scores, token_scores(scored.model, batch)[0])


def _classifier_scores(directory, ids: np.ndarray) -> torch.Tensor:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(directory)).eval()
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits[:, 0]


def _right_padded(rows, pad):
    ids = np.full((len(rows), max(map(len, rows))), pad, np.int64)
    for r, row in enumerate(rows):
        ids[r, :len(row)] = row
    return ids


def _scores_at_last_token(model, ids: np.ndarray, pad: int) -> torch.Tensor:
    with torch.no_grad():
        scores = token_scores(model, {"input_ids": ids})[0]
    last = torch.from_numpy((ids != pad).sum(-1) - 1)
    return scores[torch.arange(len(ids)), last]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_saved_scorer_loads_in_transformers_and_back_with_the_same_scores(scored, tmp_path, lora):
    from safetensors import safe_open

    if lora:  # a LoRA reward model: the folder holds the merged weights and the trained head
        scored.adapters().add_lora(LoraSpec(r=4, seed=1))
        randomize_lora(scored.model)
        with torch.no_grad():
            next(p for n, p in scored.model.named_parameters() if "score" in n and p.requires_grad).mul_(-2)
    pad = scored.tokenizer.pad_id
    rows = [scored.tokenizer.encode(text) for text in ("good answer", "a much longer and worse answer", "ok")]
    ids = _right_padded(rows, pad)
    expected = _scores_at_last_token(scored.model, ids, pad)
    scored.score_heads().save_scorer(tmp_path, pad_token_id=pad)

    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["num_labels"] == 1 and config["pad_token_id"] == pad
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as weights:
        keys = set(weights.keys())
    assert "score.weight" in keys and "lm_head.weight" not in keys
    assert all(k.startswith("model.") for k in keys - {"score.weight"})
    assert not any(p.suffix in (".bin", ".pt") for p in tmp_path.iterdir())

    torch.testing.assert_close(_classifier_scores(tmp_path, ids), expected, atol=1e-5, rtol=0)
    for name in ("torch", "hf"):
        loaded = rung.backend(name, model=str(tmp_path), device="cpu")
        assert loaded.score_heads().has_score_head(), name
        torch.testing.assert_close(_scores_at_last_token(loaded.model, ids, pad), expected, atol=1e-5, rtol=0)


def test_backend_save_writes_the_causal_lm_without_the_head(scored, tmp_path):
    scored.save(tmp_path)
    loaded = rung.backend("torch", model=str(tmp_path), device="cpu")
    assert not loaded.score_heads().has_score_head()
    batch = {"input_ids": np.array([[4, 9, 30, 7]])}
    torch.testing.assert_close(token_logprobs(loaded.model, batch)[0], token_logprobs(scored.model, batch)[0])


def _decoded(backend, ids, sampling, prompt_tokens) -> tuple[str, str | None, int]:
    decoder = RowDecoder(backend.tokenizer, sampling, prompt_tokens, incremental=False)
    for token in ids:
        if decoder.done:
            break
        decoder.push(token)
    decoder.finish("length")
    return decoder.text, decoder.finish_reason, decoder.generated


def test_greedy_sample_tokens_equals_the_backends_generation(make_backend):
    backend = make_backend()
    encoded = [backend.tokenizer.encode(p) for p in PROMPTS]
    first = sample_tokens(backend.model, encoded, Sampling(max_tokens=12))
    assert [len(row) for row in first] == [12] * len(PROMPTS)
    stop = first[0][5]  # a token the first row emits: its row must end there, the id kept
    sampling = Sampling(max_tokens=12, stop_ids=frozenset({stop}))
    rows = sample_tokens(backend.model, encoded, sampling)
    assert rows[0] == first[0][:first[0].index(stop) + 1]
    completions = backend.generate_batch([GenerationRequest(prompt=p, max_tokens=12) for p in PROMPTS])
    for ids, completion, prompt in zip(first, completions, encoded):
        assert _decoded(backend, ids, Sampling(max_tokens=12), len(prompt))[0] == completion.text


def test_seeded_sampling_repeats_and_row_i_is_the_prompt_alone_with_seed_plus_i(make_backend):
    backend = make_backend()
    encoded = [backend.tokenizer.encode(p) for p in PROMPTS]
    sampling = Sampling(max_tokens=10, temperature=1.0, top_k=40, seed=7)
    rows = sample_tokens(backend.model, encoded, sampling)
    assert sample_tokens(backend.model, encoded, sampling) == rows
    assert rows != sample_tokens(backend.model, encoded, Sampling(max_tokens=10, temperature=1.0, top_k=40, seed=8))
    for i, (prompt, ids) in enumerate(zip(PROMPTS, rows)):
        alone = backend.generate(GenerationRequest(prompt=prompt, max_tokens=10, temperature=1.0, top_k=40, seed=7 + i))
        assert _decoded(backend, ids, sampling, len(encoded[i]))[0] == alone.text


def test_sampling_in_the_engines_evaluation_context_sees_each_steps_weights(make_backend, tmp_path):
    backend = make_backend()
    stream = GreedyRollouts([backend.tokenizer.encode(p) for p in PROMPTS[:3]], max_tokens=8)
    train(backend, tmp_path, stream, steps=4, learning_rate=0.05)
    assert len(stream.samples) == 4
    assert stream.samples == stream.fresh  # the policy decodes with its current weights
    assert any(s != stream.samples[0] for s in stream.samples[1:])  # and they did change


def test_frozen_copy_is_a_reference_that_training_leaves_alone(make_backend, tmp_path):
    backend = make_backend()
    assert isinstance(backend, TrainableBackend)
    encoded = [backend.tokenizer.encode(p) for p in PROMPTS]
    sample_tokens(backend.model, encoded, Sampling(max_tokens=4))  # the model caches its decoding weights
    frozen = backend.frozen_copy()
    assert frozen is not backend.model and not frozen.training
    assert not any(p.requires_grad for p in frozen.parameters())
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    ahead = sample_tokens(frozen, encoded, Sampling(max_tokens=8))
    train(backend, tmp_path, CountingTokens(4), steps=3, learning_rate=0.05)
    assert all(torch.equal(before[k], v) for k, v in frozen.state_dict().items())
    assert not torch.equal(before["model.embed_tokens.weight"], backend.model.model.embed_tokens.weight)
    assert sample_tokens(frozen, encoded, Sampling(max_tokens=8)) == ahead


def test_disabled_adapters_give_the_base_models_logprobs(make_backend):
    backend = make_backend()
    batch = separate_batch([4, 9, 30, 12], [7, 7, 2, 40, 41])
    base = token_logprobs(backend.model, batch)[0].detach()
    adapters = backend.adapters()
    with pytest.raises(RungError, match="no LoRA adapters"):
        with adapters.disabled(backend.model):
            pass
    adapters.add_lora(LoraSpec(r=4, seed=0))
    randomize_lora(backend.model)
    adapted = token_logprobs(backend.model, batch)[0].detach()
    assert float((adapted - base).abs().max()) > 1e-3
    with adapters.disabled(backend.model) as model:
        torch.testing.assert_close(token_logprobs(model, batch)[0], base, atol=1e-6, rtol=0)
        greedy_base = sample_tokens(model, [[4, 9, 30]], Sampling(max_tokens=6))
    torch.testing.assert_close(token_logprobs(backend.model, batch)[0], adapted)
    plain = make_backend()
    assert greedy_base == sample_tokens(plain.model, [[4, 9, 30]], Sampling(max_tokens=6))


FILTERS = [Sampling(max_tokens=1, temperature=0.8), Sampling(max_tokens=1, temperature=1.0, top_k=4),
           Sampling(max_tokens=1, temperature=1.0, top_p=0.7)]


@pytest.mark.parametrize("row", FILTERS, ids=["temperature", "top_k", "top_p"])
def test_each_row_draws_from_its_filtered_distribution(row):
    from rung_torch.picking import choose

    logits = torch.randn(1, 12, generator=torch.Generator().manual_seed(0)) * 2
    scores = logits[0] / row.temperature
    if row.top_k:
        scores = scores.masked_fill(scores < torch.topk(scores, row.top_k).values[-1], float("-inf"))
    if row.top_p:
        ordered, order = torch.sort(scores, descending=True)
        probs = ordered.softmax(-1)
        scores = scores.scatter(0, order[probs.cumsum(-1) - probs >= row.top_p], float("-inf"))
    expected = scores.softmax(-1)
    # Three rows sampling alike, each from its own generator: the middle one is counted.
    batch = logits.expand(3, -1)
    generators = [torch.Generator().manual_seed(seed) for seed in (1, 2, 3)]
    counts = torch.zeros(12)
    for _ in range(8000):
        counts[choose(batch, [row] * 3, generators)[1]] += 1
    assert int(counts[expected == 0].sum()) == 0
    assert float((counts / 8000 - expected).abs().max()) < 0.02
