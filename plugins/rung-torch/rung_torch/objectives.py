"""rung-torch's objectives, by the names `rung.objectives` defines.

Each is `objective(model, batch) -> (value, metrics)` for any torch causal LM (rung's
`Transformer`, a transformers model, either wrapped by peft, DDP or torch.compile). Batches
are right-padded, so causal attention never lets a real token see a pad: the attention mask
is not passed, which keeps the fast causal attention kernels. A batch with `segment_ids`
(one prompt shared by several completions) gets the shared-prompt mask and positions of
`rung.objectives.shared_prompt_layout`, built here in torch ops. `token_scores` and
`logprobs_and_scores` read the model's score head (`rung_torch.scoring`) over the final normed
hidden states, in the same call through the model's wrappers as the logits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rung.errors import RungError
from rung.objectives import IGNORE_INDEX
from rung_torch.modeling import forward_logits
from rung_torch.scoring import is_rung_model, score_head, score_owner


def _tensor(value: Any, device: torch.device) -> torch.Tensor:
    tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
    return tensor.to(device)


def _device(model: Any) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def shared_prompt_layout(segment_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions [B, T], additive attention mask [B, 1, T, T] (0 or the dtype's min: what both
    transformers' sdpa and eager attention and rung's model take) and sources [B, T]."""
    seg = segment_ids.long()
    T = seg.shape[-1]
    prompt = seg == 0
    prompt_len = prompt.sum(-1, keepdim=True)
    same = seg[:, :, None] == seg[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=seg.device).tril()[None]
    eye = torch.eye(T, dtype=torch.bool, device=seg.device)[None]
    allowed = (causal & ((prompt[:, None, :] & (seg[:, :, None] >= 0)) | same)) | eye
    within = (same & causal).sum(-1) - 1
    positions = torch.where(seg > 0, prompt_len + within, within)
    index = torch.arange(T, device=seg.device)[None, :]
    first = (seg > 0) & (within == 0)
    sources = torch.where(first, prompt_len - 1, index - 1).clamp(min=0)
    additive = torch.zeros(allowed.shape, dtype=torch.float32, device=seg.device)
    additive = additive.masked_fill(~allowed, torch.finfo(torch.float32).min)[:, None]
    return positions, additive, sources


def _segment_logits(model: Any, ids: torch.Tensor, segment_ids: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a shared-prompt batch, re-indexed so that entry t - 1 predicts token t.
    rung's own model attends block by block (`rung_torch.shared_attention`: each completion
    on its prompt and itself, not the whole row); others get the dense mask."""
    seg = _tensor(segment_ids, ids.device)
    positions, additive, sources = shared_prompt_layout(seg)
    mask = None
    if is_rung_model(score_owner(model)) and getattr(model, "_orig_mod", None) is None:
        from rung_torch.shared_attention import SharedPromptAttention

        mask = SharedPromptAttention.of(seg)
    out = model(ids, attention_mask=additive if mask is None else mask, position_ids=positions)
    logits = out if isinstance(out, torch.Tensor) else out.logits
    picked = torch.gather(logits, 1, sources[:, 1:, None].expand(-1, -1, logits.shape[-1]))
    return picked, sources


def predictions(model: Any, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (fp32) and the token each one predicts (-100: none), aligned [B, T', V] / [B, T']."""
    ids = _tensor(batch["input_ids"], _device(model))
    if batch.get("segment_ids") is not None:
        return _shared_predictions(model, ids, batch)
    return _aligned(forward_logits(model, ids), ids, batch, shared=False)


def _shared_predictions(model: Any, ids: torch.Tensor, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """`predictions` of a shared-prompt batch, computed over the columns up to the last one any
    row uses (rows are as long as the most they can hold: padding past every row's end is not
    run through the model); the rest are zero logits predicting nothing."""
    seg = _tensor(batch["segment_ids"], ids.device)
    labels = _tensor(batch["labels"], ids.device).long() if "labels" in batch else ids
    T = ids.shape[1]
    used = ((seg >= 0) | (labels != IGNORE_INDEX)).any(0).nonzero()
    width = min(max(int(used.max()) + 1 if len(used) else 0, 2), T)
    logits, _ = _segment_logits(model, ids[:, :width], seg[:, :width])
    logits, targets = logits.float(), labels[:, 1:width]
    if width < T:
        logits = F.pad(logits, (0, 0, 0, T - width))
        targets = F.pad(targets, (0, T - width), value=IGNORE_INDEX)
    return logits, targets


def _aligned(logits: torch.Tensor, ids: torch.Tensor, batch: Mapping[str, Any],
             shared: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`logits` and the tokens they predict, by the batch's convention (`shared`: logits already
    re-indexed so that entry t - 1 predicts token t)."""
    if "targets" in batch and not shared:
        return logits.float(), _tensor(batch["targets"], ids.device).long()
    labels = _tensor(batch["labels"], ids.device).long() if "labels" in batch else ids
    return (logits if shared else logits[:, :-1]).float(), labels[:, 1:]


def _logits_and_scores(model: Any, ids: torch.Tensor, want_logits: bool, **kwargs: Any) -> tuple[Any, torch.Tensor]:
    """One forward pass through `model` and its wrappers (DDP, FSDP, peft: their hooks run):
    the logits (None unless `want_logits`) and the score head [B, T] in fp32, both from the
    final normed hidden states."""
    owner = score_owner(model)
    head = score_head(model)
    if head is None:
        raise RungError("the model has no score head: add one first (backend.score_heads().add_score_head())")
    if is_rung_model(owner):
        out = model(ids, output="logits_and_scores" if want_logits else "scores", **kwargs)
        logits, scores = out if want_logits else (None, out)
        return logits, scores.float()
    if not want_logits and _takes_logits_to_keep(owner):
        kwargs["logits_to_keep"] = 1  # the vocabulary projection of one position, not of every one
    out = model(ids, output_hidden_states=True, **kwargs)
    hidden = out.hidden_states[-1]  # after the final norm, as transformers' classifiers read it
    dtype = next(head.parameters()).dtype
    return (out.logits if want_logits else None), head(hidden.to(dtype))[..., 0].float()


def _takes_logits_to_keep(model: Any) -> bool:
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _scored(model: Any, batch: Mapping[str, Any], want_logits: bool) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """(logits re-indexed for `segment_ids` as `predictions` has them, or None; scores [B, T]
    aligned with the input positions; input_ids)."""
    ids = _tensor(batch["input_ids"], _device(model))
    if batch.get("segment_ids") is None:
        logits, scores = _logits_and_scores(model, ids, want_logits)
        return logits, scores, ids
    positions, additive, sources = shared_prompt_layout(_tensor(batch["segment_ids"], ids.device))
    logits, scores = _logits_and_scores(model, ids, want_logits, attention_mask=additive, position_ids=positions)
    if logits is not None:
        logits = torch.gather(logits, 1, sources[:, 1:, None].expand(-1, -1, logits.shape[-1]))
    return logits, scores, ids


def next_token_loss(model: Any, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    logits, targets = predictions(model, batch)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)
    return loss, {}


def token_nll_sum(model: Any, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    logits, targets = predictions(model, batch)
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return total, {"tokens": int((targets != IGNORE_INDEX).sum())}


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    keep = targets != IGNORE_INDEX
    picked = torch.gather(logits, -1, targets.clamp(min=0)[..., None])[..., 0]
    return (picked - torch.logsumexp(logits, dim=-1)) * keep


def sequence_logprobs(model: Any, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    return _token_logprobs(*predictions(model, batch)).sum(-1), {}


def token_logprobs(model: Any, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    return _token_logprobs(*predictions(model, batch)), {}


def token_scores(model: Any, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """The score head at every input position, [B, T] fp32 (with `segment_ids`: each position
    sees what it sees in `token_logprobs`, so a completion's scores equal those of
    prompt + completion alone)."""
    _, scores, _ = _scored(model, batch, want_logits=False)
    return scores, {}


def logprobs_and_scores(model: Any, batch: Mapping[str, Any]) -> tuple[tuple[torch.Tensor, torch.Tensor], dict]:
    """(token_logprobs, token_scores) of one forward pass: the hidden states once, then the
    language-model head and the score head (PPO's policy and value)."""
    logits, scores, ids = _scored(model, batch, want_logits=True)
    shared = batch.get("segment_ids") is not None
    return (_token_logprobs(*_aligned(logits, ids, batch, shared=shared)), scores), {}
