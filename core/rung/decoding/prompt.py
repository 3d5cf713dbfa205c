"""What a request asks the model to continue: the chat-template rule, prompt ids, stop ids.

The rule, the same on every local backend:

- A bare `prompt` (no messages, no system) is text to continue, as it is.
- A request with messages (or a system) goes through the tokenizer's chat template when the
  tokenizer has one, ending with the assistant's turn opened; generation then also stops at
  the template's end-of-turn marker.
- When the tokenizer has no chat template (a model never trained on chat: pretraining's
  output, a base model), or the request says `raw=True`, the messages are continued as plain
  text: the contents of `request.chat()` (the system first) joined by one newline, with no
  roles and no markers. A single user message is therefore exactly its text, so
  `rung prompt "def fibonacci(n):"` continues the code. (transformers' text-generation
  pipeline continues a string this way; rung never makes up a chat format nor refuses.)

A tokenizer says it has no template with `chat_template` None or ""; one without the attribute
is taken to have one (`apply_chat_template` is part of the Tokenizer protocol).
Plain text is encoded with the tokenizer's optional `encode_prompt(text)` when it has one (a
transformers tokenizer adds the tokens its model expects before a text, e.g. Llama's bos),
else `encode(text)`; a chat template writes its own special tokens, so its text is encoded
with `encode`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rung.errors import RungError
from rung.records import GenerationRequest, Message

_MARKER = "\x00rung-end-of-turn\x00"


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer brings a chat template (see the module docstring)."""
    template = getattr(tokenizer, "chat_template", _MARKER)
    return template is _MARKER or bool(template)


def plain_text(messages: Sequence[Message]) -> str:
    """Messages as plain text to continue: their contents joined by a newline."""
    return "\n".join(m.content for m in messages)


def prompt_text(request: GenerationRequest, tokenizer: Any) -> tuple[str, bool]:
    """(text, chat): the text to continue, and whether the chat template made it."""
    if not request.messages and not request.system:
        return request.prompt or "", False
    turns = request.chat()
    if request.raw or not has_chat_template(tokenizer):
        return plain_text(turns), False
    return tokenizer.apply_chat_template(turns, add_generation_prompt=True), True


def end_of_turn(tokenizer: Any) -> tuple[frozenset[int], tuple[str, ...]]:
    """(ids, strings) that end an assistant turn in the tokenizer's chat template.

    The tokenizer's `end_of_turn_id`, and what its template writes after an assistant's reply
    (rendered around a marker): one token becomes a stop id, longer text a stop string (e.g.
    ChatML's `<|im_end|>` on a byte tokenizer).
    """
    ids: set[int] = set()
    strings: tuple[str, ...] = ()
    special = getattr(tokenizer, "end_of_turn_id", None)
    if special is not None:
        ids.add(int(special))
    try:
        text = tokenizer.apply_chat_template(
            [Message("user", "x"), Message("assistant", _MARKER)], add_generation_prompt=False
        )
    except Exception:  # noqa: BLE001 - a template that cannot render this has no marker to find
        text = ""
    after = text.split(_MARKER, 1)[1].strip() if _MARKER in text else ""
    if after:
        encoded = tokenizer.encode(after)
        if len(encoded) == 1:
            ids.add(int(encoded[0]))
        elif not set(encoded) & (ids | {getattr(tokenizer, "eos_id", None)}):
            strings = (after,)  # (text holding eos or the end-of-turn token stops there already)
    return frozenset(ids), strings


def encode_text(tokenizer: Any, text: str, chat: bool) -> list[int]:
    """Prompt ids of `text` (see the module docstring); an empty prompt starts from bos (or eos,
    the document separator of rung's tokenizers)."""
    encode = tokenizer.encode if chat else getattr(tokenizer, "encode_prompt", tokenizer.encode)
    ids = [int(i) for i in encode(text)]
    if not ids:
        start = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
        if start is None:
            raise RungError("the prompt encodes to no tokens and the tokenizer has no bos/eos to start from: "
                            "give some text to continue")
        ids = [int(start)]
    return ids
