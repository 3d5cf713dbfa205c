"""rung-jax's objectives, by the names `rung.objectives` defines.

Each is a pure jax function `objective(model, batch) -> (value, metrics)` of an NNX model and
a dict of arrays. The engine traces it inside its jitted step; an evaluator that calls it on
concrete arrays (`rung.objectives.heldout_loss`, batch by batch in the engine's evaluation
context) gets it compiled with `nnx.jit` instead of run op by op (see `JitWhenConcrete`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rung.objectives import IGNORE_INDEX
from rung_jax.scoring import score_of


def shared_prompt_layout(segment_ids: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Rotary positions [B, T], attention mask [B, T, T] (bool) and sources [B, T] of a
    shared-prompt batch: `rung.objectives.shared_prompt_layout` in jnp (traceable under jit)."""
    seg = segment_ids.astype(jnp.int32)
    T = seg.shape[-1]
    prompt = seg == 0
    prompt_len = prompt.sum(-1, keepdims=True)
    same = seg[:, :, None] == seg[:, None, :]
    causal = jnp.tril(jnp.ones((T, T), bool))[None]
    eye = jnp.eye(T, dtype=bool)[None]
    mask = (causal & ((prompt[:, None, :] & (seg[:, :, None] >= 0)) | same)) | eye
    within = (same & causal).sum(-1) - 1  # index within its own segment
    positions = jnp.where(seg > 0, prompt_len + within, within)
    index = jnp.arange(T)[None, :]
    first = (seg > 0) & (within == 0)
    sources = jnp.maximum(jnp.where(first, prompt_len - 1, index - 1), 0)
    return positions, mask, sources


def _hidden(model: Any, batch: Mapping[str, Any]) -> tuple[jax.Array, jax.Array | None]:
    """Final hidden states [B, T, D] of the batch and, for a shared-prompt batch (`segment_ids`),
    the sources [B, T] (which position predicts token t); None otherwise."""
    ids = jnp.asarray(batch["input_ids"])
    if batch.get("segment_ids") is not None:
        positions, mask, sources = shared_prompt_layout(jnp.asarray(batch["segment_ids"]))
        return model.hidden_states(ids, positions=positions, mask=mask), sources
    mask = batch.get("attention_mask")
    return model.hidden_states(ids, None if mask is None else jnp.asarray(mask)), None


def _predicting(hidden: jax.Array, sources: jax.Array | None,
                batch: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
    """The hidden states that predict each target and the targets, aligned [B, T', D] / [B, T']:
    `targets` as given (T' = T); `labels` (or the ids) from position 1 on (T' = T - 1), each
    predicted by the token before it, or by the prompt's last token for a completion's first."""
    ids = jnp.asarray(batch["input_ids"])
    if sources is None and "targets" in batch:
        return hidden, jnp.asarray(batch["targets"])
    labels = jnp.asarray(batch["labels"]) if "labels" in batch else ids
    if sources is None:
        return hidden[:, :-1], labels[:, 1:]
    return jnp.take_along_axis(hidden, sources[:, 1:, None], axis=1), labels[:, 1:]


def predictions(model: Any, batch: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
    """Logits (fp32) and the token each one predicts (-100: none), aligned [B, T', V] / [B, T']."""
    hidden, targets = _predicting(*_hidden(model, batch), batch)
    return model.output_logits(hidden).astype(jnp.float32), targets


def _token_nll(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token negative log-likelihood (0 where not kept) and the keep mask."""
    keep = targets != IGNORE_INDEX
    safe = jnp.where(keep, targets, 0).astype(jnp.int32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
    return jnp.where(keep, logz - picked, 0.0), keep


def _next_token_loss(model: Any, batch: Mapping[str, Any]) -> tuple[jax.Array, dict[str, jax.Array]]:
    nll, keep = _token_nll(*predictions(model, batch))
    return nll.sum() / jnp.maximum(keep.sum(), 1), {}


def _token_nll_sum(model: Any, batch: Mapping[str, Any]) -> tuple[jax.Array, dict[str, jax.Array]]:
    nll, keep = _token_nll(*predictions(model, batch))
    return nll.sum(), {"tokens": keep.sum()}


def _sequence_logprobs(model: Any, batch: Mapping[str, Any]) -> tuple[jax.Array, dict[str, jax.Array]]:
    nll, _ = _token_nll(*predictions(model, batch))
    return -nll.sum(-1), {}


def _token_logprobs(model: Any, batch: Mapping[str, Any]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """log p(token) of every predicted token, 0 where nothing is predicted: [B, T] for
    `targets`, [B, T - 1] for `labels` (or the ids)."""
    nll, _ = _token_nll(*predictions(model, batch))
    return -nll, {}


def _token_scores(model: Any, batch: Mapping[str, Any]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The score head at every position, [B, T] fp32 (each token as it sees the batch's layout)."""
    hidden, _ = _hidden(model, batch)
    return score_of(model, hidden).astype(jnp.float32), {}


def _logprobs_and_scores(model: Any, batch: Mapping[str, Any]) -> tuple[tuple[jax.Array, jax.Array], dict]:
    """(token_logprobs, token_scores) of one forward pass through the trunk."""
    hidden, sources = _hidden(model, batch)
    scores = score_of(model, hidden).astype(jnp.float32)
    predicting, targets = _predicting(hidden, sources, batch)
    nll, _ = _token_nll(model.output_logits(predicting).astype(jnp.float32), targets)
    return (-nll, scores), {}


class JitWhenConcrete:
    """An objective that is traced as is inside a caller's jit (the engine's step, where the
    batch holds tracers) and runs through `nnx.jit` when called on concrete arrays, compiled
    once per model structure and batch shape: an un-jitted NNX forward per evaluation batch
    would dispatch every operation from Python."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.__name__, self.__doc__ = fn.__name__.lstrip("_"), fn.__doc__
        self._jitted: Any = None

    def __call__(self, model: Any, batch: Mapping[str, Any]) -> tuple[Any, Any]:
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(dict(batch))):
            return self.fn(model, batch)
        if self._jitted is None:
            self._jitted = nnx.jit(self.fn)
        arrays = {k: v if isinstance(v, jax.Array) else np.asarray(v) for k, v in batch.items()}
        return self._jitted(model, arrays)


next_token_loss = JitWhenConcrete(_next_token_loss)
token_nll_sum = JitWhenConcrete(_token_nll_sum)
sequence_logprobs = JitWhenConcrete(_sequence_logprobs)
token_logprobs = JitWhenConcrete(_token_logprobs)
token_scores = JitWhenConcrete(_token_scores)
logprobs_and_scores = JitWhenConcrete(_logprobs_and_scores)
