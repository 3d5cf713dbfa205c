"""A rung Tokenizer view of a `transformers` tokenizer, for backends that hand one out as is."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rung.records import Message


def is_rung_tokenizer(obj: Any) -> bool:
    """A rung Tokenizer (encode/decode/apply_chat_template on Messages), not a raw HF one."""
    return not type(obj).__module__.startswith("transformers") and all(
        hasattr(obj, attr) for attr in ("encode", "decode", "apply_chat_template"))


class HFTokenizerView:
    """encode/decode/chat template of a `transformers` tokenizer, in rung's Tokenizer shape."""

    def __init__(self, tokenizer: Any) -> None:
        self.hf = tokenizer
        self.vocab_size = len(tokenizer)
        self.eos_id = tokenizer.eos_token_id
        self.bos_id = tokenizer.bos_token_id
        self.pad_id = tokenizer.pad_token_id
        self.special_tokens = {t: tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens}
        self.chat_template = getattr(tokenizer, "chat_template", None)

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def apply_chat_template(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        turns = [{"role": m.role, "content": m.content} for m in messages]
        return self.hf.apply_chat_template(turns, tokenize=False, add_generation_prompt=add_generation_prompt)

    def save(self, directory: str | Path) -> None:
        self.hf.save_pretrained(str(directory))


def as_rung_tokenizer(obj: Any) -> Any:
    """`obj` itself when it is a rung Tokenizer, else a view of the HF tokenizer it is."""
    if obj is None or is_rung_tokenizer(obj):
        return obj
    inner = getattr(obj, "hf", None) or getattr(obj, "tokenizer", None)
    if inner is not None and type(inner).__module__.startswith("transformers"):
        return HFTokenizerView(inner)
    return HFTokenizerView(obj)
