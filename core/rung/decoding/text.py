"""Tokens in, text out: one row's held-back streaming text, stops and finish reason.

`RowDecoder` turns the tokens a model picks into text deltas: never half a UTF-8 character,
never part of a stop string, never a special token (`<|pad|>`, `<|im_start|>`: they are
markup, not text, as in transformers' pipelines); it knows when the row is finished and why
("stop": a stop id or stop string; "length": max_tokens). The token-picking loop is each
framework's own.
"""

from __future__ import annotations

from typing import Any

from rung.decoding.sampling import Sampling


class RowDecoder:
    """Tokens of one row in, text deltas out; knows when the row is finished and why."""

    def __init__(self, tokenizer: Any, sampling: Sampling, prompt_tokens: int, incremental: bool) -> None:
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.prompt_tokens = prompt_tokens
        self.incremental = incremental or bool(sampling.stop)
        self.ids: list[int] = []  # the tokens of the text (no stop id)
        self.generated = 0  # tokens the model produced, a stopping one included
        self.text = ""  # decoded so far (trimmed at a stop string)
        self.emitted = 0  # characters of `text` handed out as deltas
        self.finish_reason: str | None = None
        self._longest_stop = max((len(s) for s in sampling.stop), default=0)
        self._hidden = frozenset(int(i) for i in (getattr(tokenizer, "special_tokens", None) or {}).values())
        self._shown: list[int] = []  # `ids` without special tokens: what is decoded

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def completion_tokens(self) -> int:
        """What usage reports: every token generated, a stopping one included."""
        return self.generated

    def push(self, token: int) -> str:
        """Take the next token; return the text that may be shown now ('' if none)."""
        self.generated += 1
        if token in self.sampling.stop_ids:
            return self.finish("stop")
        self.ids.append(token)
        if token not in self._hidden:
            self._shown.append(token)
            if self.incremental:
                previous = len(self.text)
                text = self.tokenizer.decode(self._shown)
                if self.sampling.stop:
                    start = max(0, min(previous, len(text)) - self._longest_stop)
                    cut = min((i for s in self.sampling.stop if (i := text.find(s, start)) >= 0), default=-1)
                    if cut >= 0:
                        self.text = text[:cut]
                        return self.finish("stop")
                self.text = text
        if self.generated >= self.sampling.max_tokens:
            return self.finish("length")
        return self._safe_delta() if self.incremental else ""

    def finish(self, reason: str) -> str:
        """End the row; return everything not yet shown."""
        if self.finish_reason is None:
            self.finish_reason = reason
            if not self.incremental:
                self.text = self.tokenizer.decode(self._shown) if self._shown else ""
        delta = self.text[self.emitted:]
        self.emitted = len(self.text)
        return delta

    def _safe_delta(self) -> str:
        text = self.text
        end = len(text)
        # An incomplete UTF-8 character decodes as U+FFFD: wait for its next byte.
        while end > self.emitted and text[end - 1] == "\ufffd":
            end -= 1
        # Hold back a tail that could be the start of a stop string.
        for stop in self.sampling.stop:
            for n in range(min(len(stop) - 1, end - self.emitted), 0, -1):
                if text.endswith(stop[:n], 0, end):
                    end -= n
                    break
        if end <= self.emitted:
            return ""
        delta = text[self.emitted:end]
        self.emitted = end
        return delta
