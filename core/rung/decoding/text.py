"""Tokens in, text out: one row's held-back streaming text, stops and finish reason.

`RowDecoder` turns the tokens a model picks into text deltas: never half a UTF-8 character,
never part of a stop string, never a special token (`<|pad|>`, `<|im_start|>`: they are
markup, not text, as in transformers' pipelines); it knows when the row is finished and why
("stop": a stop id or stop string; "length": max_tokens). The token-picking loop is each
framework's own.

With `sampling.logprobs` set, the loop hands each token's `TokenLogprob` to `push` and the
decoder keeps those of the tokens its text holds (not a stop id, not tokens past a stop
string's start); `take_logprobs()` gives out the ones whose text has been shown, so a streamed
delta carries the log-probabilities of exactly the tokens it shows. A row of `max_tokens` 0
(echo: the prompt is scored, nothing generated) is finished ("length") from the start.

A healed prompt (`sampling.healed`, `rung.decoding.healing`): the first token regenerates the
text the prompt was backed up by; that text is the prompt's, so it is left out of `text`.
"""

from __future__ import annotations

from typing import Any

from rung.decoding.sampling import Sampling
from rung.records import TokenLogprob


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
        # Log-probabilities, when asked: one per token of `ids`, with where its text ends in `text`.
        self.wants_logprobs = sampling.logprobs is not None
        self._logprobs: list[TokenLogprob] = []
        self._ends: list[int] = []
        self._given = 0  # entries handed out by take_logprobs
        self.prompt_logprobs: tuple[TokenLogprob, ...] | None = None  # set by the loop with `echo`
        if sampling.max_tokens == 0:
            self.finish_reason = "length"

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def completion_tokens(self) -> int:
        """What usage reports: every token generated, a stopping one included."""
        return self.generated

    def push(self, token: int, logprob: TokenLogprob | None = None) -> str:
        """Take the next token (and, when asked, its log-probability); return the text that may
        be shown now ('' if none)."""
        self.generated += 1
        if token in self.sampling.stop_ids:
            return self.finish("stop")
        self.ids.append(token)
        tracked = logprob is not None and self.wants_logprobs
        if tracked:
            self._logprobs.append(logprob)
            self._ends.append(len(self.text))
        if token not in self._hidden:
            self._shown.append(token)
            if self.incremental:
                previous = len(self.text)
                text = self._decoded()
                if self.sampling.stop:
                    start = max(0, min(previous, len(text)) - self._longest_stop)
                    cut = min((i for s in self.sampling.stop if (i := text.find(s, start)) >= 0), default=-1)
                    if cut >= 0:
                        self.text = text[:cut]
                        self._drop_logprobs_from(cut)
                        return self.finish("stop")
                self.text = text
                if tracked:
                    self._track_ends(len(text))
        if self.generated >= self.sampling.max_tokens:
            return self.finish("length")
        return self._safe_delta() if self.incremental else ""

    def _decoded(self) -> str:
        """The shown tokens as text, less a healed prompt's backed-up text (which they start with
        unless the loop did not apply the healing mask: then nothing is cut)."""
        text = self.tokenizer.decode(self._shown)
        healed = self.sampling.healed
        return text[len(healed):] if healed and text.startswith(healed) else text

    def _track_ends(self, length: int) -> None:
        """The text now ends at `length`: the newest token's text ends there, and no pending one
        past it (the text can shrink: bytes of one character decode to U+FFFD until complete)."""
        ends = self._ends
        ends[-1] = length
        i = len(ends) - 2  # the ends never decrease: clamp from the newest back to one that fits
        while i >= self._given and ends[i] > length:
            ends[i] = length
            i -= 1

    def _drop_logprobs_from(self, cut: int) -> None:
        """Forget the tokens whose text starts at or past `cut` (a stop string's start)."""
        keep = len(self._ends)
        while keep > 0 and (self._ends[keep - 2] if keep > 1 else 0) >= cut:
            keep -= 1
        del self._logprobs[keep:], self._ends[keep:]

    def take_logprobs(self) -> tuple[TokenLogprob, ...] | None:
        """The log-probabilities not yet handed out of the tokens whose text has been shown (all
        of them once the row is done); None when the request asked for none."""
        if not self.wants_logprobs:
            return None
        if self.done:
            upto = len(self._logprobs)
        else:
            upto = self._given
            while upto < len(self._ends) and self._ends[upto] <= self.emitted:
                upto += 1
        taken = tuple(self._logprobs[self._given:upto])
        self._given = upto
        return taken

    @property
    def logprobs(self) -> tuple[TokenLogprob, ...] | None:
        """Every kept token's log-probability (None when not asked): `Completion.logprobs`."""
        return tuple(self._logprobs) if self.wants_logprobs else None

    def finish(self, reason: str) -> str:
        """End the row; return everything not yet shown."""
        if self.finish_reason is None:
            self.finish_reason = reason
            if not self.incremental:
                self.text = self._decoded() if self._shown else ""
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
