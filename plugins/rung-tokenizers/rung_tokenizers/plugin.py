"""Registration of rung's own tokenizers: light, imports nothing heavy."""

from __future__ import annotations

from rung import hookimpl


@hookimpl
def rung_register_tokenizers(register):
    register("byte", impl="rung_tokenizers.tokenizer:ByteTokenizer",
             options="rung_tokenizers.options:ByteTokenizerOptions",
             summary="256 byte ids plus special tokens; needs no training")
    register("bpe", impl="rung_tokenizers.tokenizer:BPETokenizer",
             options="rung_tokenizers.options:BPETokenizerOptions",
             summary="byte-level BPE (Hugging Face tokenizers), trainable, saved as tokenizer.json")
