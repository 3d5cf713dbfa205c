"""Tokenized preference pairs as fixed-shape batches, and the resumable stream that serves them.

A batch holds `batch_size` pairs in one of two layouts (`rung_rlhf.packing`):

- `shared`: one row per pair, prompt (segment 0), chosen (1), rejected (2): the prompt is
  computed once;
- `separate`: two rows per pair (chosen, then rejected: rows 2i and 2i + 1), as TRL runs them.

Keys: `input_ids`, `labels` (ids on answer tokens, -100 elsewhere), `segment_ids` (shared
only), and what the preference losses read beside the objective's output:
`answer_segments` [R, T - 1] (1: a chosen token is predicted there, 2: a rejected one, else
-1), `answer_tokens` [P, 2] (how many tokens each answer has), `last_positions` [P, 2] (the
row position of each answer's last token, shared only: a reward model reads its score there),
`margin` [P] and, once known, `reference` [P, 2] (the reference log-probabilities). Every
batch of a run has the same shapes (rows of `max_length`), as the jax engine needs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rung.errors import RungError

from rung_rlhf.formatting import TokenizedPair
from rung_rlhf.packing import pack_separate, pack_shared

LAYOUTS = ("shared", "separate")


def rows_per_pair(layout: str) -> int:
    return 1 if layout == "shared" else 2


def collate_pairs(pairs: Sequence[TokenizedPair], layout: str, max_length: int, pad_id: int,
                  reference: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The batch of `pairs` in `layout` (see the module docstring); `reference` [P, 2] if given."""
    prompts = [p.prompt for p in pairs]
    answers = [[p.chosen, p.rejected] for p in pairs]
    if layout == "shared":
        packed = pack_shared(prompts, answers, max_length, pad_id)
        segments = packed.prediction_segments
        batch = packed.batch()
    elif layout == "separate":
        packed = pack_separate(prompts, answers, max_length, pad_id)
        which = np.tile(np.array([1, 2]), len(pairs))[:, None]  # row 2i: chosen, 2i + 1: rejected
        segments = np.where(packed.prediction_segments == 1, which, -1)
        batch = {"input_ids": packed.input_ids, "labels": packed.labels}
    else:
        raise RungError(f"unknown layout '{layout}'; use {' or '.join(LAYOUTS)}")
    per_row = (segments[:, :, None] == np.array([1, 2])[None, None, :]).sum(1)  # [R, 2]
    batch["answer_segments"] = segments.astype(np.int64)
    batch["answer_tokens"] = per_row.reshape(len(pairs), -1, 2).sum(1).astype(np.float32)
    if layout == "shared":
        seg = packed.segment_ids
        positions = np.arange(seg.shape[1])[None, :]
        batch["last_positions"] = np.stack(
            [np.where(seg == k, positions, -1).max(-1) for k in (1, 2)], axis=-1).astype(np.int64)
    batch["margin"] = np.array([p.margin for p in pairs], dtype=np.float32)
    if reference is not None:
        batch["reference"] = np.asarray(reference, dtype=np.float32).reshape(len(pairs), 2)
    return batch


def data_key(pairs: Sequence[TokenizedPair], layout: str, max_length: int) -> str:
    """A hash of the tokenized pairs and how they are laid out (what the reference depends on)."""
    digest = hashlib.sha256(json.dumps({"layout": layout, "max_length": max_length}).encode())
    for p in pairs:
        digest.update(json.dumps([p.prompt, p.chosen, p.rejected]).encode())
    return digest.hexdigest()


def fixed_batches(pairs: Sequence[TokenizedPair], batch_size: int, layout: str, max_length: int, pad_id: int,
                  reference: np.ndarray | None = None) -> list[dict[str, np.ndarray]]:
    """All `pairs`, in order, as batches of `batch_size` (the last one shorter): held-out
    evaluation and the reference pass."""
    out = []
    for start in range(0, len(pairs), batch_size):
        ref = None if reference is None else reference[start: start + batch_size]
        out.append(collate_pairs(pairs[start: start + batch_size], layout, max_length, pad_id, ref))
    return out


class PairBatches:
    """Endless shuffled epochs over the pairs; each rank takes its share of every global batch.

    The position (epoch, index) is the whole state, so a resumed run sees the same batches.
    """

    def __init__(self, pairs: Sequence[TokenizedPair], batch_size: int, layout: str, max_length: int, pad_id: int,
                 *, reference: np.ndarray | None = None, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1) -> None:
        if not pairs:
            raise RungError("no preference pairs to train on are left after formatting")
        self.pairs, self.reference = list(pairs), reference
        self.batch_size, self.layout, self.max_length, self.pad_id = batch_size, layout, max_length, pad_id
        self.seed, self.shuffle, self.rank, self.world_size = seed, shuffle, rank, world_size
        self.epoch, self.index = 0, 0
        self._order: np.ndarray | None = None

    def _take(self) -> int:
        if self._order is None:
            n = len(self.pairs)
            rng = np.random.default_rng([self.seed, self.epoch])
            self._order = rng.permutation(n) if self.shuffle else np.arange(n)
        item = int(self._order[self.index])
        self.index += 1
        if self.index >= len(self._order):
            self.epoch, self.index, self._order = self.epoch + 1, 0, None
        return item

    def __iter__(self) -> "PairBatches":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        global_batch = [self._take() for _ in range(self.batch_size * self.world_size)]
        mine = global_batch[self.rank * self.batch_size: (self.rank + 1) * self.batch_size]
        ref = None if self.reference is None else self.reference[mine]
        return collate_pairs([self.pairs[i] for i in mine], self.layout, self.max_length, self.pad_id, ref)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index, "pairs": len(self.pairs)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("pairs", len(self.pairs)) != len(self.pairs):
            raise RungError(f"the checkpoint's data had {state['pairs']} pairs, this run's has {len(self.pairs)}: "
                            "resume with the same data and formatting options")
        self.epoch, self.index, self._order = int(state["epoch"]), int(state["index"]), None
