"""Registration of rung-hf's backend and tokenizer: light, imports nothing heavy."""

from __future__ import annotations

from rung.hookspecs import hookimpl


@hookimpl
def rung_register_backends(register):
    register("hf", impl="rung_hf.backend:HFBackend", options="rung_hf.options:HFOptions",
             summary="any Hugging Face transformers causal LM (local dir or hub id): generate and train",
             framework="torch")


@hookimpl
def rung_register_tokenizers(register):
    register("hf", impl="rung_hf.tokenizer:HFTokenizer", options="rung_hf.options:HFTokenizerOptions",
             summary="any Hugging Face tokenizer (local dir or hub id), chat template included")
