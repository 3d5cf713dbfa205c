"""A `transformers` tokenizer behind rung's Tokenizer protocol: the one adapter every plugin uses.

Duck-typed (it never checks a transformers class) and imports transformers only inside the
functions that load one, so the core stays light. rung-hf's `hf` tokenizer, rung-torch's and
rung-jax's loading of a transformers checkpoint, and the trainers that receive a transformers
tokenizer all wrap it here, so a missing chat template means the same everywhere: the
`chat_template` property is None, and decoding continues messages as plain text
(`rung.decoding.prompt`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rung.errors import RungError
from rung.records import Message

# Special tokens that end an assistant turn in common chat formats (generation stops there).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|end_of_turn|>")


def is_transformers_tokenizer(obj: Any) -> bool:
    """A transformers tokenizer object (not a rung Tokenizer)."""
    return type(obj).__module__.startswith("transformers") or (
        hasattr(obj, "convert_tokens_to_ids") and hasattr(obj, "batch_decode") and hasattr(obj, "pad_token_id"))


def messages_as_dicts(messages: Sequence[Message | Mapping[str, str]]) -> list[dict[str, str]]:
    out = []
    for m in messages:
        if isinstance(m, Mapping):
            out.append({"role": str(m["role"]), "content": str(m["content"])})
        else:
            out.append({"role": m.role, "content": m.content})
    return out


def load_transformers_tokenizer(path: str | Path, **kwargs: Any) -> Any:
    """`AutoTokenizer.from_pretrained(path)`, failures as one RungError line."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise RungError(f"{path}: this tokenizer is in the transformers format; pip install transformers") from None
    try:
        return AutoTokenizer.from_pretrained(str(path), **kwargs)
    except Exception as exc:  # one line for the user, whatever transformers raised
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise RungError(f"{path}: the tokenizer files cannot be loaded ({first})") from None


class TransformersTokenizer:
    """A transformers tokenizer (`.hf`) as a `rung.interfaces.Tokenizer`.

    `encode` adds no special tokens; `encode_prompt` adds the ones the model expects before a
    text (e.g. Llama's bos), as transformers' text-generation pipeline does; `decode` keeps
    them unless `skip_special_tokens`. `chat_template` is the tokenizer's Jinja template or
    None, and may be set (a trainer that teaches a chat format sets it; `save` writes it).
    """

    def __init__(self, hf: Any) -> None:
        self.hf = hf
        self._special: tuple[int, dict[str, int]] | None = None

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> TransformersTokenizer:
        """The tokenizer saved in `path` (a directory) through `AutoTokenizer`."""
        return cls(load_transformers_tokenizer(path, **kwargs))

    # ------------------------------------------------------------------ the Tokenizer protocol

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def special_tokens(self) -> dict[str, int]:
        size = len(self.hf)
        if self._special is None or self._special[0] != size:  # tokens may be added later
            out: dict[str, int] = {}
            for i, tok in (getattr(self.hf, "added_tokens_decoder", {}) or {}).items():
                if getattr(tok, "special", False):
                    out[str(tok)] = int(i)
            unk = getattr(self.hf, "unk_token", None)
            for tok in getattr(self.hf, "all_special_tokens", []) or []:
                if tok not in out:
                    tid = self.hf.convert_tokens_to_ids(tok)
                    if isinstance(tid, int) and (tid != self.hf.unk_token_id or tok == unk):
                        out[tok] = int(tid)
            self._special = (size, out)
        return dict(self._special[1])

    @property
    def eos_id(self) -> int | None:
        return self.hf.eos_token_id

    @property
    def bos_id(self) -> int | None:
        return self.hf.bos_token_id

    @property
    def pad_id(self) -> int | None:
        return self.hf.pad_token_id

    @property
    def end_of_turn_ids(self) -> list[int]:
        """Ids of the end-of-turn special tokens this tokenizer has (<|im_end|>, <|eot_id|>, ...)."""
        special = self.special_tokens
        return [special[t] for t in END_OF_TURN_TOKENS if t in special]

    @property
    def end_of_turn_id(self) -> int | None:
        """The token that ends an assistant turn (<|im_end|>, <|eot_id|>, <|end|>), if any."""
        ids = self.end_of_turn_ids
        return ids[0] if ids else None

    @property
    def chat_template(self) -> str | None:
        template = getattr(self.hf, "chat_template", None)
        return template or None

    @chat_template.setter
    def chat_template(self, template: str | None) -> None:
        self.hf.chat_template = template or None

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; no special tokens are added (written ones become their ids)."""
        return list(self.hf.encode(text, add_special_tokens=False))

    def encode_prompt(self, text: str) -> list[int]:
        """Ids of `text` as the start of a prompt: with the special tokens the tokenizer adds
        around a text (Llama's bos), as transformers' text-generation pipeline encodes it."""
        ids = list(self.hf.encode(text, add_special_tokens=True))
        bos = self.hf.bos_token_id
        if bos is not None and ids[:2] == [bos, bos]:  # the text (a rendered chat) starts with it
            ids.pop(0)
        eos = self.hf.eos_token_id
        if eos is not None and ids and ids[-1] == eos:  # a post-processor that closes the text:
            plain = self.encode(text)  # a prompt is continued, never ended
            if not plain or plain[-1] != eos:
                ids.pop()
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens,
                              clean_up_tokenization_spaces=False)

    def apply_chat_template(self, messages: Sequence[Message | Mapping[str, str]],
                            add_generation_prompt: bool = True) -> str:
        """The conversation through the tokenizer's own Jinja template."""
        if not self.chat_template:
            raise RungError(f"tokenizer {self.name!r} has no chat template")
        return self.hf.apply_chat_template(messages_as_dicts(messages), tokenize=False,
                                           add_generation_prompt=add_generation_prompt)

    def save(self, directory: str | Path) -> None:
        """tokenizer.json, tokenizer_config.json (chat template included, if any) and friends."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(str(directory))

    # ------------------------------------------------------------------ helpers

    @property
    def name(self) -> str:
        return str(getattr(self.hf, "name_or_path", "") or type(self.hf).__name__)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.hf).__name__}, vocab_size={self.vocab_size})"


def as_rung_tokenizer(obj: Any) -> Any:
    """`obj` itself when it is a rung Tokenizer (or None), else the adapter around the
    transformers tokenizer it is or holds (`.hf`, `.tokenizer`)."""
    if obj is None or isinstance(obj, TransformersTokenizer):
        return obj
    if not is_transformers_tokenizer(obj) and all(
            hasattr(obj, attr) for attr in ("encode", "decode", "apply_chat_template")):
        return obj
    inner = getattr(obj, "hf", None) or getattr(obj, "tokenizer", None)
    if inner is not None and is_transformers_tokenizer(inner):
        return TransformersTokenizer(inner)
    return TransformersTokenizer(obj)
