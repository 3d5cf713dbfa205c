"""Options of the `byte` and `bpe` tokenizers."""

from __future__ import annotations

from pydantic import Field, field_validator

from rung.options import Options

#: The special tokens every rung tokenizer has unless told otherwise. `<|endoftext|>`
#: separates documents (it is the eos and bos token), `<|pad|>` pads batches, and the role
#: markers plus `<|end|>` (end of a turn) make the chat template.
DEFAULT_SPECIAL_TOKENS: list[str] = [
    "<|endoftext|>",
    "<|pad|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|tool|>",
    "<|end|>",
]


class _Common(Options):
    special_tokens: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SPECIAL_TOKENS),
        description="special tokens, in id order; the first is eos/bos (document separator)",
    )
    eos_token: str = Field("<|endoftext|>", description="end of a document (also used as bos)")
    pad_token: str | None = Field("<|pad|>", description="padding token; null: none")
    chat_template: str | None = Field(
        None, description="chat template: null (none: a model continues text), 'rung' (rung's "
        "<|role|> format) or Jinja text; a trainer that teaches chat sets one"
    )
    path: str | None = Field(
        None, description="load a saved tokenizer (a folder that save() wrote, or its tokenizer.json)"
    )

    @field_validator("special_tokens")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("special_tokens has duplicates")
        if any(not token for token in value):
            raise ValueError("special_tokens has an empty token")
        return value


class ByteTokenizerOptions(_Common):
    """The byte tokenizer: ids 0-255 are the UTF-8 bytes, special tokens follow from 256."""


class BPETokenizerOptions(_Common):
    """Byte-level BPE: trained on a corpus (vocab_size, min_frequency) or loaded from `path`
    (any byte-level tokenizer.json)."""

    vocab_size: int = Field(8192, ge=300, le=1_000_000, description="size of the vocabulary after training")
    min_frequency: int = Field(2, ge=1, description="a pair must occur this often to be merged")
    max_training_bytes: int | None = Field(
        None, ge=1, description="train on at most this many bytes of the corpus (null: all of it)"
    )
