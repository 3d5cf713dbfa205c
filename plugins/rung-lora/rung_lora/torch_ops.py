"""The torch half of sft/lora: the masked next-token objective, held-out loss, greedy decoding."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rung_lora.data import IGNORE_INDEX, collate


def forward_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """rung-torch's `forward_logits` (rung and HF models alike), or the same thing without it."""
    try:
        from rung_torch.modeling import forward_logits as rung_forward
    except ImportError:
        out = model(input_ids=input_ids, attention_mask=attention_mask)
        return out.logits if hasattr(out, "logits") else out
    return rung_forward(model, input_ids, attention_mask)


def _tensor(value: Any, device: torch.device | None = None) -> torch.Tensor:
    tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    return tensor.to(device) if device is not None else tensor


def masked_token_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of each position's prediction of the next token, where the label is kept."""
    targets = labels[:, 1:].reshape(-1)
    keep = targets != IGNORE_INDEX
    predicted = logits[:, :-1].reshape(-1, logits.shape[-1])[keep].float()
    return F.cross_entropy(predicted, targets[keep], reduction=reduction)


def sft_objective(model: Any, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Masked next-token cross-entropy: loss only where `labels` is not -100.

    Batches are right-padded, so causal attention never lets a real token see a pad: the
    attention mask is not needed for the loss, and leaving it out keeps the fast causal
    attention kernels.
    """
    input_ids = _tensor(batch["input_ids"])
    labels = _tensor(batch["labels"], input_ids.device)
    logits = forward_logits(model, input_ids)
    return masked_token_loss(logits, labels), {}


def model_device(model: Any) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


class Evaluator:
    """Held-out loss (token-weighted) and, optionally, a task metric on greedy generations."""

    def __init__(self, rows: Sequence[tuple[list[int], list[int]]], batch_size: int, pad_id: int,
                 multiple: int = 8, max_batches: int | None = None,
                 task: "TaskMetric | None" = None) -> None:
        self.rows, self.batch_size, self.pad_id, self.multiple = rows, batch_size, pad_id, multiple
        self.max_batches = max_batches
        self.task = task

    @torch.no_grad()
    def loss(self, model: Any) -> float:
        device = model_device(model)
        total, count = 0.0, 0
        starts = range(0, len(self.rows), self.batch_size)
        if self.max_batches:
            starts = list(starts)[: self.max_batches]
        for start in starts:
            batch = collate(self.rows[start: start + self.batch_size], self.pad_id, self.multiple)
            input_ids = _tensor(batch["input_ids"], device)
            labels = _tensor(batch["labels"], device)
            logits = forward_logits(model, input_ids)
            total += float(masked_token_loss(logits, labels, reduction="sum"))
            count += int((labels[:, 1:] != IGNORE_INDEX).sum())
        return total / max(count, 1)

    def __call__(self, model: Any) -> dict[str, float]:
        was_training = getattr(model, "training", False)
        model.eval()
        try:
            metrics: dict[str, float] = {}
            if self.rows:
                metrics["eval_loss"] = self.loss(model)
            if self.task is not None:
                metrics.update(self.task(model))
            return metrics
        finally:
            model.train(was_training)


class TaskMetric:
    """Generate greedily for held-out prompts and score each completion against its reference."""

    def __init__(self, name: str, score: Callable[..., float], prompts: Sequence[list[int]],
                 references: Sequence[str], tokenizer: Any, stop: Sequence[str], *,
                 max_new_tokens: int = 32, max_length: int | None = None, batch_size: int = 32) -> None:
        self.name, self.score = name, score
        self.prompts, self.references = list(prompts), list(references)
        self.tokenizer, self.stop = tokenizer, tuple(stop)
        self.max_new_tokens, self.max_length, self.batch_size = max_new_tokens, max_length, batch_size
        self.last_completions: list[str] = []

    def __call__(self, model: Any) -> dict[str, float]:
        completions = greedy_generate(model, self.tokenizer, self.prompts, self.max_new_tokens,
                                      stop=self.stop, max_length=self.max_length, batch_size=self.batch_size)
        self.last_completions = completions
        scores = [float(self.score(c, r)) for c, r in zip(completions, self.references)]
        return {f"eval_{self.name}": sum(scores) / max(len(scores), 1)}


def _cut(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


@torch.no_grad()
def greedy_generate(model: Any, tokenizer: Any, prompts: Sequence[list[int]], max_new_tokens: int, *,
                    stop: Sequence[str] = (), max_length: int | None = None, batch_size: int = 32) -> list[str]:
    """Greedy completions of token-id prompts; prompts of equal length share a batch (no padding)."""
    device = model_device(model)
    eos = getattr(tokenizer, "eos_id", None)
    keep = None if max_length is None else max(1, max_length - max_new_tokens)
    trimmed = [list(p[-keep:]) if keep else list(p) for p in prompts]
    by_length: dict[int, list[int]] = {}
    for index, prompt in enumerate(trimmed):
        by_length.setdefault(len(prompt), []).append(index)
    results: list[str] = [""] * len(prompts)
    for indices in by_length.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start: start + batch_size]
            x = torch.tensor([trimmed[i] for i in chunk], dtype=torch.long, device=device)
            width = x.shape[1]
            done = torch.zeros(len(chunk), dtype=torch.bool, device=device)
            for _ in range(max_new_tokens):
                nxt = forward_logits(model, x)[:, -1].argmax(-1)
                if eos is not None:
                    nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
                    done |= nxt == eos
                x = torch.cat([x, nxt[:, None]], dim=1)
                if stop:
                    for row in range(len(chunk)):
                        if not done[row] and _cut(tokenizer.decode(x[row, width:].tolist()), stop)[1]:
                            done[row] = True
                if bool(done.all()):
                    break
            for row, index in enumerate(chunk):
                new = x[row, width:].tolist()
                if eos is not None and eos in new:
                    new = new[: new.index(eos)]
                results[index] = _cut(tokenizer.decode(new), stop)[0]
    return results
