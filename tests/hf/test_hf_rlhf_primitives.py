"""What rung-rlhf's trainers need from the hf backend, on a tiny transformers Llama (and GPT-2
where the architecture matters): shared-prompt log-probabilities and scores, sequence
classifiers saved and loaded back, sampling token ids through transformers' generate, a
frozen reference copy, adapters switched off.

(Named apart from tests/torch/test_rlhf_primitives.py: two test files of one basename in
folders without __init__.py collide in pytest's default import mode.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import rung
from rung.decoding import RowDecoder, Sampling
from rung.interfaces import ScoreHeads, TrainableBackend
from rung.records import GenerationRequest, LoraSpec
from rung_torch.objectives import token_logprobs, token_scores
from rung_torch.sampling import sample_tokens
from tests.torch.engine_support import CountingTokens
from tests.torch.rlhf_support import (GreedyRollouts, check_shared_equals_separate, randomize_lora,
                                      separate_batch, train)

PROMPTS = ["the cat sat on", "a dog", "rain over hills and rivers", "sun"]


@pytest.fixture
def fresh(model_dirs):
    """fresh(family): a new hf backend on that family's tiny checkpoint (tests change it)."""
    return lambda family="llama": rung.backend("hf", model=str(model_dirs[family]), max_tokens=12)


@pytest.fixture
def scored(fresh):
    backend = fresh("llama")
    heads = backend.score_heads()
    assert isinstance(heads, ScoreHeads) and not heads.has_score_head()
    heads.add_score_head(seed=2)
    assert heads.has_score_head() and backend.model.score.weight.requires_grad
    return backend


def test_shared_prompt_logprobs_and_scores_equal_separate_ones(scored):
    assert check_shared_equals_separate(scored.model) > 20


def test_shared_prompt_equals_separate_under_lora_with_the_head_trainable(scored):
    scored.adapters().add_lora(LoraSpec(r=4, seed=1))
    assert "score" in next(iter(scored.model.peft_config.values())).modules_to_save
    assert any("score" in n for n, p in scored.model.named_parameters() if p.requires_grad)
    randomize_lora(scored.model)
    check_shared_equals_separate(scored.model)


def _scores_at_last_token(model, ids: np.ndarray, pad: int) -> torch.Tensor:
    with torch.no_grad():
        scores = token_scores(model, {"input_ids": ids})[0]
    return scores[torch.arange(len(ids)), torch.from_numpy((ids != pad).sum(-1) - 1)]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_saved_scorer_loads_in_transformers_and_back_with_the_same_scores(fresh, tmp_path, family):
    from transformers import AutoModelForSequenceClassification

    backend = fresh(family)
    backend.score_heads().add_score_head(seed=5)
    pad = backend.pad_id
    rows = [backend.tokenizer.encode(t) for t in ("the cat", "a dog ran to the park while birds sang", "sun")]
    ids = np.full((len(rows), max(map(len, rows))), pad, np.int64)
    for r, row in enumerate(rows):
        ids[r, :len(row)] = row
    expected = _scores_at_last_token(backend.model, ids, pad)
    backend.score_heads().save_scorer(tmp_path, pad_token_id=pad)

    config = json.loads((tmp_path / "config.json").read_text())
    name = {"llama": "LlamaForSequenceClassification", "gpt2": "GPT2ForSequenceClassification"}[family]
    assert config["architectures"] == [name] and config["pad_token_id"] == pad
    classifier = AutoModelForSequenceClassification.from_pretrained(str(tmp_path)).eval()
    assert type(classifier).__name__ == name and classifier.config.num_labels == 1
    with torch.no_grad():
        torch.testing.assert_close(classifier(torch.from_numpy(ids)).logits[:, 0], expected, atol=1e-5, rtol=0)
    backends = ["hf", "torch"] if family == "llama" else ["hf"]  # rung's model is Llama-style
    for backend_name in backends:
        loaded = rung.backend(backend_name, model=str(tmp_path), device="cpu")
        assert loaded.score_heads().has_score_head(), backend_name
        torch.testing.assert_close(_scores_at_last_token(loaded.model, ids, pad), expected, atol=1e-5, rtol=0)


def test_a_lora_reward_model_saves_its_merged_weights_and_trained_head(scored, tmp_path):
    from transformers import AutoModelForSequenceClassification

    scored.adapters().add_lora(LoraSpec(r=4, seed=1))
    randomize_lora(scored.model)
    with torch.no_grad():
        next(p for n, p in scored.model.named_parameters() if "score" in n and p.requires_grad).mul_(-3)
    ids = np.array([scored.tokenizer.encode("the dog ran to the park")], np.int64)
    expected = token_scores(scored.model, {"input_ids": ids})[0][:, -1].detach()
    scored.score_heads().save_scorer(tmp_path, pad_token_id=scored.pad_id)
    classifier = AutoModelForSequenceClassification.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(classifier(torch.from_numpy(ids)).logits[:, 0], expected, atol=1e-5, rtol=0)
    assert hasattr(scored.model, "peft_config")  # the live model keeps its adapters


def _text(backend, ids, max_tokens, prompt_tokens) -> str:
    decoder = RowDecoder(backend.tokenizer, Sampling(max_tokens=max_tokens, stop_ids=frozenset(backend.stop_ids)),
                         prompt_tokens, incremental=False)
    for token in ids:
        if not decoder.done:
            decoder.push(token)
    decoder.finish("length")
    return decoder.text


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora"])
def test_greedy_sample_tokens_equals_the_backends_generation(fresh, lora):
    backend = fresh("llama")
    if lora:
        backend.adapters().add_lora(LoraSpec(r=4, seed=1))
        randomize_lora(backend.model)
    requests = [GenerationRequest(prompt=p, max_tokens=12) for p in PROMPTS]
    encoded = [backend._prepare(r)[0] for r in requests]
    rows = sample_tokens(backend.model, encoded, Sampling(max_tokens=12, stop_ids=frozenset(backend.stop_ids)))
    for ids, completion, prompt in zip(rows, backend.generate_batch(requests), encoded):
        assert _text(backend, ids, 12, len(prompt)) == completion.text
        assert len(ids) == completion.usage.completion_tokens
        assert (ids[-1] in backend.stop_ids) == (completion.finish_reason == "stop")


def test_seeded_sampling_repeats_and_row_i_is_the_prompt_alone_with_seed_plus_i(fresh):
    backend = fresh("qwen2")  # its generation_config.json samples with top_k 20: not used here
    encoded = [backend.tokenizer.encode(p) for p in PROMPTS]
    sampling = Sampling(max_tokens=10, temperature=1.0, seed=11)
    rows = sample_tokens(backend.model, encoded, sampling)
    assert sample_tokens(backend.model, encoded, sampling) == rows
    for i, prompt in enumerate(encoded):
        alone = Sampling(max_tokens=10, temperature=1.0, seed=11 + i)
        assert sample_tokens(backend.model, [prompt], alone)[0] == rows[i]
    assert len({t for row in rows for t in row}) > 20  # not top-k 20 of a peaked distribution


def test_sampling_in_the_engines_evaluation_context_sees_each_steps_weights(fresh, tmp_path):
    backend = fresh("llama")
    stream = GreedyRollouts([backend.tokenizer.encode(p) for p in PROMPTS[:3]], backend.stop_ids, max_tokens=6)
    train(backend, tmp_path, stream, steps=3, learning_rate=0.05)
    assert len(stream.samples) == 3 and stream.samples == stream.fresh
    assert any(s != stream.samples[0] for s in stream.samples[1:])


def test_frozen_copy_is_a_reference_that_training_leaves_alone(fresh, tmp_path):
    backend = fresh("llama")
    assert isinstance(backend, TrainableBackend)
    frozen = backend.frozen_copy()
    assert frozen is not backend.model and not frozen.training
    assert not any(p.requires_grad for p in frozen.parameters())
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    train(backend, tmp_path, CountingTokens(4), steps=2, learning_rate=0.05)
    assert all(torch.equal(before[k], v) for k, v in frozen.state_dict().items())
    assert not all(torch.equal(before[k], v) for k, v in backend.model.state_dict().items())


def test_disabled_adapters_give_the_base_models_logprobs(fresh):
    backend = fresh("llama")
    batch = separate_batch([4, 9, 30, 12], [7, 7, 2, 40, 41])
    base = token_logprobs(backend.model, batch)[0].detach()
    adapters = backend.adapters()
    adapters.add_lora(LoraSpec(r=4, seed=0))
    randomize_lora(backend.model)
    adapted = token_logprobs(backend.model, batch)[0].detach()
    assert float((adapted - base).abs().max()) > 1e-3
    with adapters.disabled(backend.model) as model:
        torch.testing.assert_close(token_logprobs(model, batch)[0], base, atol=1e-6, rtol=0)
    torch.testing.assert_close(token_logprobs(backend.model, batch)[0], adapted)
