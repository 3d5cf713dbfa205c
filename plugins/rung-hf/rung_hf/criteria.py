"""Stopping criteria for `model.generate` (imports transformers: used only while generating)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

__all__ = ["StopStrings", "Cancel", "StoppingCriteriaList"]


class StopStrings(StoppingCriteria):
    """Stops each row of a batch once its generated text contains a stop string.

    Decodes only the last few tokens of each row per step; `stopped_at[row]` is how many
    tokens that row had generated when it stopped.
    """

    def __init__(self, decode: Any, stops: Sequence[str], prompt_len: int) -> None:
        self.decode = decode
        self.stops = tuple(stops)
        self.prompt_len = prompt_len
        self.lookback = max(len(s) for s in self.stops) + 8
        self.stopped_at: dict[int, int] = {}

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        generated = input_ids[:, self.prompt_len:]
        n = generated.shape[1]
        tails = generated[:, max(0, n - self.lookback):].tolist()
        done = []
        for row, tail in enumerate(tails):
            if row not in self.stopped_at and any(s in self.decode(tail) for s in self.stops):
                self.stopped_at[row] = n
            done.append(row in self.stopped_at)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class Cancel(StoppingCriteria):
    """A stopping criterion the streaming consumer sets to end generation early."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def set(self) -> None:
        self.event.set()

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)
