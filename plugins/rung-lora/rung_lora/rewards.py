"""Reward / evaluation functions rung-lora registers (through `rung_register_reward_functions`).

A reward function is built `Impl(options)` like every rung implementation and called
`fn(completion, reference) -> float`.
"""

from __future__ import annotations

import re

from pydantic import Field

from rung.options import Options


class ExactMatchOptions(Options):
    """How completions are compared with references."""

    ignore_case: bool = False
    collapse_whitespace: bool = Field(True, description="strip the ends, treat runs of whitespace as one space")


class ExactMatch:
    """1.0 when the completion equals the reference after normalising, else 0.0."""

    def __init__(self, options: ExactMatchOptions | None = None) -> None:
        self.options = options or ExactMatchOptions()

    def _norm(self, text: str) -> str:
        if self.options.collapse_whitespace:
            text = re.sub(r"\s+", " ", text).strip()
        return text.lower() if self.options.ignore_case else text

    def __call__(self, completion: str, reference: str | None = None, **_: object) -> float:
        if reference is None:
            return 0.0
        return float(self._norm(completion) == self._norm(reference))
