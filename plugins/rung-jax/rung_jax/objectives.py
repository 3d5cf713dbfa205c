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


def predictions(model: Any, batch: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
    """Logits (fp32) and the token each one predicts (-100: none), aligned [B, T', V] / [B, T']."""
    ids = jnp.asarray(batch["input_ids"])
    mask = batch.get("attention_mask")
    logits = model(ids, None if mask is None else jnp.asarray(mask)).astype(jnp.float32)
    if "targets" in batch:
        return logits, jnp.asarray(batch["targets"])
    labels = jnp.asarray(batch["labels"]) if "labels" in batch else ids
    return logits[:, :-1], labels[:, 1:]


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
