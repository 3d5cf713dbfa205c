"""Optimisation options every trainer shares and every engine understands."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from rung.options import Options


class TrainingOptions(Options):
    """How long and how fast to train, and when to log, evaluate and checkpoint."""

    steps: int = Field(100, ge=1, description="optimizer steps to train")
    batch_size: int = Field(8, ge=1, description="sequences per micro-batch, per process")
    grad_accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    learning_rate: float = Field(3e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr as a fraction of the peak")
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = Field(1.0, gt=0, description="max gradient norm; null: no clipping")
    log_every: int = Field(10, ge=1)
    eval_every: int | None = Field(None, ge=1, description="steps between evaluations")
    eval_tasks: list[str | dict[str, Any]] = Field(
        default_factory=list,
        description="evaluation tasks run at each evaluation: task spec files or inline specs (rung.evaluation)",
    )
    save_every: int | None = Field(None, ge=1, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    resume: Literal["auto", "never"] | str = Field(
        "auto", description="'auto': continue from the latest checkpoint; 'never'; or a path"
    )

    def learning_rate_at(self, step: int) -> float:
        """The rate of optimizer step `step` (0-based): what the loop logs and the engine applies."""
        return warmup_cosine(step, self.learning_rate, self.steps, self.warmup_steps, self.min_lr_ratio)


def warmup_cosine(step: int, peak: float, steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.1) -> float:
    """The learning rate of optimizer step `step` (0-based) under every engine's schedule.

    Linear warm-up to `peak` over `warmup_steps` (step 0 uses peak/W, step W-1 the peak), then
    cosine down to `min_lr_ratio * peak` at the last step.
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    decay_steps = steps - warmup_steps - 1
    if decay_steps <= 0:
        return peak
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    floor = peak * min_lr_ratio
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
