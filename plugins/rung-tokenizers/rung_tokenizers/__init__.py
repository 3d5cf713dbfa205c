"""rung's own tokenizers: `byte` (no training) and `bpe` (byte-level BPE, trainable).

`load_tokenizer(dir)` loads a tokenizer that either saved (or any byte-level tokenizer.json).
Names are imported on first use: the plugin module imports this package, and `rung --help`
must not pay for the `tokenizers` library.
"""

from typing import Any

__all__ = ["BPETokenizer", "ByteTokenizer", "CHAT_TEMPLATE", "RungTokenizer", "load_tokenizer"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from rung_tokenizers import tokenizer

        return getattr(tokenizer, name)
    raise AttributeError(f"module 'rung_tokenizers' has no attribute {name!r}")
