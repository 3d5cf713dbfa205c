"""rung-torch's objectives, by the names `rung.objectives` defines.

Each is `objective(model, batch) -> (value, metrics)` for any torch causal LM (rung's
`Transformer`, a transformers model, either wrapped by peft, DDP or torch.compile). Batches
are right-padded, so causal attention never lets a real token see a pad: the attention mask
is not passed, which keeps the fast causal attention kernels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rung.objectives import IGNORE_INDEX
from rung_torch.modeling import forward_logits


def _tensor(value: Any, device: torch.device) -> torch.Tensor:
    tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
    return tensor.to(device)


def _device(model: Any) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def predictions(model: Any, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (fp32) and the token each one predicts (-100: none), aligned [B, T', V] / [B, T']."""
    ids = _tensor(batch["input_ids"], _device(model))
    logits = forward_logits(model, ids)
    if "targets" in batch:
        return logits.float(), _tensor(batch["targets"], ids.device).long()
    labels = _tensor(batch["labels"], ids.device).long() if "labels" in batch else ids
    return logits[:, :-1].float(), labels[:, 1:]


def next_token_loss(model: Any, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    logits, targets = predictions(model, batch)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)
    return loss, {}


def token_nll_sum(model: Any, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    logits, targets = predictions(model, batch)
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return total, {"tokens": int((targets != IGNORE_INDEX).sum())}


def sequence_logprobs(model: Any, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    logits, targets = predictions(model, batch)
    keep = targets != IGNORE_INDEX
    picked = torch.gather(logits.log_softmax(-1), -1, targets.clamp(min=0)[..., None])[..., 0]
    return (picked * keep).sum(-1), {}
