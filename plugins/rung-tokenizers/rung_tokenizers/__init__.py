"""rung's own tokenizers: `byte` (no training) and `bpe` (byte-level BPE, trainable).

`load_tokenizer(dir)` loads a tokenizer that either saved (or any byte-level tokenizer.json).
"""

from rung_tokenizers.tokenizer import (
    CHAT_TEMPLATE,
    BPETokenizer,
    ByteTokenizer,
    RungTokenizer,
    load_tokenizer,
)

__all__ = ["BPETokenizer", "ByteTokenizer", "CHAT_TEMPLATE", "RungTokenizer", "load_tokenizer"]
