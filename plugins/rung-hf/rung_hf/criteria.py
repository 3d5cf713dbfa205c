"""Stopping criteria for `model.generate` (imports transformers: used only while generating)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from rung.decoding import RowDecoder

__all__ = ["RowsDone", "Cancel", "StoppingCriteriaList"]


class RowsDone(StoppingCriteria):
    """Hands each step's new token of every row to that row's `RowDecoder`, and stops the rows
    it says are done (a stop string seen in the decoded text: transformers cannot see those)."""

    def __init__(self, decoders: Sequence[RowDecoder]) -> None:
        self.decoders = list(decoders)

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        last = input_ids[:, -1].tolist()
        for decoder, token in zip(self.decoders, last):
            if not decoder.done:
                decoder.push(int(token))
        return torch.tensor([d.done for d in self.decoders], dtype=torch.bool, device=input_ids.device)


class Cancel(StoppingCriteria):
    """A stopping criterion the streaming consumer sets to end generation early."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def set(self) -> None:
        self.event.set()

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)
