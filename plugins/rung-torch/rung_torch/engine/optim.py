"""The engine's optimizer: AdamW over the trainable parameters, or Muon for the hidden
matrices with AdamW for the rest (`options.optimizer`; the learning rate of each step comes
from the core's loop)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rung.errors import RungError

OPTIMIZERS = ("adamw", "muon")
DEFAULT_MUON_LR = 0.02
DEFAULT_MUON_MOMENTUM = 0.95


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


def hidden_matrices(model: nn.Module) -> set[int]:
    """ids of the trainable weights Muon takes: 2-D weights of linear layers inside the network.

    Left out (AdamW's): embeddings (rows are looked up, not multiplied), the output head and
    any score head (their rows are read one per token or label, and tied heads are the
    embedding), and every vector. A weight shared with an embedding is left out too.
    """
    heads: set[int] = set()
    inner = getattr(model, "module", model)  # DDP
    get_output = getattr(inner, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    for module in (output, getattr(inner, "lm_head", None), getattr(inner, "score", None)):
        if isinstance(module, nn.Module):
            heads.update(id(p) for p in module.parameters())
    for module in inner.modules():
        if isinstance(module, nn.Embedding):
            heads.update(id(p) for p in module.parameters())
    chosen = set()
    for module in inner.modules():
        if isinstance(module, nn.Linear) and module.weight.requires_grad and id(module.weight) not in heads:
            chosen.add(id(module.weight))
    return chosen


def muon_groups(model: nn.Module, options: Any) -> list[dict[str, Any]]:
    """`param_groups`, with the hidden matrices moved into one Muon group (decayed as AdamW's matrices)."""
    matrices = hidden_matrices(model)
    muon = [p for _, p in model.named_parameters() if id(p) in matrices]
    if not muon:
        raise RungError("trainer.optimizer: muon found no trainable hidden matrix (linear layer) in the model; "
                        "use adamw")
    if any(hasattr(p, "full_tensor") for p in muon):  # FSDP2 shards: Newton-Schulz needs whole matrices
        raise RungError("trainer.optimizer: muon does not run on FSDP-sharded weights; use adamw or DDP")
    groups = []
    for group in param_groups(model, options.weight_decay):
        rest = [p for p in group["params"] if id(p) not in matrices]
        if rest:
            groups.append({**group, "params": rest, "muon": False})
    muon_lr = float(getattr(options, "muon_lr", None) or DEFAULT_MUON_LR)
    groups.append({"params": muon, "muon": True, "weight_decay": options.weight_decay,
                   "lr_ratio": muon_lr / options.learning_rate,
                   "momentum": float(getattr(options, "muon_momentum", None) or DEFAULT_MUON_MOMENTUM)})
    return groups


def build_optimizer(model: nn.Module, options: Any, device: torch.device) -> torch.optim.Optimizer:
    """`options.optimizer` (default adamw): AdamW, or Muon with AdamW (`rung_torch.engine.muon`)."""
    name = getattr(options, "optimizer", None) or "adamw"
    if name == "muon":
        from rung_torch.engine.muon import MuonWithAdamW

        return MuonWithAdamW(muon_groups(model, options), lr=options.learning_rate, betas=tuple(options.betas))
    if name != "adamw":
        raise RungError(f"trainer.optimizer: '{name}' is not one of {', '.join(OPTIMIZERS)}")
    return build_adamw(model, options, device)


def build_adamw(model: nn.Module, options: Any, device: torch.device) -> torch.optim.Optimizer:
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
