"""Cut a message far longer than a row before it is rendered and tokenized.

A row holds `max_length` tokens, so of a 10 MB message only its first (or, truncating on the
left, last) few thousand tokens can reach it; tokenizing the rest costs gigabytes and a minute
for nothing. `cut_long_messages` keeps of each message only a piece that still tokenizes to at
least `2 * max_length` tokens on its own (found by tokenizing growing pieces, so it assumes
nothing about the tokenizer's bytes per token), and leaves short messages as they are.

The row is the same as without the cut: the cut lies at least `max_length` tokens past the
end of what the row keeps, and a tokenizer's choices at one place depend on text nearby only
(byte-level BPE, bytes, SentencePiece pieces: a few characters either side), so the tokens the
row keeps, and their loss mask, do not change; an example `truncation: drop` drops is still
longer than `max_length` after the cut, and is still dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rung.records import ChatExample

#: The piece kept tokenizes to at least this many rows' worth of tokens.
MARGIN = 2
#: Characters per token tried first, then this many times more at each try (4, 16, 64, ...).
GROWTH = 4


def kept_tokens(max_length: int) -> int:
    """Tokens a cut message still holds: twice a row, and never fewer than a row plus 64."""
    return max(MARGIN * max_length, max_length + 64)


def cut_text(text: str, tokenizer: Any, tokens: int, keep: str = "start") -> str:
    """The start (or end) of `text` that tokenizes to at least `tokens` tokens, or `text`
    itself when it is shorter than that. Costs one tokenization of at most ~`GROWTH` times the
    piece kept (each try is `GROWTH` times longer than the one before), whatever its length."""
    size = GROWTH * tokens
    while size < len(text):
        piece = text[:size] if keep == "start" else text[-size:]
        if len(tokenizer.encode(piece)) >= tokens:
            return piece
        size *= GROWTH
    return text


def cut_long_messages(example: ChatExample, tokenizer: Any, max_length: int,
                      truncation: str = "right") -> ChatExample:
    """`example` with each message longer than a row can use cut (its start kept, or its end
    when `truncation` is "left"); the same object when none is."""
    tokens = kept_tokens(max_length)
    keep = "end" if truncation == "left" else "start"
    messages = []
    changed = False
    for message in example.messages:
        content = message.content
        if isinstance(content, str) and len(content) > GROWTH * tokens:
            cut = cut_text(content, tokenizer, tokens, keep)
            if cut is not content:
                message = dataclasses.replace(message, content=cut)
                changed = True
        messages.append(message)
    return dataclasses.replace(example, messages=tuple(messages)) if changed else example

