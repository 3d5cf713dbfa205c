"""One prompt and its completions in one row, the prompt computed once (`segment_ids`).

Layout of a packed row (see `rung.objectives`): the prompt (segment 0), each completion
after it (segments 1..k), then padding (-1). The framework objectives give each completion
the log-probabilities it would have after the prompt alone. `labels` are the ids on
completion tokens and -100 elsewhere, so a loss covers completion tokens only. The
`separate` layout (one row per prompt + completion, as TRL runs them) is kept for checks and
for comparison: both give the same per-completion sums (`completion_logprobs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rung.objectives import IGNORE_INDEX


@dataclass
class Packed:
    """Rows of token ids with their segments and labels, numpy [B, T]."""

    input_ids: np.ndarray
    segment_ids: np.ndarray
    labels: np.ndarray
    truncated: int = 0  # how many prompts or completions were cut to fit

    def batch(self) -> dict[str, np.ndarray]:
        return {"input_ids": self.input_ids, "segment_ids": self.segment_ids, "labels": self.labels}

    @property
    def prediction_segments(self) -> np.ndarray:
        """Segments aligned with a `labels`-convention objective's output [B, T - 1]: which
        completion each predicted token belongs to (0 or -1: none)."""
        return np.where(self.labels[:, 1:] != IGNORE_INDEX, self.segment_ids[:, 1:], -1)


def fit(prompt: Sequence[int], completions: Sequence[Sequence[int]], length: int,
        max_completion: int | None = None) -> tuple[list[int], list[list[int]], int]:
    """Cut completions to `max_completion` (from their end), then the prompt from its start,
    so prompt + all completions fit `length`; how many pieces were cut. A prompt keeps at
    least one token; completions are cut further (evenly from the longest) if still too long."""
    cut = 0
    outs = [list(c) for c in completions]
    if max_completion is not None:
        for i, c in enumerate(outs):
            if len(c) > max_completion:
                outs[i], cut = c[:max_completion], cut + 1
    room = length - sum(len(c) for c in outs)
    kept = list(prompt)
    if len(kept) > max(room, 1):
        kept, cut = kept[len(kept) - max(room, 1):], cut + 1
    while len(kept) + sum(len(c) for c in outs) > length:
        longest = max(range(len(outs)), key=lambda i: len(outs[i]))
        if len(outs[longest]) <= 1:
            break
        outs[longest] = outs[longest][:-1]
        cut += 1
    return kept, outs, cut


def pack_shared(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[Sequence[int]]],
                length: int, pad_id: int, max_completion: int | None = None) -> Packed:
    """Row i: prompts[i], then completions[i][0], completions[i][1], ... padded to `length`."""
    B = len(prompts)
    ids = np.full((B, length), pad_id, dtype=np.int64)
    seg = np.full((B, length), -1, dtype=np.int64)
    labels = np.full((B, length), IGNORE_INDEX, dtype=np.int64)
    truncated = 0
    for row, (prompt, outs) in enumerate(zip(prompts, completions)):
        prompt, outs, cut = fit(prompt, outs, length, max_completion)
        truncated += cut
        at = len(prompt)
        ids[row, :at], seg[row, :at] = prompt, 0
        for k, out in enumerate(outs, start=1):
            end = at + len(out)
            ids[row, at:end], seg[row, at:end], labels[row, at:end] = out, k, out
            at = end
    return Packed(ids, seg, labels, truncated)


def pack_separate(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[Sequence[int]]],
                  length: int, pad_id: int, max_completion: int | None = None) -> Packed:
    """One row per (prompt, completion), completion-major within a prompt: row i * k + j is
    prompts[i] + completions[i][j]. `segment_ids` are not set (plain causal rows); the
    returned `segment_ids` mark the completion (1) for `completion_logprobs` only."""
    rows_p, rows_c = [], []
    for prompt, outs in zip(prompts, completions):
        for out in outs:
            rows_p.append(prompt)
            rows_c.append([out])
    packed = pack_shared(rows_p, rows_c, length, pad_id, max_completion)
    return packed


def completion_logprobs(token_logprobs: np.ndarray, packed: Packed, k: int) -> np.ndarray:
    """Per-row sum of a `token_logprobs` output over completion `k` (numpy; for checks)."""
    return np.where(packed.prediction_segments == k, np.asarray(token_logprobs), 0.0).sum(-1)
