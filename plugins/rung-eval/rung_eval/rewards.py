"""Reward functions rung-eval registers (through `rung_register_reward_functions`).

Built `Impl(options)` like every rung implementation and called
`fn(completion, reference, prompt=...) -> float` (see rung_lora.rewards, rung_rlhf.rewards).
"""

from __future__ import annotations

import ast
import re
import warnings

from pydantic import Field

from rung.options import Options

# The first fenced block (```python ... ```), or an opened fence the completion never closed.
FENCE = re.compile(r"```[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def strip_fence(text: str) -> str:
    """The code inside the first ``` fence of `text`, or `text` itself when it has none."""
    match = FENCE.search(text)
    return match.group(1) if match else text


class PythonParsesOptions(Options):
    """What is parsed."""

    include_prompt: bool = Field(
        False, description="parse prompt + completion (a completion that continues the prompt's code)")
    allow_empty: bool = Field(False, description="count an empty completion as parsing (it is a valid module)")


class PythonParses:
    """1.0 when the completion (after stripping a ``` fence) parses as Python with `ast.parse`, else 0.0."""

    def __init__(self, options: PythonParsesOptions | None = None) -> None:
        self.options = options or PythonParsesOptions()

    def __call__(self, completion: str, reference: str | None = None, prompt: str | None = None,
                 **_: object) -> float:
        code = strip_fence(completion)
        if not code.strip() and not self.options.allow_empty:
            return 0.0
        if self.options.include_prompt and prompt:
            code = prompt + code
        try:
            with warnings.catch_warnings():  # e.g. SyntaxWarning for "\d": still parses
                warnings.simplefilter("ignore")
                ast.parse(code)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return 0.0
        return 1.0
