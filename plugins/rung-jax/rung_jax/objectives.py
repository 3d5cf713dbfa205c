"""Objectives for the jax engine: pure functions `objective(model, batch) -> (loss, metrics)`.

- `next_token_loss`: pretraining on packed windows whose `labels` are already shifted
  (rung-pretrain's reader: `labels[:, t]` is the token after `input_ids[:, t]`).
- `sft_loss`: fine-tuning with Hugging Face's label convention: `labels` is aligned with
  `input_ids` (-100 where no loss is taken) and shifted here, as `rung_lora`'s torch objective does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100


def token_cross_entropy(logits: jax.Array, targets: jax.Array, reduction: str = "mean") -> jax.Array:
    """Cross-entropy in fp32 of logits [..., V] against int targets [...], skipping -100."""
    logits = logits.astype(jnp.float32)
    keep = targets != IGNORE_INDEX
    safe = jnp.where(keep, targets, 0)
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, safe[..., None].astype(jnp.int32), axis=-1)[..., 0]
    nll = jnp.where(keep, logz - picked, 0.0)
    total = nll.sum()
    if reduction == "sum":
        return total
    return total / jnp.maximum(keep.sum(), 1)


def _logits(model: Any, batch: Mapping[str, Any]) -> jax.Array:
    mask = batch.get("attention_mask")
    return model(jnp.asarray(batch["input_ids"]), None if mask is None else jnp.asarray(mask))


def next_token_loss(model: Any, batch: Mapping[str, Any]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean next-token cross-entropy; `labels` already shifted (or, without labels, the ids shifted)."""
    ids = jnp.asarray(batch["input_ids"])
    logits = _logits(model, batch)
    if "labels" in batch:
        return token_cross_entropy(logits, jnp.asarray(batch["labels"])), {}
    return token_cross_entropy(logits[:, :-1], ids[:, 1:]), {}


def sft_loss(model: Any, batch: Mapping[str, Any]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Masked next-token cross-entropy: position t predicts labels[t + 1] where it is not -100."""
    labels = jnp.asarray(batch["labels"])
    logits = _logits(model, batch)
    return token_cross_entropy(logits[:, :-1], labels[:, 1:]), {}
