"""Framework-free pieces of decoding that every local backend shares.

`Sampling` says how one request is decoded; `request_to_prompt` turns a GenerationRequest into
prompt ids and a `Sampling` (chat template, end-of-turn ids, defaults, checks); `RowDecoder`
turns the tokens a model picks into text deltas: never half a UTF-8 character, never part of
a stop string. The token-picking loop itself is each framework's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rung.errors import RungError
from rung.interfaces import Tokenizer
from rung.records import GenerationRequest


@dataclass(frozen=True)
class Sampling:
    """How one row is decoded."""

    max_tokens: int
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_ids: frozenset[int] = field(default_factory=frozenset)

    @property
    def greedy(self) -> bool:
        return not self.temperature or self.temperature <= 0 or self.top_k == 1


class RowDecoder:
    """Tokens of one row in, text deltas out; knows when the row is finished and why."""

    def __init__(self, tokenizer: Any, sampling: Sampling, prompt_tokens: int, incremental: bool) -> None:
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.prompt_tokens = prompt_tokens
        self.incremental = incremental or bool(sampling.stop)
        self.ids: list[int] = []
        self.generated = 0  # tokens the model produced, a stopping one included
        self.text = ""  # decoded so far (trimmed at a stop string)
        self.emitted = 0  # characters of `text` handed out as deltas
        self.finish_reason: str | None = None
        self._longest_stop = max((len(s) for s in sampling.stop), default=0)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def push(self, token: int) -> str:
        """Take the next token; return the text that may be shown now ('' if none)."""
        self.generated += 1
        if token in self.sampling.stop_ids:
            return self.finish("stop")
        self.ids.append(token)
        if self.incremental:
            previous = len(self.text)
            text = self.tokenizer.decode(self.ids)
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
                self.text = self.tokenizer.decode(self.ids) if self.ids else ""
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


def request_to_prompt(
    request: GenerationRequest, tokenizer: Tokenizer, max_tokens: int, temperature: float | None
) -> tuple[list[int], Sampling]:
    """Prompt ids and decoding settings of `request`; `max_tokens`/`temperature` are defaults.

    Chat requests go through the tokenizer's chat template and also stop at its end-of-turn
    token; a bare prompt is raw text completion.
    """
    stop_ids = {tokenizer.eos_id} if tokenizer.eos_id is not None else set()
    if request.messages or request.system:
        text = tokenizer.apply_chat_template(request.chat(), add_generation_prompt=True)
        end_of_turn = getattr(tokenizer, "end_of_turn_id", None)
        if end_of_turn is not None:
            stop_ids.add(end_of_turn)
    else:
        text = request.prompt or ""
    ids = tokenizer.encode(text)
    if not ids and tokenizer.bos_id is not None:
        ids = [tokenizer.bos_id]
    max_tokens = request.max_tokens if request.max_tokens is not None else max_tokens
    if max_tokens < 1:
        raise RungError(f"max_tokens must be at least 1, got {max_tokens}")
    temperature = request.temperature if request.temperature is not None else temperature
    if request.top_k is not None and request.top_k < 1:
        raise RungError(f"top_k must be at least 1, got {request.top_k}")
    if request.top_p is not None and not 0 < request.top_p <= 1:
        raise RungError(f"top_p must be in (0, 1], got {request.top_p}")
    sampling = Sampling(
        max_tokens=max_tokens,
        temperature=float(temperature or 0.0),
        top_k=request.top_k,
        top_p=request.top_p,
        seed=request.seed,
        stop=tuple(s for s in request.stop if s),
        stop_ids=frozenset(stop_ids),
    )
    return ids, sampling
