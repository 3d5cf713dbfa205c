"""`perplexity`: how well a model predicts text, in units that compare across tokenizers.

Texts are files (paths or globs relative to the spec) or the documents of any registered data
source (a `data:` section, e.g. rung-pretrain's `files`). Each text is scored whole by the
scorer's `loglikelihood_rolling` (windows of the model's context, every token scored once;
`stride` makes the windows overlap so later tokens keep more context, where the scorer
supports it). From the summed negative log-likelihood (nats):

- perplexity       exp(nll / tokens)                 depends on the tokenizer
- bits_per_byte    nll / ln 2 / UTF-8 bytes          tokenizer-independent: compare models by it
- byte_perplexity  exp(nll / UTF-8 bytes)
- word_perplexity  exp(nll / words), words as lm-evaluation-harness counts them
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from rung.errors import ConfigError
from rung.evaluation import EvalTaskOptions

from rung_eval.tasks.files import build_registered, resolve_in, resolve_paths, task_scorer


class PerplexityOptions(EvalTaskOptions):
    """Text to score: files, or a data source."""

    paths: list[str] = Field(default_factory=list, description="text files or globs, relative to the spec")
    data: dict[str, Any] | None = Field(
        None, description="a data source section ({name: files, paths: [...]}); its relative paths are the spec's")
    stride: int | None = Field(
        None, ge=1, description="tokens predicted per window (windows overlap, so each keeps more context); "
                                "null: disjoint windows")
    max_length: int | None = Field(None, ge=2, description="tokens per window; null: the model's context")
    batch_size: int | None = Field(None, ge=1, description="windows per forward pass; null: the scorer's default")
    limit: int | None = Field(None, ge=1, description="score only the first N texts")

    @field_validator("paths", mode="before")
    @classmethod
    def _one_path(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_source(self) -> PerplexityOptions:
        if bool(self.paths) == (self.data is not None):
            raise ValueError("give the text as either 'paths' (files or globs) or 'data' (a data source section)")
        return self


def word_count(text: str) -> int:
    """Words as lm-evaluation-harness counts them (pieces between runs of whitespace)."""
    return len(re.split(r"\s+", text))


def perplexity_metrics(nll: float, tokens: int, nbytes: int, words: int) -> dict[str, float]:
    """The task's metrics from the summed negative log-likelihood in nats and the counts."""
    return {
        "perplexity": math.exp(nll / tokens) if tokens else math.nan,
        "bits_per_byte": nll / math.log(2) / nbytes,
        "byte_perplexity": math.exp(nll / nbytes),
        "word_perplexity": math.exp(nll / words) if words else math.nan,
        "tokens": float(tokens),
        "bytes": float(nbytes),
    }


class PerplexityTask:
    """Perplexity and bits per byte of the spec's text (an `rung.evaluation.EvalTask`)."""

    def __init__(self, options: PerplexityOptions, base_dir: Path | str = ".", **_: Any) -> None:
        self.options = options
        self.name = options.label
        self.base_dir = Path(base_dir)
        self.source = self._data_source() if options.data is not None else None
        self.files = resolve_paths(options.paths, self.base_dir, self.name) if options.paths else []

    def _data_source(self) -> Any:
        section = dict(self.options.data or {})
        for key in ("paths", "path"):  # file paths of the spec's data live beside the spec
            value = section.get(key)
            if isinstance(value, str):
                section[key] = resolve_in(self.base_dir, value)
            elif isinstance(value, list):
                section[key] = [resolve_in(self.base_dir, v) if isinstance(v, str) else v for v in value]
        return build_registered("data_source", section, f"task '{self.name}'.data")

    def texts(self) -> list[str]:
        """The texts to score (empty ones left out), at most `limit`."""
        from rung.records import Document

        limit = self.options.limit
        out: list[str] = []
        if self.source is None:
            for path in self.files:
                try:
                    text = path.read_text(encoding="utf-8")
                except UnicodeDecodeError as exc:
                    raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
                if text:
                    out.append(text)
                if limit is not None and len(out) >= limit:
                    break
        else:
            for item in self.source.read():
                text = item.text if isinstance(item, Document) else item if isinstance(item, str) else None
                if text is None:
                    raise ConfigError(f"task '{self.name}'.data: yields {type(item).__name__}, not text documents")
                if text:
                    out.append(text)
                if limit is not None and len(out) >= limit:
                    break
        if not out:
            raise ConfigError(f"task '{self.name}': no text to score")
        return out

    def evaluate(self, backend: Any, model: Any | None = None) -> dict[str, float]:
        texts = self.texts()
        opts = self.options
        scorer = task_scorer(backend, model, self.name, stride=opts.stride, max_length=opts.max_length,
                             batch_size=opts.batch_size)
        scored = scorer.loglikelihood_rolling(texts)
        nll = -sum(float(logprob) for logprob, _ in scored)
        tokens = sum(int(count) for _, count in scored)
        nbytes = sum(len(text.encode("utf-8")) for text in texts)
        words = sum(word_count(text) for text in texts)
        return perplexity_metrics(nll, tokens, nbytes, words)
