"""rung-jax's objectives, by the names `rung.objectives` defines.

Each is a pure jax function `objective(model, batch) -> (value, metrics)` of an NNX model and
a dict of arrays; the engine traces it inside its jitted step, evaluators call it jitted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

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


def next_token_loss(model: Any, batch: Mapping[str, Any]) -> tuple[jax.Array, dict[str, jax.Array]]:
    nll, keep = _token_nll(*predictions(model, batch))
    return nll.sum() / jnp.maximum(keep.sum(), 1), {}


def token_nll_sum(model: Any, batch: Mapping[str, Any]) -> tuple[jax.Array, dict[str, jax.Array]]:
    nll, keep = _token_nll(*predictions(model, batch))
    return nll.sum(), {"tokens": keep.sum()}


def sequence_logprobs(model: Any, batch: Mapping[str, Any]) -> tuple[jax.Array, dict[str, jax.Array]]:
    nll, _ = _token_nll(*predictions(model, batch))
    return -nll.sum(-1), {}
