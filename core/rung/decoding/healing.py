"""Token healing: a prompt that ends inside a token, or in a space, continued as the model would.

A tokenizer splits "def " into ... "def", " ", and a model trained on text where a space
nearly always starts the next word (" name") has rarely seen a lone " " token: what follows it
is nonsense. Healing backs the prompt up by its last token and makes the first generated
token one whose bytes start with that token's bytes (" " -> " name", "pri" -> "print"); the
decoder then leaves the backed-up text out of the reply (`Sampling.healed`), so the completion
is exactly what follows the prompt's own text.

`heal(ids, tokenizer)` -> (the prompt ids one shorter, a `Healing`) or (ids, None) when there
is nothing to heal: a prompt of one token, a special last token, one that is part of a UTF-8
character. A `Healing` is a constraint in `rung.decoding.structured`'s sense (what
`Sampling.constraint` holds): `guide()` gives each row a `HealingGuide` whose `allowed()`
names the ids of the first step and nothing afterwards (no mask), so every local loop that
applies a `TokenGuide` (torch, hf, jax, continuous batching) applies healing unchanged.
"""

from __future__ import annotations

import threading
from typing import Any

from rung.decoding.structured import vocabulary


class Healing:
    """The first token of a healed prompt: it must start with `prefix` (the backed-up token's
    bytes, `text` as text). `ids`: every token id that does, best kept sorted; `cache` holds a
    framework's tensors of them (as a TokenConstraint's does)."""

    def __init__(self, prefix: bytes, ids: list[int]) -> None:
        self.prefix = prefix
        self.text = prefix.decode("utf-8")
        self.ids = ids
        self.allowed_ids = frozenset(ids)
        self.cache: dict[Any, Any] = {}

    def guide(self, stop_ids: frozenset[int], max_tokens: int) -> HealingGuide:
        """A fresh guide for one row (the signature of `TokenConstraint.guide`)."""
        return HealingGuide(self, stop_ids)

    def __repr__(self) -> str:
        return f"Healing(prefix={self.text!r}, {len(self.ids)} ids)"


class HealingGuide:
    """One row's healing: the first token among `Healing.ids`, then anything (a `TokenGuide`'s
    interface: `allowed`, `advance`, `failed`, `finished`, `stop_ids`)."""

    finished = False  # healing never ends a row

    def __init__(self, healing: Healing, stop_ids: frozenset[int]) -> None:
        self.constraint = healing
        self.stop_ids = tuple(sorted(stop_ids))
        self.first = True
        self.failed = False

    @property
    def complete(self) -> bool:
        return not self.first

    def allowed(self) -> tuple[Any, list[int]]:
        """(key, ids) the next token may be; after the first token no ids: no mask."""
        if self.first:
            return (self.constraint, "first"), self.constraint.ids
        return None, []

    def advance(self, token: int) -> None:
        """The row took `token`; a first token the healing did not allow (a loop that did not
        apply the mask) marks the guide failed."""
        if self.first and int(token) not in self.constraint.allowed_ids:
            self.failed = True
        self.first = False


_healings: dict[tuple[int, int], tuple[Any, Healing]] = {}  # (id(tokenizer), token id) -> (tokenizer, Healing)
_lock = threading.Lock()


def _ids_starting_with(root: tuple, prefix: bytes) -> list[int]:
    """The ids of every token in the vocabulary trie whose bytes start with `prefix`."""
    node = root
    for b in prefix:
        node = dict(node[1]).get(b)
        if node is None:
            return []
    found: list[int] = []
    todo = [node]
    while todo:
        ids, children = todo.pop()
        found.extend(ids)
        todo.extend(child for _, child in children)
    return sorted(found)


def healing_for(tokenizer: Any, token: int) -> Healing | None:
    """The `Healing` of a prompt ending in `token` (one per tokenizer and token: prompts that
    end alike share it), or None when that token cannot be healed (special, unknown bytes, or
    not whole UTF-8 characters)."""
    key = (id(tokenizer), int(token))
    entry = _healings.get(key)
    if entry is not None and entry[0] is tokenizer:
        return entry[1]
    vocab = vocabulary(tokenizer)
    prefix = vocab.tokens[token] if 0 <= token < len(vocab.tokens) else None
    if not prefix:
        return None
    try:
        prefix.decode("utf-8")
    except UnicodeDecodeError:
        return None
    healing = Healing(prefix, _ids_starting_with(vocab.root, prefix))
    if token not in healing.allowed_ids:  # the token itself must stay possible
        return None
    with _lock:
        _healings[key] = (tokenizer, healing)
    return healing


def heal(ids: list[int], tokenizer: Any) -> tuple[list[int], Healing | None]:
    """`ids` backed up by their last token, and the `Healing` its first new token must follow;
    (ids, None) when there is nothing to heal (see the module's docstring)."""
    if len(ids) < 2:
        return ids, None
    healing = healing_for(tokenizer, ids[-1])
    if healing is None:
        return ids, None
    return ids[:-1], healing
