"""A tokenizer's tokens as bytes (`token_bytes`) in a trie (`Vocabulary`), built once per
tokenizer and shared by every schema on it."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

from rung.byte_level import bytes_to_unicode


_BYTE_OF_CHAR = {c: b for b, c in bytes_to_unicode().items()}
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _pieces(tokenizer: Any, size: int) -> list[str | None] | None:
    """The vocabulary's token strings as stored (byte-level 'Ġthe', sentencepiece '▁the'), if
    the tokenizer exposes them."""
    inner = getattr(tokenizer, "hf_tokenizer", None) or getattr(tokenizer, "hf", None)
    if inner is None:
        return None
    backend = getattr(inner, "backend_tokenizer", inner)
    lookup = getattr(backend, "id_to_token", None)
    if lookup is None:
        convert = getattr(inner, "convert_ids_to_tokens", None)
        if convert is None:
            return None
        return list(convert(list(range(size))))
    return [lookup(i) for i in range(size)]


def token_bytes(tokenizer: Any) -> list[bytes | None]:
    """Each token id's bytes (None: a special token, or one whose bytes are unknown).

    Byte-level BPE spells a token's bytes in GPT-2's printable alphabet, a half UTF-8
    character included: read from the token strings when they agree with `decode` on the
    tokens that decode cleanly. Sentencepiece: '▁' is a space and '<0xAB>' a byte. Otherwise
    `decode([id])`, dropping tokens that decode to U+FFFD (a piece of a character).
    """
    size = int(tokenizer.vocab_size)
    special = {int(i) for i in (getattr(tokenizer, "special_tokens", None) or {}).values()}
    for name in ("eos_id", "bos_id", "pad_id", "end_of_turn_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            special.add(value)
    texts: dict[int, str] = {}

    def text_of(i: int) -> str:
        if i not in texts:
            texts[i] = tokenizer.decode([i])
        return texts[i]

    pieces = _pieces(tokenizer, size)
    mode = "decode"
    if pieces is not None:  # which spelling the pieces use: judged on a sample that decodes cleanly
        sample = [i for i in range(0, size, max(1, size // 2000)) if i not in special and pieces[i]]
        clean = [(pieces[i], text_of(i)) for i in sample if text_of(i) and "\ufffd" not in text_of(i)]
        as_bytes = sum(1 for p, t in clean if _byte_level(p) == t.encode("utf-8"))
        as_pieces = sum(1 for p, t in clean if p.replace("\u2581", " ") == t)
        if clean and as_bytes >= 0.9 * len(clean):
            mode = "byte-level"
        elif clean and "\u2581" in "".join(p for p, _ in clean) and as_pieces >= 0.5 * len(clean):
            mode = "sentencepiece"
    out: list[bytes | None] = []
    for i in range(size):
        if i in special:
            out.append(None)
            continue
        data: bytes | None = None
        piece = pieces[i] if pieces is not None else None
        if mode == "byte-level" and piece:
            data = _byte_level(piece)
        elif mode == "sentencepiece" and piece:
            byte = _BYTE_PIECE.fullmatch(piece)
            data = bytes([int(byte.group(1), 16)]) if byte else piece.replace("\u2581", " ").encode("utf-8")
        if data is None:
            text = text_of(i)
            data = text.encode("utf-8") if text and "\ufffd" not in text else None
        out.append(data or None)
    return out


def _byte_level(piece: str) -> bytes | None:
    try:
        return bytes(_BYTE_OF_CHAR[c] for c in piece)
    except KeyError:
        return None


class Vocabulary:
    """A tokenizer's tokens as bytes, in a trie (shared by every schema on that tokenizer)."""

    def __init__(self, tokens: Sequence[bytes | None]) -> None:
        self.tokens = list(tokens)
        root: dict = {}
        for token_id, data in enumerate(self.tokens):
            if not data:
                continue
            node = root
            for b in data:
                node = node.setdefault(b, {})
            node.setdefault(None, []).append(token_id)
        self.root = _freeze(root)
        self.single_bytes = frozenset(d[0] for d in self.tokens if d is not None and len(d) == 1)
        # Tokens that are plain string content (whole characters, no quote, backslash or control
        # character): inside a string of no maxLength they all lead to the same state, so only
        # the others (`other_root`) need walking there.
        self.plain_ids = [i for i, d in enumerate(self.tokens) if d and _plain(d)]
        other: dict = {}
        for token_id, data in enumerate(self.tokens):
            if data and not _plain(data):
                node = other
                for b in data:
                    node = node.setdefault(b, {})
                node.setdefault(None, []).append(token_id)
        self.other_root = _freeze(other)


def _plain(data: bytes) -> bool:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not any(c < " " or c in '"\\' for c in text)


def _freeze(node: dict) -> tuple:
    """A trie node as (ids ending here, ((byte, child), ...))."""
    children = tuple((b, _freeze(child)) for b, child in sorted((k, v) for k, v in node.items() if k is not None))
    return tuple(node.get(None, ())), children


_vocabularies: dict[int, tuple[Any, Vocabulary]] = {}
_vocabulary_lock = threading.Lock()


def vocabulary(tokenizer: Any) -> Vocabulary:
    """The `Vocabulary` of `tokenizer` (built once; token bytes from `token_bytes`)."""
    entry = _vocabularies.get(id(tokenizer))
    if entry is None or entry[0] is not tokenizer:
        with _vocabulary_lock:
            entry = _vocabularies.get(id(tokenizer))
            if entry is None or entry[0] is not tokenizer:
                entry = _vocabularies[id(tokenizer)] = (tokenizer, Vocabulary(token_bytes(tokenizer)))
    return entry[1]
