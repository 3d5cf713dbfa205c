"""`multiple_choice`: pick the choice the model finds most likely after the question.

Each JSONL line has a question (or context), its choices and the answer (the right choice's
0-based index, or its text). The context is the question (or `template` filled with the
line's fields), as plain text or, with `chat: true`, as a user turn through the model's chat
template with the assistant's turn opened (a chat-tuned model answers there); each choice is
scored as the continuation `choice_prefix + choice` by the scorer's `loglikelihood`. Metrics:

- accuracy        the most likely choice is the answer
- accuracy_norm   the same with each log-likelihood divided by the choice's UTF-8 bytes
                  (lm-evaluation-harness's acc_norm, which divides by characters: the same
                  for ASCII), so long choices are not penalised for having more tokens
- count           questions scored
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from rung.errors import ConfigError
from rung.evaluation import EvalTaskOptions

from rung_eval.tasks.files import Record, read_records, resolve_paths, task_scorer

QUESTION_FIELDS = ("question", "context", "query", "prompt")


class MultipleChoiceOptions(EvalTaskOptions):
    """Where the questions are and how their lines are read."""

    path: list[str] = Field(..., min_length=1, description="JSONL file(s) or globs, relative to the spec")
    question_field: str | None = Field(None, description=f"null: the first of {', '.join(QUESTION_FIELDS)}")
    choices_field: str = "choices"
    answer_field: str = Field("answer", description="the right choice: its 0-based index or its text")
    template: str | None = Field(
        None, description="the context as a format string of the line's fields, e.g. 'Q: {question}\\nA:'")
    chat: bool = Field(False, description="the context as a user turn through the model's chat template")
    choice_prefix: str | None = Field(None, description="put between the context and each choice; "
                                                        "null: ' ' (plain text), '' (chat: true)")
    batch_size: int | None = Field(None, ge=1, description="requests per batch; null: the scorer's default")
    limit: int | None = Field(None, ge=1, description="score only the first N questions")

    @field_validator("path", mode="before")
    @classmethod
    def _one_path(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


@dataclass(frozen=True)
class Question:
    """One question: the context, its choices and the index of the right one."""

    context: str
    choices: tuple[str, ...]
    answer: int


def parse_question(record: Record, options: MultipleChoiceOptions) -> Question:
    """A line as a Question; a malformed one is an error naming its file and line."""
    if options.template is not None:
        context = record.render(options.template)
    elif options.question_field is not None:
        context = str(record.field(options.question_field))
    else:
        context = str(record.first_field(QUESTION_FIELDS, "question"))
    choices = record.field(options.choices_field)
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, (str, int, float)) for c in choices):
        raise ConfigError(f"{record.where}: '{options.choices_field}' is a list of two or more choices")
    choices = tuple(str(c) for c in choices)
    answer = record.field(options.answer_field)
    if isinstance(answer, bool) or not isinstance(answer, (int, str)):
        raise ConfigError(f"{record.where}: '{options.answer_field}' is the right choice's index or text")
    if isinstance(answer, str):
        if answer not in choices:
            raise ConfigError(f"{record.where}: answer {answer!r} is not one of the choices {list(choices)}")
        answer = choices.index(answer)
    if not 0 <= answer < len(choices):
        raise ConfigError(f"{record.where}: answer index {answer} is outside the {len(choices)} choices (0-based)")
    return Question(context, choices, answer)


def argmax(values: list[float]) -> int:
    """The index of the largest value (the first on a tie)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def chat_context(backend: Any, question: str, task: str) -> str:
    """The question as a user turn in the backend tokenizer's chat template, the assistant's turn opened."""
    from rung.decoding.prompt import has_chat_template
    from rung.records import Message

    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is None or not has_chat_template(tokenizer):
        raise ConfigError(f"task '{task}': chat: true, but the model's tokenizer has no chat template; "
                          "write the prompt format in 'template' instead")
    return tokenizer.apply_chat_template([Message("user", question)], add_generation_prompt=True)


class MultipleChoiceTask:
    """Accuracy by log-likelihood of each choice (an `rung.evaluation.EvalTask`)."""

    def __init__(self, options: MultipleChoiceOptions, base_dir: Path | str = ".", **_: Any) -> None:
        self.options = options
        self.name = options.label
        self.files = resolve_paths(options.path, Path(base_dir), self.name)
        self.questions = [parse_question(r, options) for r in read_records(self.files, options.limit)]

    def evaluate(self, backend: Any, model: Any | None = None) -> dict[str, float]:
        opts = self.options
        prefix = opts.choice_prefix if opts.choice_prefix is not None else "" if opts.chat else " "
        contexts = [chat_context(backend, q.context, self.name) if opts.chat else q.context for q in self.questions]
        requests = [(context, prefix + choice) for q, context in zip(self.questions, contexts) for choice in q.choices]
        scored = task_scorer(backend, model, self.name, batch_size=self.options.batch_size).loglikelihood(requests)
        right = right_norm = 0
        at = 0
        for question in self.questions:
            lls = [float(ll) for ll, _ in scored[at:at + len(question.choices)]]
            at += len(question.choices)
            lengths = [max(1, len(choice.encode("utf-8"))) for choice in question.choices]
            right += argmax(lls) == question.answer
            right_norm += argmax([ll / n for ll, n in zip(lls, lengths)]) == question.answer
        count = len(self.questions)
        return {"accuracy": right / count, "accuracy_norm": right_norm / count, "count": float(count)}
