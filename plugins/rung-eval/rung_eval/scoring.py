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

Tokens are cut as the harness's `hf` model (HFLM) cuts them, so the numbers agree with it on
the same model folder:

- a text is encoded with the tokenizer's `encode_prompt` when it has one (a transformers
  tokenizer adds what its model expects before a text, as HFLM's `tok_encode` does), else
  `encode`;
- a (context, continuation) pair: the context's trailing spaces move to the continuation, the
  whole and the context are encoded and the continuation is what the whole has beyond the
  context; an empty context is the prefix token (bos, else eos), unless the continuation
  starts with it; the row keeps its last `max_length + 1` tokens;
- a rolling text: the prefix token, then windows of `max_length` input tokens; with the
  default stride (`max_length`) windows are disjoint, each later window predicting its tokens
  from a full context (`lm_eval.utils.get_rolling_token_windows` with context_len 1 and
  `make_disjoint_window`); a smaller stride gives every scored token more context.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rung.errors import RungError
from rung.records import GenerationRequest

IGNORE_INDEX = -100
_HALF = math.log(0.5)  # a token above probability 1/2 is the argmax for sure


class Scorer(Protocol):
    """Log-likelihoods and generations from one model."""

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(sum of log p(continuation token | what precedes it), greedy) for each (context, continuation)."""

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        """(sum of log p over every token of the text, number of tokens scored) for each text."""

    def generate_until(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """The completion text of each request (stops, max_tokens and sampling as the request says)."""


def scorer_for(backend: Any, model: Any | None = None, *, batch_size: int = 16, stride: int | None = None,
               max_length: int | None = None) -> Scorer:
    """The fastest scorer this backend supports (see the module doc).

    `batch_size`: rows per forward pass (objective scoring) or requests in flight (echo);
    `stride`: tokens predicted per rolling window (default: the window's length, disjoint
    windows as the harness has them); `max_length`: the window's input tokens (default: the
    model's context; echo scoring: one less, the backend sees the whole row as its prompt).
    """
    if getattr(backend, "framework", None) and hasattr(backend, "engine"):
        return ObjectiveScorer(backend, model, batch_size=batch_size, stride=stride, max_length=max_length)
    if model is not None:
        raise RungError(f"scoring a training model needs a trainable backend; {_name(backend)} is not one")
    if getattr(getattr(backend, "capabilities", None), "logprobs", False):
        return EchoScorer(backend, batch_size=batch_size, stride=stride, max_length=max_length)
    raise RungError(
        f"backend {_name(backend)} cannot score tokens (it returns no log-probabilities): "
        "log-likelihood and perplexity tasks need torch, hf, jax, `rung serve` or a server with echo logprobs"
    )


# ---------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class Row:
    """One forward pass's worth of a request: `tokens` (at most max_length + 1), of which the
    last `scored` are predicted and summed (the rest are context)."""

    tokens: tuple[int, ...]
    scored: int


class Tokens:
    """The harness's (HFLM's) cut of requests into rows, for one tokenizer and window length."""

    def __init__(self, tokenizer: Any, max_length: int, stride: int | None = None) -> None:
        if tokenizer is None:
            raise RungError("scoring needs the backend's tokenizer; this backend has none")
        if max_length < 1:
            raise RungError(f"scoring: max_length must be at least 1, got {max_length}")
        stride = max_length if stride is None else int(stride)
        if not 1 <= stride <= max_length:
            raise RungError(f"scoring: stride must be between 1 and max_length ({max_length}), got {stride}")
        self.tokenizer, self.max_length, self.stride = tokenizer, int(max_length), stride
        self.encode_text = getattr(tokenizer, "encode_prompt", tokenizer.encode)
        prefix = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
        if prefix is None:
            raise RungError("scoring needs a bos or eos token to predict a text's first token from; "
                            "the tokenizer has neither")
        self.prefix = int(prefix)

    def pair(self, context: str, continuation: str) -> Row:
        """The row of one (context, continuation) request."""
        if context == "":
            whole = [int(i) for i in self.tokenizer.encode(continuation)]
            if whole and whole[0] == self.prefix:
                context_ids, continuation_ids = whole[:1], whole[1:]
            else:
                context_ids, continuation_ids = [self.prefix], whole
        else:
            spaces = len(context) - len(context.rstrip())
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            whole = [int(i) for i in self.encode_text(context + continuation)]
            context_ids = [int(i) for i in self.encode_text(context)]
            continuation_ids = whole[len(context_ids):]
        if len(continuation_ids) > self.max_length:
            raise RungError(f"scoring: a continuation of {len(continuation_ids)} tokens is longer than the "
                            f"window ({self.max_length} tokens): {continuation[:40]!r}")
        return Row(tuple((context_ids + continuation_ids)[-(self.max_length + 1):]), len(continuation_ids))

    def rolling(self, text: str) -> list[Row]:
        """The windows of one text: every token scored once, the first from the prefix token."""
        ids = [int(i) for i in self.encode_text(text)]
        if not ids:
            return []
        length, stride = self.max_length, self.stride
        first = min(length, len(ids))
        rows = [Row(tuple([self.prefix] + ids[:first]), first)]
        predicted = first
        while predicted < len(ids):
            count = min(len(ids) - predicted, stride)
            end = predicted + count
            rows.append(Row(tuple(ids[max(0, end - length - 1):end]), count))
            predicted = end
        return rows


def _name(backend: Any) -> str:
    """The backend as a user names it: 'anthropic' for AnthropicBackend."""
    kind = type(backend).__name__
    return f"'{kind[:-len('Backend')].lower() if kind.endswith('Backend') and kind != 'Backend' else kind}'"


def model_context(backend: Any) -> int | None:
    """The most tokens the backend's model attends over, where the backend says."""
    for read in (lambda b: b.context_length, lambda b: b.config.max_seq_len, lambda b: b.model.arch.max_seq_len,
                 lambda b: b.model.config.max_position_embeddings):
        try:
            value = read(backend)
        except (AttributeError, TypeError):
            continue
        if isinstance(value, int) and value > 0:
            return value
    return None


def _sum_rows(rows: Sequence[Row], values: dict[Row, tuple[float, ...]]) -> float:
    return float(sum(sum(values[row]) for row in rows))


# ---------------------------------------------------------------------------- objective


class ObjectiveScorer:
    """Scores through the framework's `token_logprobs` objective (torch, hf, jax backends).

    Rows are deduplicated, sorted by length and scored `batch_size` at a time, right-padded
    (causal attention: no real token sees a pad). On jax every batch is padded to
    `batch_size` rows and a power-of-two length, so the objective compiles a few shapes.
    The greedy flag of `loglikelihood` is settled by the log-probabilities when every
    continuation token is above probability 1/2 (then it is the argmax); otherwise by the
    framework's own greedy decoding (`sample_tokens` at temperature 0) on the same model.
    """

    def __init__(self, backend: Any, model: Any | None = None, batch_size: int = 16, stride: int | None = None,
                 max_length: int | None = None) -> None:
        from rung import objectives
        from rung.plugins import get_plugins

        self.backend, self.model, self.framework = backend, model, backend.framework
        registry = get_plugins().registry
        self.token_logprobs = objectives.load(registry, "token_logprobs", self.framework)
        self._registry = registry
        self.batch_size = max(1, int(batch_size))
        context = max_length or model_context(backend)
        if context is None:
            raise RungError(f"scoring: the context of {_name(backend)}'s model is unknown; give max_length")
        self.tokens = Tokens(backend.tokenizer, context, stride)
        self.fixed_shapes = self.framework == "jax"

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[Any]:
        """The model to score: the one given (the caller is inside its engine's evaluation
        context), else the backend's own in its engine's evaluation context (eval mode, no
        gradients; nothing is built for training)."""
        if self.model is not None:
            yield self.model
            return
        with self.backend.engine().evaluation() as model:
            yield model

    # -- the protocol

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        rows = [self.tokens.pair(context, continuation) for context, continuation in requests]
        with self.evaluating() as model:
            values = self.score_rows(model, rows)
            greedy = self._greedy(model, rows, values)
        return [(_sum_rows([row], values), greedy[row]) for row in rows]

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        windows = [self.tokens.rolling(text) for text in texts]
        with self.evaluating() as model:
            values = self.score_rows(model, [row for rows in windows for row in rows])
        return [(_sum_rows(rows, values), sum(row.scored for row in rows)) for rows in windows]

    def generate_until(self, requests: Sequence[GenerationRequest]) -> list[str]:
        return [completion.text for completion in self.backend.generate_batch(list(requests))]

    # -- batches

    def score_rows(self, model: Any, rows: Sequence[Row]) -> dict[Row, tuple[float, ...]]:
        """log p of each row's scored tokens, in order, for each distinct row."""
        import numpy as np

        distinct = sorted(set(rows), key=lambda r: len(r.tokens), reverse=True)
        out: dict[Row, tuple[float, ...]] = {}
        for start in range(0, len(distinct), self.batch_size):
            chunk = distinct[start:start + self.batch_size]
            ids, targets = self._batch(chunk)
            value, _ = self.token_logprobs(model, {"input_ids": ids, "targets": targets})
            logprobs = _numpy(value).astype(np.float64)
            for i, row in enumerate(chunk):
                end = len(row.tokens) - 1  # targets[:, t] is tokens[t + 1]: the scored ones end the row
                out[row] = tuple(logprobs[i, end - row.scored:end].tolist())
        return out

    def _batch(self, chunk: Sequence[Row]) -> tuple[Any, Any]:
        import numpy as np

        width = max(len(row.tokens) - 1 for row in chunk)
        height = len(chunk)
        if self.fixed_shapes:
            width = min(1 << max(3, (width - 1).bit_length()), max(width, self.tokens.max_length))
            height = self.batch_size
        dtype = np.int32 if self.framework == "jax" else np.int64
        ids = np.zeros((height, width), dtype=dtype)
        targets = np.full((height, width), IGNORE_INDEX, dtype=dtype)
        for i, row in enumerate(chunk):
            tokens = np.asarray(row.tokens, dtype=dtype)
            n = len(tokens) - 1
            ids[i, :n] = tokens[:-1]
            targets[i, n - row.scored:n] = tokens[n - row.scored + 1:]
        return ids, targets

    def _greedy(self, model: Any, rows: Sequence[Row], values: dict[Row, tuple[float, ...]]) -> dict[Row, bool]:
        """Whether greedy decoding from each row's context gives its continuation."""
        from rung import objectives
        from rung.decoding.sampling import Sampling

        greedy = {row: True for row in values if all(v > _HALF for v in values[row])}  # (nothing scored: True)
        undecided = [row for row in values if row not in greedy]
        if not undecided:
            return {row: greedy[row] for row in rows}
        sample = objectives.load(self._registry, "sample_tokens", self.framework)
        by_length: dict[int, list[Row]] = {}
        for row in undecided:
            by_length.setdefault(row.scored, []).append(row)
        for count, group in by_length.items():
            prompts = [list(row.tokens[:-count])[-(self.tokens.max_length - count):] or [self.tokens.prefix]
                       for row in group]
            for start in range(0, len(prompts), self.batch_size):
                part = group[start:start + self.batch_size]
                produced = sample(model, prompts[start:start + self.batch_size], Sampling(max_tokens=count))
                for row, ids in zip(part, produced):
                    greedy[row] = tuple(int(i) for i in ids) == row.tokens[-count:]
        return {row: greedy[row] for row in rows}


def _numpy(value: Any) -> Any:
    """A framework array as a numpy array (a torch tensor may live on a GPU)."""
    import numpy as np

    if hasattr(value, "detach"):
        value = value.detach().float().cpu()
    return np.asarray(value)


# ---------------------------------------------------------------------------- echo


class EchoScorer:
    """Scores through generation requests that echo the prompt with its log-probabilities
    (max_tokens 0): `rung serve`, OpenAI-compatible servers, any backend with
    `capabilities.logprobs`. With a tokenizer the rows are sent as token ids (the same rows as
    `ObjectiveScorer`, one token shorter windows: the backend sees the whole row as a prompt);
    the greedy flag compares each token with the most likely one at its place."""

    def __init__(self, backend: Any, batch_size: int = 16, stride: int | None = None,
                 max_length: int | None = None) -> None:
        self.backend, self.batch_size = backend, max(1, int(batch_size))
        context = model_context(backend)
        length = max_length or ((context - 1) if context else 2047)
        self.tokens = Tokens(getattr(backend, "tokenizer", None), length, stride)

    def _scored(self, rows: Sequence[Row]) -> dict[Row, tuple[list[float], bool]]:
        distinct = list(dict.fromkeys(rows))
        requests = [GenerationRequest(prompt="", prompt_ids=row.tokens, echo=True, logprobs=1, max_tokens=0,
                                      temperature=0.0, raw=True) for row in distinct]
        completions = self.backend.generate_batch(requests, max_concurrency=self.batch_size)
        out = {}
        for row, completion in zip(distinct, completions):
            scored = list(completion.prompt_logprobs or ())
            if len(scored) != len(row.tokens):
                raise RungError(f"backend {_name(self.backend)} echoed {len(scored)} prompt tokens for a prompt "
                                f"of {len(row.tokens)}: it does not score prompts as sent")
            tail = scored[len(scored) - row.scored:] if row.scored else []
            logprobs = [float(t.logprob) for t in tail]
            greedy = all(t.top and t.logprob >= t.top[0][1] for t in tail)
            out[row] = (logprobs, greedy)
        return out

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        rows = [self.tokens.pair(context, continuation) for context, continuation in requests]
        scored = self._scored(rows)
        return [(float(sum(scored[row][0])), scored[row][1]) for row in rows]

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        windows = [self.tokens.rolling(text) for text in texts]
        scored = self._scored([row for rows in windows for row in rows])
        return [(float(sum(sum(scored[row][0]) for row in rows)), sum(row.scored for row in rows))
                for rows in windows]

    def generate_until(self, requests: Sequence[GenerationRequest]) -> list[str]:
        return [c.text for c in self.backend.generate_batch(list(requests), max_concurrency=self.batch_size)]
