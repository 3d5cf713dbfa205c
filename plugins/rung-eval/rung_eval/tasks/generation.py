"""`generation`: complete prompts and score the completions with registered reward functions.

Each JSONL line has a prompt and (usually) a reference answer. The model completes each
prompt (greedy by default; `max_tokens`, `stop`), and every reward function the spec names
(registered through `rung_register_reward_functions`: `exact_match`, `python_parses`,
`numeric_match`, ... looked up by name) scores each completion against its reference. A
metric per reward function (its mean over the prompts), plus `count`.

    rewards: [exact_match, {name: python_parses, include_prompt: true}]

A reward function is called `fn(completion, reference)`, and gets `prompt=` too when it
takes it (by name or `**kwargs`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from rung.errors import ConfigError
from rung.evaluation import EvalTaskOptions

from rung_eval.tasks.files import Record, build_registered, read_records, resolve_paths, task_scorer

REFERENCE_FIELDS = ("reference", "answer", "target", "completion")


class GenerationOptions(EvalTaskOptions):
    """Where the prompts are, how to complete them and how to score the completions."""

    path: list[str] = Field(..., min_length=1, description="JSONL file(s) or globs, relative to the spec")
    prompt_field: str = "prompt"
    reference_field: str | None = Field(None, description=f"null: the first of {', '.join(REFERENCE_FIELDS)}, "
                                                          "or none (rewards that need no reference)")
    template: str | None = Field(None, description="the prompt as a format string of the line's fields")
    chat: bool = Field(False, description="send the prompt as a user turn through the chat template; "
                                          "false: continue it as plain text")
    system: str | None = Field(None, description="system prompt (chat: true)")
    rewards: list[str | dict[str, Any]] = Field(
        default_factory=lambda: ["exact_match"], min_length=1,
        description="reward functions by name, or sections {name: ..., options}")
    max_tokens: int = Field(64, ge=1)
    stop: list[str] = Field(default_factory=list, description="stop sequences, e.g. ['\\n']")
    temperature: float = Field(0.0, ge=0, description="0: greedy")
    seed: int | None = None
    batch_size: int | None = Field(None, ge=1, description="requests per batch; null: the scorer's default")
    limit: int | None = Field(None, ge=1, description="complete only the first N prompts")

    @field_validator("path", mode="before")
    @classmethod
    def _one_path(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


@dataclass(frozen=True)
class Prompt:
    """One prompt and its reference answer (None when the line has none)."""

    text: str
    reference: str | None


def parse_prompt(record: Record, options: GenerationOptions) -> Prompt:
    """A line as a Prompt; a malformed one is an error naming its file and line."""
    text = record.render(options.template) if options.template is not None else record.field(options.prompt_field)
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{record.where}: the prompt is empty or not text")
    if options.reference_field is not None:
        reference = record.field(options.reference_field)
    else:
        reference = next((record.data[f] for f in REFERENCE_FIELDS if f in record.data), None)
    return Prompt(text, None if reference is None else str(reference))


def takes_prompt(fn: Callable[..., Any]) -> bool:
    """Whether a reward function accepts `prompt=` (by name, or through **kwargs)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "prompt" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def metric_names(sections: list[dict[str, Any]]) -> list[str]:
    """One metric name per reward: its name, numbered when a name repeats (exact_match, exact_match_2)."""
    names: list[str] = []
    for section in sections:
        name, n = section["name"], 2
        while name in names:
            name, n = f"{section['name']}_{n}", n + 1
        names.append(name)
    return names


class GenerationTask:
    """The mean reward of the model's completions (an `rung.evaluation.EvalTask`)."""

    def __init__(self, options: GenerationOptions, base_dir: Path | str = ".", **_: Any) -> None:
        self.options = options
        self.name = options.label
        self.files = resolve_paths(options.path, Path(base_dir), self.name)
        self.prompts = [parse_prompt(r, options) for r in read_records(self.files, options.limit)]
        self.rewards = self._reward_functions()

    def _reward_functions(self) -> list[tuple[str, Callable[..., float], bool]]:
        sections = [{"name": r} if isinstance(r, str) else dict(r) for r in self.options.rewards]
        out = []
        for i, (name, section) in enumerate(zip(metric_names(sections), sections)):
            fn = build_registered("reward_function", section, f"task '{self.name}'.rewards[{i}]")
            out.append((name, fn, takes_prompt(fn)))
        return out

    def requests(self) -> list[Any]:
        """One GenerationRequest per prompt, as the spec says."""
        from rung.records import GenerationRequest, Message

        opts = self.options
        sampling = {"max_tokens": opts.max_tokens, "stop": tuple(opts.stop), "temperature": opts.temperature,
                    "seed": opts.seed}
        if opts.chat:
            return [GenerationRequest(messages=(Message("user", p.text),), system=opts.system, **sampling)
                    for p in self.prompts]
        return [GenerationRequest(prompt=p.text, raw=True, **sampling) for p in self.prompts]

    def evaluate(self, backend: Any, model: Any | None = None) -> dict[str, float]:
        scorer = task_scorer(backend, model, self.name, batch_size=self.options.batch_size)
        completions = scorer.generate_until(self.requests())
        metrics: dict[str, float] = {}
        for name, fn, with_prompt in self.rewards:
            scores = [float(fn(text, p.reference, prompt=p.text) if with_prompt else fn(text, p.reference))
                      for text, p in zip(completions, self.prompts)]
            metrics[name] = sum(scores) / len(scores)
        metrics["count"] = float(len(self.prompts))
        return metrics
