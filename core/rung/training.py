"""Optimisation options every trainer shares and every engine understands."""

from __future__ import annotations

from typing import Literal

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
    save_every: int | None = Field(None, ge=1, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    resume: Literal["auto", "never"] | str = Field(
        "auto", description="'auto': continue from the latest checkpoint; 'never'; or a path"
    )
