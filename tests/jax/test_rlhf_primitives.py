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
