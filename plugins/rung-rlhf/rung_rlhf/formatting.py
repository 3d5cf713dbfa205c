"""Token ids of prompts and answers, rendered with rung_lora's chat templates as sft renders them.

A prompt is the conversation rendered with the generation prompt (`<|im_start|>assistant\\n`),
tokenized as a whole, exactly as the model sees it when it is asked to answer. An answer is
what sft trains of an assistant turn: the reply and the template's end-of-turn text (or eos),
so a loss over completion tokens teaches the model to stop. `prompt + completion` are the ids
of the whole rendered conversation (rung_lora.data.encode_chat splits them), so the
preference trainers, GRPO and PPO train on the same tokens sft would.

Truncation: a prompt longer than `max_prompt_length` loses its start (the question stays
next to the answer), an answer longer than `max_completion_length` its end; the layouts of
`rung_rlhf.packing` then fit everything into `max_length` rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rung.errors import RungError
from rung.records import ChatExample, Message, PreferencePair

from rung_lora.data import encode_chat
from rung_lora.templates import ChatRenderer, make_renderer


@dataclass(frozen=True)
class TokenizedPair:
    """A preference pair as token ids: the prompt once, each answer with its end of turn."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    margin: float = 0.0
    truncated: int = 0  # how many of the three were cut


class Formatter:
    """Renders and tokenizes prompts and answers; `renderer` from `make_renderer` (or `formatter`)."""

    def __init__(self, renderer: ChatRenderer, tokenizer: Any, *, system_prompt: str | None = None,
                 max_prompt_length: int | None = None, max_completion_length: int | None = None) -> None:
        self.renderer, self.tokenizer, self.system_prompt = renderer, tokenizer, system_prompt
        self.max_prompt_length, self.max_completion_length = max_prompt_length, max_completion_length

    def messages(self, prompt: Sequence[Message]) -> list[Message]:
        """The prompt's turns, with the configured system prompt when it has none."""
        turns = list(prompt)
        if self.system_prompt and not any(m.role == "system" for m in turns):
            turns.insert(0, Message("system", self.system_prompt))
        return turns

    def prompt_text(self, prompt: Sequence[Message]) -> str:
        """The prompt rendered up to where the assistant's answer starts."""
        return self.renderer(self.messages(prompt), add_generation_prompt=True)

    def prompt_ids(self, prompt: Sequence[Message]) -> list[int]:
        """The rendered prompt's ids, its start cut to `max_prompt_length` (what generation sees)."""
        return self._cut_prompt(self.tokenizer.encode(self.prompt_text(prompt)))[0]

    def split(self, prompt: Sequence[Message], answer: str) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids) of the conversation ending in `answer`, untruncated: the
        answer ids are the tokens sft trains of that assistant turn (reply and end of turn)."""
        example = ChatExample((*self.messages(prompt), Message("assistant", answer)))
        encoded = encode_chat(example, self.renderer, self.tokenizer, train_on="last_assistant")
        trained = [i for i, keep in enumerate(encoded.trained) if keep]
        if not trained:
            raise RungError(f"the answer {answer[:40]!r} renders as no tokens with template '{self.renderer.name}'")
        return encoded.ids[: trained[0]], encoded.ids[trained[0]: trained[-1] + 1]

    def completion_ids(self, prompt: Sequence[Message], answer: str) -> list[int]:
        """The ids of `answer` as an assistant turn after `prompt`, cut to `max_completion_length`."""
        return self._cut_completion(self.split(prompt, answer)[1])[0]

    def pair(self, pair: PreferencePair) -> TokenizedPair:
        """The pair's prompt (once) and both answers, truncated as the options say."""
        prompt, chosen = self.split(pair.prompt, pair.chosen)
        prompt_again, rejected = self.split(pair.prompt, pair.rejected)
        if prompt_again != prompt:  # a template whose prompt tokens depend on the answer
            raise RungError(f"chat template '{self.renderer.name}' tokenizes the prompt differently before "
                            "the chosen and the rejected answer; set trainer.chat_template to chatml or plain")
        prompt, cut_p = self._cut_prompt(prompt)
        chosen, cut_c = self._cut_completion(chosen)
        rejected, cut_r = self._cut_completion(rejected)
        return TokenizedPair(prompt, chosen, rejected, pair.margin, cut_p + cut_c + cut_r)

    def _cut_prompt(self, ids: list[int]) -> tuple[list[int], int]:
        limit = self.max_prompt_length
        return (ids[len(ids) - limit:], 1) if limit and len(ids) > limit else (ids, 0)

    def _cut_completion(self, ids: list[int]) -> tuple[list[int], int]:
        limit = self.max_completion_length
        return (ids[:limit], 1) if limit and len(ids) > limit else (ids, 0)


def formatter(options: Any, tokenizer: Any) -> Formatter:
    """The Formatter a trainer's options (`rung_rlhf.preference_options.FeedbackOptions`) ask for."""
    return Formatter(make_renderer(options.chat_template, tokenizer), tokenizer,
                     system_prompt=options.system_prompt, max_prompt_length=options.max_prompt_length,
                     max_completion_length=options.max_completion_length)
