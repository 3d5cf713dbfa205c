"""The jax side of what rung-rlhf's trainers ask for: shared-prompt objectives, the score head
and its transformers sequence-classifier folder, batched sampling, the frozen reference and
adapters switched off. Tiny models (preset `test`), XLA on the CPU; torch and transformers
give the reference numbers where the same math runs in both frameworks."""

from __future__ import annotations

import numpy as np
import pytest

import jax.numpy as jnp

from rung.model_config import preset
from rung.objectives import shared_prompt_layout as reference_layout
from rung_jax import objectives
from rung_jax.model import init_model
from rung_rlhf.packing import completion_logprobs, pack_separate, pack_shared

VOCAB = 64
# Two prompts, each with completions of different lengths: one row each when shared.
PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9]]
COMPLETIONS = [[[10, 11, 12], [13, 14]], [[20, 21, 22, 23], [24]]]
LENGTH = 16


def config(**overrides):
    # init_std 0.3: log-probabilities far from uniform, so a wrong mask or position shows
    return preset("test", vocab_size=VOCAB, init_std=0.3, **overrides)


def shared_and_separate():
    return pack_shared(PROMPTS, COMPLETIONS, LENGTH, 0), pack_separate(PROMPTS, COMPLETIONS, LENGTH, 0)


def plain(packed) -> dict[str, np.ndarray]:
    """A packed batch as plain causal rows (no segment_ids)."""
    return {"input_ids": packed.input_ids, "labels": packed.labels}


def per_completion_tokens(values, packed, rows_and_segments):
    """The values of each (row, segment)'s predicted tokens, in order."""
    segments = packed.prediction_segments
    return [np.asarray(values)[row][segments[row] == k] for row, k in rows_and_segments]


SHARED_ORDER = [(0, 1), (0, 2), (1, 1), (1, 2)]  # (row, completion) in pack_shared
SEPARATE_ORDER = [(0, 1), (1, 1), (2, 1), (3, 1)]  # the same completions, one row each


# ---------------------------------------------------------------- step 1: shared prompts


def test_layout_in_jnp_equals_the_numpy_reference():
    shared, _ = shared_and_separate()
    got = objectives.shared_prompt_layout(jnp.asarray(shared.segment_ids))
    for mine, reference in zip(got, reference_layout(shared.segment_ids)):
        np.testing.assert_array_equal(np.asarray(mine), reference)


def test_shared_prompt_token_logprobs_equal_separate_rows():
    model = init_model(config(), seed=1)
    shared, separate = shared_and_separate()
    packed_values, _ = objectives.token_logprobs(model, shared.batch())
    separate_values, _ = objectives.token_logprobs(model, plain(separate))
    assert packed_values.shape == (2, LENGTH - 1) and separate_values.shape == (4, LENGTH - 1)
    for a, b in zip(per_completion_tokens(packed_values, shared, SHARED_ORDER),
                    per_completion_tokens(separate_values, separate, SEPARATE_ORDER)):
        assert a.size and a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    # nothing predicted (prompt, padding): exactly 0
    assert np.all(np.asarray(packed_values)[shared.prediction_segments <= 0] == 0)


def test_sequence_logprobs_and_losses_honour_segments():
    model = init_model(config(), seed=2)
    shared, separate = shared_and_separate()
    for k in (1, 2):
        packed_sums = completion_logprobs(objectives.token_logprobs(model, shared.batch())[0], shared, k)
        separate_sums = completion_logprobs(objectives.token_logprobs(model, plain(separate))[0], separate, 1)
        np.testing.assert_allclose(packed_sums, separate_sums[k - 1::2], atol=1e-5)
    rows = objectives.sequence_logprobs(model, plain(separate))[0]
    np.testing.assert_allclose(np.asarray(rows), completion_logprobs(
        objectives.token_logprobs(model, plain(separate))[0], separate, 1), atol=1e-5)
    # the same completion tokens in both layouts: the same mean and sum of cross-entropy
    np.testing.assert_allclose(float(objectives.next_token_loss(model, shared.batch())[0]),
                               float(objectives.next_token_loss(model, plain(separate))[0]), atol=1e-5)
    total, metrics = objectives.token_nll_sum(model, shared.batch())
    separate_total, separate_metrics = objectives.token_nll_sum(model, plain(separate))
    assert int(metrics["tokens"]) == int(separate_metrics["tokens"]) == 10
    np.testing.assert_allclose(float(total), float(separate_total), atol=1e-4)


def test_targets_convention_keeps_its_alignment():
    model = init_model(config(), seed=3)
    ids = np.array([[3, 17, 42, 5, 9, 63, 0, 12]], dtype=np.int64)
    by_targets, _ = objectives.token_logprobs(model, {"input_ids": ids[:, :-1], "targets": ids[:, 1:]})
    by_labels, _ = objectives.token_logprobs(model, {"input_ids": ids[:, :-1], "labels": ids[:, :-1]})
    assert by_targets.shape == (1, 7) and by_labels.shape == (1, 6)
    np.testing.assert_allclose(np.asarray(by_targets)[:, :-1], np.asarray(by_labels), atol=1e-6)


def test_objectives_are_registered_for_jax():
    from rung.objectives import load
    from rung.plugins import get_plugins

    registry = get_plugins().registry
    assert load(registry, "token_logprobs", "jax") is objectives.token_logprobs


# ---------------------------------------------------------------- torch gives the same numbers


torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def torch_checkpoint(tmp_path_factory):
    """A rung-torch model (untied head) saved to disk: what the jax backend loads."""
    pytest.importorskip("rung_torch")
    from rung_torch.model import Transformer
    from rung_torch.weights import save_weights

    directory = tmp_path_factory.mktemp("torch-model")
    model = Transformer(config(tie_embeddings=False), seed=4).eval()
    save_weights(model, directory)
    return directory, model


def test_token_logprobs_on_a_torch_saved_model_equal_torchs(torch_checkpoint):
    from rung_jax.weights import load_model
    from rung_torch import objectives as torch_objectives

    directory, torch_model = torch_checkpoint
    shared, separate = shared_and_separate()
    jax_model = load_model(directory)
    for batch in (shared.batch(), plain(separate)):
        with torch.no_grad():
            expected = torch_objectives.token_logprobs(torch_model, batch)[0].numpy()
        got = np.asarray(objectives.token_logprobs(jax_model, batch)[0])
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


# ---------------------------------------------------------------- step 2: the score head


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


def last_token_score_loss(model, batch):
    """Push every row's score at its last token up (a loss only the head and trunk can move)."""
    scores, _ = objectives.token_scores(model, batch)
    return -scores[:, -1].mean(), {}


@pytest.fixture
def byte_tokenizer():
    import rung

    return rung.tokenizer("byte")


def jax_backend(tokenizer, **architecture):
    import rung

    return rung.backend("jax", tokenizer=tokenizer, model="test", device="cpu", precision="fp32",
                        architecture={"init_std": 0.3, **architecture})


def test_token_scores_honour_segments_and_come_with_logprobs_in_one_pass():
    from rung_jax.scoring import attach_score_head

    model = attach_score_head(init_model(config(), seed=5), seed=1)
    shared, separate = shared_and_separate()
    packed_scores, _ = objectives.token_scores(model, shared.batch())
    separate_scores, _ = objectives.token_scores(model, plain(separate))
    assert packed_scores.shape == (2, LENGTH) and packed_scores.dtype == jnp.float32
    # a completion token's score as if prompt + completion ran alone (scores are per position:
    # compare the completion's own tokens, input_ids[:, 1:] where they are predicted)
    for a, b in zip(per_completion_tokens(np.asarray(packed_scores)[:, 1:], shared, SHARED_ORDER),
                    per_completion_tokens(np.asarray(separate_scores)[:, 1:], separate, SEPARATE_ORDER)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    (logprobs, scores), _ = objectives.logprobs_and_scores(model, shared.batch())
    np.testing.assert_allclose(np.asarray(scores), np.asarray(packed_scores), atol=1e-6)
    np.testing.assert_allclose(np.asarray(logprobs), np.asarray(objectives.token_logprobs(model, shared.batch())[0]),
                               atol=1e-6)


def test_saved_scorer_gives_transformers_scores_and_loads_back(tmp_path, byte_tokenizer):
    transformers = pytest.importorskip("transformers")
    backend = jax_backend(byte_tokenizer)
    heads = backend.score_heads()
    assert not heads.has_score_head()
    heads.add_score_head(seed=3)
    assert heads.has_score_head()
    pad = byte_tokenizer.pad_id if byte_tokenizer.pad_id is not None else 0
    heads.save_scorer(tmp_path / "scorer", pad_token_id=pad)
    saved = __import__("json").loads((tmp_path / "scorer" / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForSequenceClassification"] and saved["num_labels"] == 1
    assert saved["pad_token_id"] == pad

    # rows of different lengths, right-padded: transformers reads each at its last real token
    rows = [[5, 9, 33, 71, 120, 8], [44, 12, 90]]
    ids = np.full((2, 8), pad, np.int64)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
    mask = (ids != pad).astype(np.int64)
    jax_scores = np.asarray(objectives.token_scores(backend.model, {"input_ids": ids, "attention_mask": mask})[0])
    last = [len(row) - 1 for row in rows]

    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "scorer").eval()
    with torch.no_grad():
        pooled = hf(torch.from_numpy(ids)).logits[:, 0].numpy()
        every = hf.score(hf.model(torch.from_numpy(ids)).last_hidden_state)[..., 0].numpy()
    np.testing.assert_allclose(jax_scores[[0, 1], last], pooled, atol=1e-4, rtol=0)
    # causal attention: every real token's score matches, padding hidden or not
    for i, row in enumerate(rows):
        np.testing.assert_allclose(jax_scores[i, :len(row)], every[i, :len(row)], atol=1e-4, rtol=0)

    import rung

    loaded = rung.backend("jax", model=str(tmp_path / "scorer"), device="cpu", precision="fp32")
    assert loaded.score_heads().has_score_head()
    np.testing.assert_allclose(
        np.asarray(objectives.token_scores(loaded.model, {"input_ids": ids, "attention_mask": mask})[0]),
        jax_scores, atol=1e-6)


def test_score_head_on_a_torch_saved_model_equals_transformers_per_token(torch_checkpoint, tmp_path):
    """torch side: a rung-torch model, its head added in transformers and saved there; jax loads
    the classifier folder and gives its per-token scores on a shared-prompt batch."""
    transformers = pytest.importorskip("transformers")
    directory, _ = torch_checkpoint
    torch.manual_seed(0)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(directory, num_labels=1, pad_token_id=0)
    with torch.no_grad():
        hf.score.weight.normal_(0, 0.3)
    hf.eval().save_pretrained(tmp_path / "hf-scorer")
    from rung_jax.weights import load_model

    model = load_model(tmp_path / "hf-scorer")
    _, separate = shared_and_separate()
    shared, _ = shared_and_separate()
    with torch.no_grad():
        every = hf.score(hf.model(torch.from_numpy(separate.input_ids)).last_hidden_state)[..., 0].numpy()
    separate_jax = np.asarray(objectives.token_scores(model, plain(separate))[0])
    real = separate.segment_ids >= 0
    np.testing.assert_allclose(separate_jax[real], every[real], atol=1e-4, rtol=0)
    packed_jax = np.asarray(objectives.token_scores(model, shared.batch())[0])
    for a, b in zip(per_completion_tokens(packed_jax[:, 1:], shared, SHARED_ORDER),
                    per_completion_tokens(every[:, 1:], separate, SEPARATE_ORDER)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("with_lora", [False, True])
def test_the_engine_trains_the_score_head(tmp_path, byte_tokenizer, with_lora):
    from flax import nnx

    from rung.records import LoraSpec
    from rung.training import TrainingOptions
    from tests.jax.helpers import RecordingRun

    backend = jax_backend(byte_tokenizer)
    if with_lora:
        backend.adapters().add_lora(LoraSpec(r=2, target_modules=("q_proj",), modules_to_save=("score",)))
    backend.score_heads().add_score_head(seed=1)
    model = backend.model
    head_before = np.asarray(model.score.kernel.get_value()).copy()
    embed_before = np.asarray(model.model.embed_tokens.embedding.get_value()).copy()
    if with_lora:
        trainable, total = backend.adapters().trainable_parameters()
        lora = sum(int(np.prod(v.get_value().shape)) for _, v in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)))
        assert trainable == lora + head_before.size < total
    batch = {"input_ids": (np.arange(16)[None] * np.array([[1], [3]])) % 200}
    options = TrainingOptions(steps=2, log_every=1, learning_rate=1e-2, warmup_steps=0, resume="never")
    backend.engine().fit(last_token_score_loss, FixedStream(batch), options, RecordingRun(tmp_path))
    assert not np.allclose(np.asarray(model.score.kernel.get_value()), head_before)
    embed_after = np.asarray(model.model.embed_tokens.embedding.get_value())
    assert np.array_equal(embed_after, embed_before) == with_lora  # frozen under LoRA, trained without


# ---------------------------------------------------------------- step 3: batched sampling


@pytest.fixture(scope="module")
def sampling_backend():
    import rung

    return jax_backend(rung.tokenizer("byte"), n_layers=1)  # one layer: less to compile


TEXTS = ["hello", "a", "fox ok"]  # different lengths (left padding), one generate bucket (n + 10 <= 16)


def test_sample_tokens_greedy_equals_the_backends_generate(sampling_backend):
    from rung.decoding import Sampling
    from rung.objectives import load
    from rung.plugins import get_plugins
    from rung.records import GenerationRequest

    backend, tokenizer = sampling_backend, sampling_backend.tokenizer
    sample_tokens = load(get_plugins().registry, "sample_tokens", "jax")
    prompts = [tokenizer.encode(text) for text in TEXTS]
    stops = frozenset({tokenizer.eos_id})
    rows = sample_tokens(backend.model, prompts, Sampling(max_tokens=10, stop_ids=stops))
    for text, row in zip(TEXTS, rows):
        expected = backend.generate(GenerationRequest(prompt=text, max_tokens=10, temperature=0.0))
        special = set(tokenizer.special_tokens.values())  # the backend's text leaves them out
        assert tokenizer.decode([t for t in row if t not in special]) == expected.text
        assert 1 <= len(row) <= 10

    # a stop id the greedy rows produce: each row ends at its first one, which it keeps
    stop = rows[0][2]
    stopped = sample_tokens(backend.model, prompts, Sampling(max_tokens=10, stop_ids=frozenset({stop})))
    for row, cut in zip(rows, stopped):
        at = row.index(stop) + 1 if stop in row else len(row)
        assert cut == row[:at]
    assert stopped[0][-1] == stop and len(stopped[0]) == 3


def test_seeded_sampling_repeats_and_rows_follow_their_own_seed(sampling_backend):
    from rung.decoding import Sampling
    from rung_jax.generation import generate_ids
    from rung_jax.sampling import sample_tokens

    model, tokenizer = sampling_backend.model, sampling_backend.tokenizer
    prompts = [tokenizer.encode(text) for text in TEXTS]
    sampling = Sampling(max_tokens=10, temperature=1.0, seed=11)
    first = sample_tokens(model, prompts, sampling)
    assert sample_tokens(model, prompts, sampling) == first
    assert sample_tokens(model, prompts, Sampling(max_tokens=10, temperature=1.0, seed=12)) != first
    # row i is what one prompt alone samples with seed + i
    assert first[1] == generate_ids(model, prompts[1], Sampling(max_tokens=10, temperature=1.0, seed=12))
    assert all(len(row) == 10 for row in first)
