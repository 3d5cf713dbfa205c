"""The `hf` tokenizer: any transformers tokenizer as a `rung.interfaces.Tokenizer`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rung.records import Message

from rung_hf.options import HFTokenizerOptions

# Special tokens that end an assistant turn in common chat formats (generation stops there).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|end_of_turn|>")


def messages_as_dicts(messages: Sequence[Message | Mapping[str, str]]) -> list[dict[str, str]]:
    out = []
    for m in messages:
        if isinstance(m, Mapping):
            out.append({"role": str(m["role"]), "content": str(m["content"])})
        else:
            out.append({"role": m.role, "content": m.content})
    return out


def plain_chat(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """The format for tokenizers without a chat template (base models): `Role: text` lines."""
    parts = []
    for m in messages:
        if m["role"] == "system":
            parts.append(f"{m['content']}\n\n")
        else:
            parts.append(f"{m['role'].capitalize()}: {m['content']}\n")
    if add_generation_prompt:
        parts.append("Assistant:")
    return "".join(parts)


def render_chat(hf: Any, messages: Sequence[Message | Mapping[str, str]], add_generation_prompt: bool = True) -> str:
    """The conversation as one prompt string: the tokenizer's chat template, or `plain_chat`."""
    turns = messages_as_dicts(messages)
    if getattr(hf, "chat_template", None):
        return hf.apply_chat_template(turns, tokenize=False, add_generation_prompt=add_generation_prompt)
    return plain_chat(turns, add_generation_prompt)


def end_of_turn_ids(hf: Any) -> list[int]:
    """Ids of the end-of-turn special tokens this tokenizer has (<|im_end|>, <|eot_id|>, ...)."""
    decoder = getattr(hf, "added_tokens_decoder", {}) or {}
    special = {str(tok): i for i, tok in decoder.items() if getattr(tok, "special", True)}
    return [special[t] for t in END_OF_TURN_TOKENS if t in special]


class HFTokenizer:
    """A transformers tokenizer (`.hf`) behind rung's Tokenizer interface.

    `encode` adds no special tokens; `decode` keeps them (`skip_special_tokens=True` drops
    them); `apply_chat_template` uses the tokenizer's own Jinja template, or plain
    `Role: text` lines when it has none.
    """

    def __init__(self, options: HFTokenizerOptions | None = None, *, hf: Any = None, **_: Any) -> None:
        if hf is None:
            if options is None:
                raise TypeError("HFTokenizer needs options (path=...) or hf=<a transformers tokenizer>")
            from rung_hf.loading import load_tokenizer

            hf = load_tokenizer(options.path, field="tokenizer.path", revision=options.revision,
                                trust_remote_code=options.trust_remote_code,
                                local_files_only=options.local_files_only)
        if options is not None and options.chat_template:
            hf.chat_template = options.chat_template
        self.hf = hf

    @classmethod
    def from_pretrained(cls, path: str, **options: Any) -> "HFTokenizer":
        """`HFTokenizer.from_pretrained("dir or org/name", revision=..., chat_template=...)`."""
        return cls(HFTokenizerOptions(path=str(path), **options))

    # ------------------------------------------------------------------ rung.interfaces.Tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def special_tokens(self) -> dict[str, int]:
        out = {}
        for i, tok in (getattr(self.hf, "added_tokens_decoder", {}) or {}).items():
            if getattr(tok, "special", False):
                out[str(tok)] = int(i)
        for tok in getattr(self.hf, "all_special_tokens", []) or []:
            if tok not in out:
                tid = self.hf.convert_tokens_to_ids(tok)
                if isinstance(tid, int) and tid != self.hf.unk_token_id or tok == self.hf.unk_token:
                    out[tok] = int(tid)
        return out

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
    def end_of_turn_id(self) -> int | None:
        """The id of the token that ends an assistant turn (<|im_end|>, <|eot_id|>, <|end|>), if any."""
        ids = end_of_turn_ids(self.hf)
        return ids[0] if ids else None

    @property
    def chat_template(self) -> str | None:
        return getattr(self.hf, "chat_template", None)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; no special tokens are added (written ones become their ids)."""
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens,
                              clean_up_tokenization_spaces=False)

    def apply_chat_template(self, messages: Sequence[Message | Mapping[str, str]],
                            add_generation_prompt: bool = True) -> str:
        return render_chat(self.hf, messages, add_generation_prompt)

    def save(self, directory: str | Path) -> None:
        """tokenizer.json, tokenizer_config.json (chat template included) and friends."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(str(directory))

    def __repr__(self) -> str:
        return f"HFTokenizer({type(self.hf).__name__}, vocab_size={self.vocab_size})"


def as_hf_tokenizer(tokenizer: Any) -> Any:
    """A transformers tokenizer for any rung Tokenizer (its own, or loaded from what it saves),
    or for a folder / hub id given as a string (`rung.backend("hf", model=..., tokenizer="dir")`)."""
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer.hf
    if isinstance(tokenizer, (str, Path)):
        from rung_hf.loading import load_tokenizer

        return load_tokenizer(str(tokenizer), field="backend.tokenizer")
    if hasattr(tokenizer, "apply_chat_template") and hasattr(tokenizer, "pad_token_id") and hasattr(tokenizer, "batch_decode"):
        return tokenizer  # already a transformers tokenizer
    import tempfile

    from rung.errors import RungError

    from rung_hf.loading import load_tokenizer

    if not hasattr(tokenizer, "save"):
        raise RungError(f"the hf backend cannot use tokenizer {type(tokenizer).__name__}: it cannot save itself")
    with tempfile.TemporaryDirectory(prefix="rung-hf-tok-") as tmp:
        tokenizer.save(tmp)
        hf = load_tokenizer(tmp, field="tokenizer")
        # Keep the transformers object usable after the folder is gone.
        hf.name_or_path = type(tokenizer).__name__
    return hf
