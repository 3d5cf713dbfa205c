"""What objectives need from any torch causal LM: its logits, whoever built it."""

from __future__ import annotations

from typing import Any

import torch


def forward_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (batch, seq, vocab) of `input_ids` for a rung model or a transformers model.

    rung's `Transformer` returns logits; transformers models (also wrapped by peft or DDP)
    return an output object with `.logits`. `attention_mask` (batch, seq): 1 for real tokens.
    """
    if attention_mask is None:
        out = model(input_ids)
    else:
        out = model(input_ids, attention_mask=attention_mask)
    return out if isinstance(out, torch.Tensor) else out.logits


class eval_mode:
    """`model` in eval mode inside the block, then in the mode it was in (generation and
    sampling mid-training, where the engine's model is in train mode)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.was_training = self.model.training
        if self.was_training:
            self.model.eval()

    def __exit__(self, *exc: Any) -> None:
        if self.was_training:
            self.model.train(True)


def unwrap(model: Any) -> Any:
    """The rung/transformers model under DDP (`.module`) or torch.compile (`._orig_mod`) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def weights_changed(model: Any) -> None:
    """Tell generation that `model`'s weights changed where torch keeps no record: a fused
    optimizer step or peft's merge (through `weight.data`) leave the tensors' version counters
    as they were, so `rung_torch.generate` would keep decoding with its flattened copy of the
    old weights (`FastForward`, cached on the model)."""
    from rung_torch.transformers_view import built_view

    target = unwrap(model)
    # A transformers model decoded through rung's view of it: the copies hang on the view.
    for decoded in (target, built_view(target)):
        if decoded is not None:
            decoded.__dict__.pop("_rung_fast_forward", None)


def load_adapter_option(backend: Any, adapter: str) -> None:
    """Apply a backend's `adapter:` option: a PEFT adapter merged into `backend.model`."""
    from pathlib import Path

    from rung.errors import ConfigError
    from rung_torch.adapters import PeftAdapters

    if not Path(adapter, "adapter_config.json").is_file():
        raise ConfigError(f"backend.adapter: '{adapter}' is not a PEFT adapter directory (no adapter_config.json)")
    PeftAdapters(backend).load_adapter(adapter, merge=True)
