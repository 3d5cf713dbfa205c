"""Scorers: the three questions every evaluation asks a model, over any rung backend.

The same three requests lm-evaluation-harness's `LM` API makes, in text:

- `loglikelihood([(context, continuation), ...])`: log p(continuation | context), summed over
  the continuation's tokens, and whether greedy decoding would produce exactly those tokens
  (multiple choice, the harness's loglikelihood).
- `loglikelihood_rolling([text, ...])`: the log-likelihood of each whole text, every token
  scored once, in windows of the model's context (perplexity, bits per byte, the harness's
  loglikelihood_rolling); with the number of tokens scored.
- `generate_until([GenerationRequest, ...])`: completions (generation tasks, generate_until).

`scorer_for(backend, model=None)` picks how: a trainable backend (torch, hf, jax) scores
through its framework's `token_logprobs` objective, batched and padded, on `model` (a
training run's current weights) or the backend's own model inside its engine's evaluation
context; any other backend whose capabilities include logprobs (`rung serve` through the
openai backend, OpenAI-compatible servers) scores through `echo` + `logprobs` generation
requests with max_tokens 0; a backend that can do neither raises one RungError line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from rung.records import GenerationRequest


class Scorer(Protocol):
    """Log-likelihoods and generations from one model."""

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(sum of log p(continuation token | what precedes it), greedy) for each (context, continuation)."""

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        """(sum of log p over every token of the text, number of tokens scored) for each text."""

    def generate_until(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """The completion text of each request (stops, max_tokens and sampling as the request says)."""


def scorer_for(backend: Any, model: Any | None = None) -> Scorer:
    """The fastest scorer this backend supports (see the module doc)."""
    raise NotImplementedError("rung_eval.scoring.scorer_for: being written")
