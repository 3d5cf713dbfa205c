"""The jax side of what rung-rlhf's trainers ask for: shared-prompt objectives, the score head
and its transformers sequence-classifier folder, batched sampling, the frozen reference and
adapters switched off. Tiny models, XLA on the CPU; rung-torch and transformers give the
reference numbers where the same math runs in both frameworks.

Every model here has one architecture (preset `test`, one layer, the byte tokenizer's
vocabulary) and every batch one of two shapes, so each objective compiles once or twice for
the whole file.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import jax.numpy as jnp
from flax import nnx

import rung
from rung.decoding import Sampling
from rung.model_config import preset
from rung.objectives import shared_prompt_layout as reference_layout
from rung.records import GenerationRequest, LoraSpec
from rung.training import TrainingOptions
from rung_jax import objectives
from rung_jax.model import init_model
from rung_jax.scoring import attach_score_head
from rung_rlhf.packing import completion_logprobs, pack_separate, pack_shared
from tests.jax.helpers import RecordingRun

# Two prompts, each with completions of different lengths: one row each when shared.
PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9]]
COMPLETIONS = [[[10, 11, 12], [13, 14]], [[20, 21, 22, 23], [24]]]
LENGTH = 16
SHARED_ORDER = [(0, 1), (0, 2), (1, 1), (1, 2)]  # (row, completion) in pack_shared
SEPARATE_ORDER = [(0, 1), (1, 1), (2, 1), (3, 1)]  # the same completions, one row each


@pytest.fixture(scope="module")
def tokenizer():
    return rung.tokenizer("byte")


def config(tokenizer):
    # init_std 0.3: log-probabilities far from uniform, so a wrong mask or position shows
    return preset("test", vocab_size=tokenizer.vocab_size, init_std=0.3, n_layers=1)


def jax_backend(tokenizer):
    """The jax backend on the same architecture as `config`."""
    return rung.backend("jax", tokenizer=tokenizer, model="test", device="cpu", precision="fp32",
                        architecture={"init_std": 0.3, "n_layers": 1})


@pytest.fixture(scope="module")
def model(tokenizer):
    """A model with a score head (the head changes no log-probability)."""
    return attach_score_head(init_model(config(tokenizer), seed=1), seed=2)


def shared_and_separate():
    return pack_shared(PROMPTS, COMPLETIONS, LENGTH, 0), pack_separate(PROMPTS, COMPLETIONS, LENGTH, 0)


def plain(packed) -> dict[str, np.ndarray]:
    """A packed batch as plain causal rows (no segment_ids)."""
    return {"input_ids": packed.input_ids, "labels": packed.labels}


def per_completion(values, packed, rows_and_segments):
    """The values at each (row, completion)'s predicted tokens, in order ([B, T - 1] aligned)."""
    segments = packed.prediction_segments
    return [np.asarray(values)[row][segments[row] == k] for row, k in rows_and_segments]


def assert_same_completions(shared_values, separate_values, atol):
    shared, separate = shared_and_separate()
    pairs = zip(per_completion(shared_values, shared, SHARED_ORDER),
                per_completion(separate_values, separate, SEPARATE_ORDER))
    for a, b in pairs:
        assert a.size and a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=atol, rtol=0)


class FixedStream:
    """The same batch forever (a BatchStream the engine can checkpoint)."""

    def __init__(self, batch):
        self.batch, self.pos = batch, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.pos += 1
        return self.batch

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = int(state["pos"])


# ---------------------------------------------------------------- shared prompts


def test_layout_in_jnp_equals_the_numpy_reference():
    shared, _ = shared_and_separate()
    got = objectives.shared_prompt_layout(jnp.asarray(shared.segment_ids))
    for mine, reference in zip(got, reference_layout(shared.segment_ids)):
        np.testing.assert_array_equal(np.asarray(mine), reference)


def test_shared_prompt_token_logprobs_equal_separate_rows(model):
    shared, separate = shared_and_separate()
    packed_values, _ = objectives.token_logprobs(model, shared.batch())
    separate_values, _ = objectives.token_logprobs(model, plain(separate))
    assert packed_values.shape == (2, LENGTH - 1) and separate_values.shape == (4, LENGTH - 1)
    assert_same_completions(packed_values, separate_values, atol=1e-5)
    # nothing predicted (prompt, padding): exactly 0
    assert np.all(np.asarray(packed_values)[shared.prediction_segments <= 0] == 0)


def test_sequence_logprobs_and_losses_honour_segments(model):
    shared, separate = shared_and_separate()
    separate_values = np.asarray(objectives.token_logprobs(model, plain(separate))[0])
    by_completion = completion_logprobs(separate_values, separate, 1)  # [4]: row i * 2 + j
    # a shared row sums both its completions
    np.testing.assert_allclose(np.asarray(objectives.sequence_logprobs(model, shared.batch())[0]),
                               by_completion.reshape(2, 2).sum(-1), atol=1e-5)
    # cross-entropy over exactly the completion tokens, as the separate rows give it
    tokens = int((separate.prediction_segments == 1).sum())
    np.testing.assert_allclose(float(objectives.next_token_loss(model, shared.batch())[0]),
                               -by_completion.sum() / tokens, atol=1e-5)
    total, metrics = objectives.token_nll_sum(model, shared.batch())
    assert int(metrics["tokens"]) == tokens == 10
    np.testing.assert_allclose(float(total), -by_completion.sum(), atol=1e-4)


def test_targets_convention_keeps_its_alignment(model):
    _, separate = shared_and_separate()
    ids = separate.input_ids
    targets = np.concatenate([separate.labels[:, 1:], np.full((4, 1), -100)], axis=1)  # already shifted
    by_targets, _ = objectives.token_logprobs(model, {"input_ids": ids, "targets": targets})
    by_labels, _ = objectives.token_logprobs(model, plain(separate))
    assert by_targets.shape == (4, LENGTH)
    np.testing.assert_allclose(np.asarray(by_targets)[:, :-1], np.asarray(by_labels), atol=1e-6)


def test_objectives_are_registered_for_jax():
    from rung.objectives import load
    from rung.plugins import get_plugins

    registry = get_plugins().registry
    for name in ("token_logprobs", "token_scores", "logprobs_and_scores"):
        assert load(registry, name, "jax") is getattr(objectives, name)
    from rung_jax.sampling import sample_tokens

    assert load(registry, "sample_tokens", "jax") is sample_tokens


# ---------------------------------------------------------------- the score head


def test_token_scores_honour_segments_and_come_with_logprobs_in_one_pass(model):
    shared, separate = shared_and_separate()
    packed_scores, _ = objectives.token_scores(model, shared.batch())
    separate_scores, _ = objectives.token_scores(model, plain(separate))
    assert packed_scores.shape == (2, LENGTH) and packed_scores.dtype == jnp.float32
    # scores are per position: a completion token's, as if prompt + completion ran alone
    assert_same_completions(np.asarray(packed_scores)[:, 1:], np.asarray(separate_scores)[:, 1:], atol=1e-5)
    (logprobs, scores), _ = objectives.logprobs_and_scores(model, shared.batch())
    np.testing.assert_allclose(np.asarray(scores), np.asarray(packed_scores), atol=1e-6)
    np.testing.assert_allclose(np.asarray(logprobs), np.asarray(objectives.token_logprobs(model, shared.batch())[0]),
                               atol=1e-6)


def test_saved_scorer_gives_transformers_scores_and_loads_back(tmp_path, tokenizer):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    backend = jax_backend(tokenizer)
    heads = backend.score_heads()
    assert not heads.has_score_head()
    heads.add_score_head(seed=3)
    assert heads.has_score_head()
    pad = tokenizer.pad_id
    heads.save_scorer(tmp_path / "scorer", pad_token_id=pad)
    saved = json.loads((tmp_path / "scorer" / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForSequenceClassification"] and saved["num_labels"] == 1
    assert saved["pad_token_id"] == pad

    # rows of different lengths, right-padded: transformers reads each at its last real token
    rows = [[5, 9, 33, 71, 120, 8], [44, 12, 90]]
    ids = np.full((2, LENGTH), pad, np.int64)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
    jax_scores = np.asarray(objectives.token_scores(backend.model, {"input_ids": ids})[0])

    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "scorer").eval()
    with torch.no_grad():
        pooled = hf(torch.from_numpy(ids)).logits[:, 0].numpy()
        every = hf.score(hf.model(torch.from_numpy(ids)).last_hidden_state)[..., 0].numpy()
    np.testing.assert_allclose(jax_scores[[0, 1], [len(r) - 1 for r in rows]], pooled, atol=1e-4, rtol=0)
    for i, row in enumerate(rows):  # causal: every real token's score, whatever follows it
        np.testing.assert_allclose(jax_scores[i, :len(row)], every[i, :len(row)], atol=1e-4, rtol=0)

    loaded = rung.backend("jax", model=str(tmp_path / "scorer"), device="cpu", precision="fp32")
    assert loaded.score_heads().has_score_head() and loaded.tokenizer is not None
    np.testing.assert_allclose(np.asarray(objectives.token_scores(loaded.model, {"input_ids": ids})[0]),
                               jax_scores, atol=1e-6)

    # rung-torch reads the same folder as a model with its head, and gives the same scores
    pytest.importorskip("rung_torch")
    from rung_torch import objectives as torch_objectives
    from rung_torch.weights import load_model as torch_load

    with torch.no_grad():
        torch_scores = torch_objectives.token_scores(torch_load(tmp_path / "scorer").eval(), {"input_ids": ids})[0]
    np.testing.assert_allclose(jax_scores, torch_scores.numpy(), atol=1e-4, rtol=0)


def test_scorer_folder_of_an_untied_model_and_the_causal_lm_save(tmp_path, tokenizer):
    """A classifier has no lm_head: an untied model loads back with a zero one (it scores);
    backend.save writes the causal LM without the head, as rung-torch does."""
    from safetensors import safe_open

    from rung_jax.scoring import save_scorer
    from rung_jax.weights import load_model, save_model

    untied = attach_score_head(init_model(preset("test", vocab_size=64, tie_embeddings=False, n_layers=1)), seed=1)
    save_scorer(untied, tmp_path / "scorer", pad_token_id=0)
    save_model(untied, tmp_path / "lm")
    with safe_open(str(tmp_path / "scorer" / "model.safetensors"), framework="numpy") as f:
        assert "score.weight" in f.keys() and "lm_head.weight" not in f.keys()
    with safe_open(str(tmp_path / "lm" / "model.safetensors"), framework="numpy") as f:
        assert "score.weight" not in f.keys() and "lm_head.weight" in f.keys()
    loaded = load_model(tmp_path / "scorer")
    np.testing.assert_array_equal(np.asarray(loaded.score.kernel.get_value()),
                                  np.asarray(untied.score.kernel.get_value()))
    assert not np.any(np.asarray(loaded.lm_head.kernel.get_value()))
    assert not hasattr(load_model(tmp_path / "lm"), "score")


def test_a_torch_model_gives_the_same_logprobs_and_scores_in_jax(tmp_path, tokenizer):
    """rung-torch's model saved; transformers puts a score head on it and saves the classifier;
    jax loads that folder: torch's token_logprobs and transformers' per-token scores, 1e-4."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("rung_torch")
    from rung_jax.weights import load_model
    from rung_torch import objectives as torch_objectives
    from rung_torch.model import Transformer
    from rung_torch.weights import save_weights

    torch_model = Transformer(config(tokenizer), seed=4).eval()
    save_weights(torch_model, tmp_path / "torch")
    torch.manual_seed(0)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "torch", num_labels=1,
                                                                         pad_token_id=0)
    with torch.no_grad():
        hf.score.weight.normal_(0, 0.3)
    hf.eval().save_pretrained(tmp_path / "classifier")
    jax_model = load_model(tmp_path / "classifier")

    shared, separate = shared_and_separate()
    for batch in (shared.batch(), plain(separate)):
        with torch.no_grad():
            expected = torch_objectives.token_logprobs(torch_model, batch)[0].numpy()
        np.testing.assert_allclose(np.asarray(objectives.token_logprobs(jax_model, batch)[0]), expected,
                                   atol=1e-4, rtol=0)
    with torch.no_grad():
        every = hf.score(hf.model(torch.from_numpy(separate.input_ids)).last_hidden_state)[..., 0].numpy()
    separate_scores = np.asarray(objectives.token_scores(jax_model, plain(separate))[0])
    real = separate.segment_ids >= 0
    np.testing.assert_allclose(separate_scores[real], every[real], atol=1e-4, rtol=0)
    packed_scores = np.asarray(objectives.token_scores(jax_model, shared.batch())[0])
    assert_same_completions(packed_scores[:, 1:], every[:, 1:], atol=1e-4)


# ---------------------------------------------------------------- training: head, reference, adapters


def policy_and_head_loss(model, batch):
    """Next-token loss plus a push on every row's last score: moves trunk, head and adapters."""
    loss, _ = objectives.next_token_loss(model, batch)
    scores, _ = objectives.token_scores(model, batch)
    return loss - scores[:, -1].mean(), {}


OPTIONS = TrainingOptions(steps=2, log_every=1, learning_rate=5e-2, warmup_steps=0, resume="never")


def test_full_training_moves_the_head_and_never_the_frozen_copy(tmp_path, tokenizer):
    backend = jax_backend(tokenizer)
    backend.score_heads().add_score_head(seed=1)
    batch = shared_and_separate()[0].batch()
    frozen = backend.frozen_copy()
    reference, _ = objectives.token_logprobs(frozen, batch)
    head_before = np.asarray(backend.model.score.kernel.get_value()).copy()

    backend.engine().fit(policy_and_head_loss, FixedStream(batch), OPTIONS, RecordingRun(tmp_path))
    assert not np.allclose(np.asarray(backend.model.score.kernel.get_value()), head_before)
    trained, _ = objectives.token_logprobs(backend.model, batch)
    assert not np.allclose(np.asarray(trained), np.asarray(reference), atol=1e-3)  # the policy moved
    np.testing.assert_array_equal(np.asarray(objectives.token_logprobs(frozen, batch)[0]), np.asarray(reference))
    np.testing.assert_array_equal(np.asarray(frozen.score.kernel.get_value()), head_before)


def test_lora_trains_adapters_and_head_and_disabled_gives_the_base(tmp_path, tokenizer):
    backend = jax_backend(tokenizer)
    batch = shared_and_separate()[0].batch()
    base, _ = objectives.token_logprobs(backend.model, batch)
    embed_before = np.asarray(backend.model.model.embed_tokens.embedding.get_value()).copy()
    adapters = backend.adapters()
    adapters.add_lora(LoraSpec(r=2, target_modules=("q_proj", "v_proj"), modules_to_save=("score",)))
    backend.score_heads().add_score_head(seed=1)
    head_before = np.asarray(backend.model.score.kernel.get_value()).copy()
    trainable, total = adapters.trainable_parameters()
    lora = sum(int(np.prod(v.get_value().shape)) for _, v in nnx.to_flat_state(nnx.state(backend.model, nnx.LoRAParam)))
    assert trainable == lora + head_before.size < total

    engine = backend.engine()
    engine.fit(policy_and_head_loss, FixedStream(batch), OPTIONS, RecordingRun(tmp_path / "run"))
    assert not np.allclose(np.asarray(backend.model.score.kernel.get_value()), head_before)
    np.testing.assert_array_equal(np.asarray(backend.model.model.embed_tokens.embedding.get_value()), embed_before)

    with engine.evaluation() as model:  # where a trainer computes its reference after a step
        policy = np.asarray(objectives.token_logprobs(model, batch)[0])
        with adapters.disabled(model) as same:
            assert same is model
            reference = np.asarray(objectives.token_logprobs(model, batch)[0])
        after = np.asarray(objectives.token_logprobs(model, batch)[0])
    assert not np.allclose(policy, np.asarray(base), atol=1e-3)
    np.testing.assert_allclose(reference, np.asarray(base), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(after, policy)  # switched back on after the block

    # the head travels with the adapters (peft's modules_to_save key)
    adapters.save_adapter(tmp_path / "adapter", base="test")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["modules_to_save"] == ["score"]
    fresh = jax_backend(tokenizer)
    fresh.adapters().load_adapter(tmp_path / "adapter", merge=False)
    assert fresh.score_heads().has_score_head()
    np.testing.assert_array_equal(np.asarray(fresh.model.score.kernel.get_value()),
                                  np.asarray(backend.model.score.kernel.get_value()))


# ---------------------------------------------------------------- batched sampling


@pytest.fixture(scope="module")
def sampling_backend(tokenizer):
    return jax_backend(tokenizer)


TEXTS = ["hello", "a", "fox ok"]  # different lengths (left padding), one generate bucket (n + 10 <= 16)


def test_sample_tokens_greedy_equals_the_backends_generate(sampling_backend):
    from rung_jax.sampling import sample_tokens

    backend, tokenizer = sampling_backend, sampling_backend.tokenizer
    prompts = [tokenizer.encode(text) for text in TEXTS]
    rows = sample_tokens(backend.model, prompts, Sampling(max_tokens=10, stop_ids=frozenset({tokenizer.eos_id})))
    special = set(tokenizer.special_tokens.values())  # the backend's text leaves them out
    for text, row in zip(TEXTS, rows):
        expected = backend.generate(GenerationRequest(prompt=text, max_tokens=10, temperature=0.0))
        assert tokenizer.decode([t for t in row if t not in special]) == expected.text
        assert 1 <= len(row) <= 10

    # a stop id the greedy rows produce: each row ends at its first one, which it keeps
    stop = rows[0][2]
    stopped = sample_tokens(backend.model, prompts, Sampling(max_tokens=10, stop_ids=frozenset({stop})))
    for row, cut in zip(rows, stopped):
        assert cut == row[:row.index(stop) + 1 if stop in row else len(row)]
    assert stopped[0][-1] == stop and len(stopped[0]) == 3


def test_seeded_sampling_repeats_and_rows_follow_their_own_seed(sampling_backend):
    from rung_jax.generation import generate_ids
    from rung_jax.sampling import sample_tokens

    model, tokenizer = sampling_backend.model, sampling_backend.tokenizer
    prompts = [tokenizer.encode(text) for text in TEXTS]
    sampling = Sampling(max_tokens=10, temperature=1.0, seed=11)
    first = sample_tokens(model, prompts, sampling)
    assert sample_tokens(model, prompts, sampling) == first
    assert sample_tokens(model, prompts, Sampling(max_tokens=10, temperature=1.0, seed=12)) != first
    # row i is what its prompt alone samples with seed + i
    assert first[1] == generate_ids(model, prompts[1], Sampling(max_tokens=10, temperature=1.0, seed=12))
    assert all(len(row) == 10 for row in first)
