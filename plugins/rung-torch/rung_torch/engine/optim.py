"""AdamW over the trainable parameters, and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rung.errors import RungError
from rung.training import warmup_cosine


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters only (a LoRA trainer freezes the rest), decayed when >= 2-D.

    Matrices (linear and embedding weights) decay; vectors (norm weights, biases) do not.
    A tied weight appears once.
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # named_parameters skips duplicates (tied weights)
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise RungError("the model has no trainable parameters (every parameter has requires_grad=False)")
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, options: Any, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with the fused kernel (CUDA, and CPU since torch 2.4: ~3.5x faster than the
    default per-tensor loop on a 17M model), else the multi-tensor (foreach) one."""
    groups = param_groups(model, options.weight_decay)
    kwargs: dict[str, Any] = dict(lr=options.learning_rate, betas=tuple(options.betas), eps=1e-8)
    if device.type in ("cuda", "cpu"):
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):  # an old torch, or a dtype fused lacks
            pass
    return torch.optim.AdamW(groups, foreach=True, **kwargs)


class CosineSchedule:
    """Linear warm-up to the peak over `warmup_steps`, then cosine down to `min_lr_ratio * peak`.

    `lr(step)` is the rate of optimizer step `step` (0-based): step 0 of a warm-up of W steps
    uses peak/W, step W-1 the peak, and the last step `min_lr_ratio * peak`.
    """

    def __init__(self, peak: float, steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.1) -> None:
        self.peak, self.steps, self.warmup, self.min_ratio = peak, steps, warmup_steps, min_lr_ratio
        self.last_step = -1  # the last step whose rate was applied

    @classmethod
    def from_options(cls, options: Any) -> "CosineSchedule":
        return cls(options.learning_rate, options.steps, options.warmup_steps, options.min_lr_ratio)

    def lr(self, step: int) -> float:
        return warmup_cosine(step, self.peak, self.steps, self.warmup, self.min_ratio)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's rate for `step`; returns it."""
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        self.last_step = step
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {"peak": self.peak, "steps": self.steps, "warmup_steps": self.warmup,
                "min_lr_ratio": self.min_ratio, "last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The options of the resumed run decide the shape (a user may extend `steps`);
        # only the position comes from the checkpoint.
        self.last_step = int(state.get("last_step", -1))
