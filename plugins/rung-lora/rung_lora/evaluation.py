"""What sft and lora measure on held-out examples: the loss on their trained tokens and,
optionally, a task metric scored on the model's greedy answers.

Framework-neutral: the loss is the backend framework's `token_nll_sum` objective summed by
`rung.objectives.heldout_loss`, and the answers come from the backend's own `generate_batch`.
The engine runs the evaluator in its evaluation context (eval mode, no gradients), where the
backend's model holds the weights being trained, so both see the current weights on every
framework.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rung.objectives import heldout_loss
from rung.records import GenerationRequest

from rung_lora.data import collate


def held_out_batches(rows: Sequence[tuple[list[int], list[int]]], batch_size: int, pad_id: int,
                     multiple: int = 8, max_batches: int | None = None) -> list[dict[str, Any]]:
    """The held-out rows as fixed, right-padded numpy batches (the first `max_batches`)."""
    starts = list(range(0, len(rows), batch_size))[: max_batches or None]
    return [collate(rows[start: start + batch_size], pad_id, multiple) for start in starts]


class TaskMetric:
    """Greedy answers to held-out prompts, through the backend, scored against references.

    `prompts` are the rendered conversations up to the assistant's reply, continued as raw
    text (the trainer's chat template, not the backend's); generation stops at the template's
    end-of-turn text. `score(completion, reference) -> float` is a registered reward function.
    """

    def __init__(self, name: str, score: Callable[..., float], backend: Any, prompts: Sequence[str],
                 references: Sequence[str], stop: Sequence[str], *, max_new_tokens: int = 32,
                 batch_size: int = 32) -> None:
        self.name, self.score, self.backend = name, score, backend
        self.prompts, self.references = list(prompts), list(references)
        self.stop, self.max_new_tokens, self.batch_size = tuple(stop), max_new_tokens, batch_size
        self.last_completions: list[str] = []

    def __call__(self) -> dict[str, float]:
        requests = [GenerationRequest(prompt=prompt, raw=True, max_tokens=self.max_new_tokens, temperature=0.0,
                                      stop=self.stop)
                    for prompt in self.prompts]
        completions = self.backend.generate_batch(requests, max_concurrency=self.batch_size)
        self.last_completions = [c.text for c in completions]
        scores = [float(self.score(c, r)) for c, r in zip(self.last_completions, self.references)]
        return {f"eval_{self.name}": sum(scores) / max(len(scores), 1)}


class Evaluator:
    """`evaluate(model)`: `eval_loss` on the held-out batches and the task metric, if any."""

    def __init__(self, nll_sum: Any, batches: Sequence[Mapping[str, Any]], task: TaskMetric | None = None) -> None:
        self.loss = heldout_loss(nll_sum, batches)
        self.task = task

    def __call__(self, model: Any) -> dict[str, float]:
        metrics = dict(self.loss(model))
        if self.task is not None:
            metrics.update(self.task())
        return metrics


def trimmed_prompt(text: str, tokenizer: Any, keep: int) -> str:
    """`text` cut to its last `keep` tokens, so prompt and answer fit the model's context."""
    ids = tokenizer.encode(text)
    return text if len(ids) <= keep else tokenizer.decode(ids[-keep:])
