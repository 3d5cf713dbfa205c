"""Verifiable reward functions for the online trainers (registered through
`rung_register_reward_functions`; `exact_match` is rung_lora's).

Each is built `Impl(options)` and called `fn(completion, reference) -> float`, where
`completion` is the sampled answer's text (without the template's end of turn) and
`reference` the prompt's reference answer (None when the data has none).
"""

from __future__ import annotations

import math
import re

from pydantic import Field, field_validator

from rung.options import Options

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class NumericMatchOptions(Options):
    """Which number of the completion is its answer, and how close it must be."""

    which: str = Field("first", pattern="^(first|last)$", description="first or last number in the completion")
    tolerance: float = Field(0.0, ge=0, description="absolute difference still counted as right")


class NumericMatch:
    """1.0 when the completion's first (or last) number equals the reference's, else 0.0:
    "46", "= 46" and "46 apples" all answer 46."""

    def __init__(self, options: NumericMatchOptions | None = None) -> None:
        self.options = options or NumericMatchOptions()

    def __call__(self, completion: str, reference: str | None = None, **_: object) -> float:
        if reference is None:
            return 0.0
        want = NUMBER.search(str(reference))
        found = NUMBER.findall(completion)
        if want is None or not found:
            return 0.0
        got = float(found[0] if self.options.which == "first" else found[-1])
        return float(math.isclose(got, float(want.group()), rel_tol=0.0, abs_tol=self.options.tolerance + 1e-9))


class FormatMatchOptions(Options):
    """The form a whole answer must have."""

    pattern: str = Field(r"-?\d+", description="a regular expression the stripped completion must match fully")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression ({exc})") from None
        return value


class FormatMatch:
    """1.0 when the whole stripped completion matches `pattern` (by default: only a number)."""

    def __init__(self, options: FormatMatchOptions | None = None) -> None:
        self.options = options or FormatMatchOptions()
        self.pattern = re.compile(self.options.pattern)

    def __call__(self, completion: str, reference: str | None = None, **_: object) -> float:
        return float(self.pattern.fullmatch(completion.strip()) is not None)


class LengthOptions(Options):
    """The answer length a length reward asks for."""

    target: int = Field(..., ge=0, description="wanted length in characters")
    scale: float = Field(0.0, ge=0, description="characters at which the reward reaches 0; 0: max(target, 1)")


class LengthReward:
    """1.0 at exactly `target` characters (stripped), falling linearly to 0.0 at `scale` away."""

    def __init__(self, options: LengthOptions) -> None:
        self.options = options

    def __call__(self, completion: str, reference: str | None = None, **_: object) -> float:
        scale = self.options.scale or max(self.options.target, 1)
        return max(0.0, 1.0 - abs(len(completion.strip()) - self.options.target) / scale)


class StartsWithOptions(Options):
    """The text a rewarded completion starts with."""

    prefix: str = Field(..., min_length=1)


class StartsWith:
    """1.0 when the completion starts with `prefix` (a trivial verifiable task for tests), else 0.0."""

    def __init__(self, options: StartsWithOptions) -> None:
        self.options = options

    def __call__(self, completion: str, reference: str | None = None, **_: object) -> float:
        return float(completion.startswith(self.options.prefix))
