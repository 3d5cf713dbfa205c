"""AdamW over the trainable parameters (the learning rate of each step comes from the core's loop)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rung.errors import RungError


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
