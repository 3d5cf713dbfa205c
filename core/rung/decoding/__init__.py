"""The framework-free half of generation that every local backend (torch, jax, hf) shares.

`request_to_prompt` turns a GenerationRequest into prompt ids and a `Sampling`: the
chat-template rule (`rung.decoding.prompt`), the request's settings over the backend's
`Defaults`, the stop ids and strings, the max_tokens and context checks
(`rung.decoding.sampling`), token healing of a plain-text prompt (`rung.decoding.healing`).
`RowDecoder` (`rung.decoding.text`) turns the tokens a model
picks into text (and keeps their log-probabilities, built by `rung.decoding.logprobs`, when
asked). A backend supplies only the loop that picks tokens.
"""

from __future__ import annotations

from typing import Any

from rung.decoding.logprobs import LogprobRecords, top_count
from rung.decoding.prompt import encode_text, end_of_turn, has_chat_template, plain_text, prompt_text
from rung.decoding.sampling import (
    Defaults,
    Sampling,
    check_max_tokens,
    context_error,
    defaults_of,
    fit_max_tokens,
    sampling_for,
)
from rung.decoding.text import RowDecoder
from rung.errors import RungError
from rung.records import GenerationRequest

__all__ = [
    "Defaults", "LogprobRecords", "RowDecoder", "Sampling", "check_max_tokens", "context_error", "defaults_of",
    "encode_text",
    "end_of_turn", "fit_max_tokens", "has_chat_template", "plain_text", "prompt_text", "request_to_prompt",
    "sampling_for", "top_count",
]


def request_to_prompt(
    request: GenerationRequest,
    tokenizer: Any,
    defaults: Defaults,
    context: int | None = None,
    stop_ids: frozenset[int] | set[int] = frozenset(),
) -> tuple[list[int], Sampling]:
    """Prompt ids and decoding settings of `request`.

    `defaults`: the backend's settings for what the request leaves unset; `context`: the
    model's context length (None: unchecked); `stop_ids`: ids that end every generation of
    this model besides the tokenizer's eos (e.g. generation_config.json's eos_token_id list).
    Generation stops at eos, at the tokenizer's end-of-turn token, and, when the chat template
    was applied, at the template's end-of-turn marker.

    Token healing (the request's `token_healing`, else the backend's default) applies to a text
    prompt continued as plain text: a chat turn ends in the template's marker, a token prompt
    is scored as given, echo scores the prompt as written, and a constrained request starts its
    JSON afresh, so those are not healed (a request that asks for healing with a constraint
    is refused). The ids returned are then one shorter.
    """
    if request.prompt_ids is not None:  # a token prompt (/v1/completions): the ids as given
        ids, chat = [int(i) for i in request.prompt_ids], False
        vocab = getattr(tokenizer, "vocab_size", None)
        if not ids or (isinstance(vocab, int) and any(not 0 <= i < vocab for i in ids)):
            raise RungError(f"a token prompt must be a non-empty list of ids in [0, {vocab}), got {ids[:8]}...")
    else:
        text, chat = prompt_text(request, tokenizer)
        ids = encode_text(tokenizer, text, chat)
    stops = set(stop_ids)
    if tokenizer.eos_id is not None:
        stops.add(int(tokenizer.eos_id))
    turn_end = getattr(tokenizer, "end_of_turn_id", None)
    if turn_end is not None:
        stops.add(int(turn_end))
    strings: tuple[str, ...] = ()
    if chat:
        marker_ids, strings = end_of_turn(tokenizer)
        stops |= marker_ids
    healing = None
    wanted = request.token_healing if request.token_healing is not None else defaults.token_healing
    if wanted and request.constraint is not None and request.token_healing:
        raise RungError("token healing and a constraint (structured output) cannot be combined; "
                        "turn token_healing off for this request")
    if wanted and not chat and request.prompt_ids is None and not request.echo and request.constraint is None:
        from rung.decoding.healing import heal

        ids, healing = heal(ids, tokenizer)
    sampling = sampling_for(request, defaults, len(ids), context, stop=strings, stop_ids=frozenset(stops),
                            tokenizer=tokenizer, healing=healing)
    return ids, sampling
