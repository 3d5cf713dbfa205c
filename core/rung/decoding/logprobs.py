"""`TokenLogprob` records from the numbers a decoding loop computes.

Every local backend takes the log-softmax of the logits that chose each token (the model's
own distribution: before temperature, top-k and top-p), the chosen token's entry and, when
asked, the k largest; for `echo`, the same over the prompt from the prefill's logits. This
module turns those ids and numbers (plain Python lists) into records, decoding each token's
text once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rung.records import TokenLogprob


class LogprobRecords:
    """Builds TokenLogprob records for one tokenizer; each token's text is decoded once."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def text(self, token: int) -> str:
        """The token's text alone (a piece of a UTF-8 character decodes as U+FFFD)."""
        text = self._texts.get(token)
        if text is None:
            text = self._texts[token] = self.tokenizer.decode([token])
        return text

    def token(self, token: int, logprob: float | None, top_ids: Sequence[int] = (),
              top_logprobs: Sequence[float] = ()) -> TokenLogprob:
        top = tuple((self.text(int(i)), float(v)) for i, v in zip(top_ids, top_logprobs))
        return TokenLogprob(self.text(int(token)), int(token), None if logprob is None else float(logprob), top)

    def prompt(self, ids: Sequence[int], logprobs: Sequence[float], top_ids: Sequence[Sequence[int]] | None = None,
               top_logprobs: Sequence[Sequence[float]] | None = None) -> tuple[TokenLogprob, ...]:
        """Records of a prompt's tokens: `logprobs[j]` (and the top lists) belong to `ids[j + 1]`
        (what position j predicts); the first token has none (nothing predicts it)."""
        if len(logprobs) != len(ids) - 1:
            raise ValueError(f"{len(ids)} prompt tokens need {len(ids) - 1} log-probabilities, got {len(logprobs)}")
        out = [TokenLogprob(self.text(int(ids[0])), int(ids[0]), None)] if ids else []
        for j, token in enumerate(ids[1:]):
            tops = (top_ids[j], top_logprobs[j]) if top_ids is not None and top_logprobs is not None else ((), ())
            out.append(self.token(token, logprobs[j], *tops))
        return tuple(out)


def top_count(rows: Sequence[Any]) -> int | None:
    """The most top entries any row (a `Sampling`) asks for; None when none asks for logprobs."""
    asked = [r.logprobs for r in rows if r.logprobs is not None]
    return max(asked) if asked else None
