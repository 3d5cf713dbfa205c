"""The jax half of rung-lora's `sft` trainer: its objective and held-out evaluator.

rung-lora shapes the data (numpy batches, labels -100 where no loss is taken) whatever the
framework; `rung_lora.trainer.framework_parts` takes `sft_objective` and `Evaluator` from here
when the backend is `jax`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp

from rung.errors import ConfigError
from rung_jax.objectives import IGNORE_INDEX, sft_loss as sft_objective, token_cross_entropy

__all__ = ["Evaluator", "sft_objective"]


class Evaluator:
    """Held-out loss (token-weighted), with the constructor of `rung_lora.torch_ops.Evaluator`."""

    def __init__(self, rows: Sequence[tuple[list[int], list[int]]], batch_size: int, pad_id: int,
                 multiple: int = 8, max_batches: int | None = None, task: Any = None) -> None:
        if task is not None:
            raise ConfigError("trainer.eval_metric generates answers with the torch backend only; "
                              "on jax, leave it out (held-out loss is still measured)")
        self.rows, self.batch_size, self.pad_id, self.multiple = rows, batch_size, pad_id, multiple
        self.max_batches = max_batches

    def __call__(self, model: Any) -> dict[str, float]:
        from rung_lora.data import collate

        if not self.rows:
            return {}
        total, count = 0.0, 0
        starts = list(range(0, len(self.rows), self.batch_size))[: self.max_batches or None]
        for start in starts:
            batch = collate(self.rows[start: start + self.batch_size], self.pad_id, self.multiple)
            labels = jnp.asarray(batch["labels"])
            logits = model(jnp.asarray(batch["input_ids"]), None)
            total += float(token_cross_entropy(logits[:, :-1], labels[:, 1:], reduction="sum"))
            count += int((labels[:, 1:] != IGNORE_INDEX).sum())
        return {"eval_loss": total / max(count, 1)}
