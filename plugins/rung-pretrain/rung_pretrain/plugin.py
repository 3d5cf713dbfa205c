"""Registration of rung-pretrain's pieces: light, imports nothing heavy."""

from __future__ import annotations

from rung.hookspecs import hookimpl


@hookimpl
def rung_register_data_sources(register):
    register("corpus", impl="rung_pretrain.corpus:Corpus", options="rung_pretrain.options:CorpusOptions",
             summary="a pretraining corpus: sources, cleaning, tokenizer training and token shards")
    register("files", impl="rung_pretrain.sources.files:FilesSource", options="rung_pretrain.options:FilesOptions",
             summary="local files, folders and globs: text, Markdown, code, JSONL, Parquet")
    register("stdlib", impl="rung_pretrain.sources.stdlib:StdlibSource", options="rung_pretrain.options:StdlibOptions",
             summary="the Python standard library's own source code (~30 MB of .py)")
    register("hf_dataset", impl="rung_pretrain.sources.hf:HFDatasetSource",
             options="rung_pretrain.options:HFDatasetOptions",
             summary="a Hugging Face `datasets` dataset: local files, or the hub where reachable")


@hookimpl
def rung_register_trainers(register):
    register("pretrain", impl="rung_pretrain.trainer:PretrainTrainer",
             options="rung_pretrain.trainer_options:PretrainOptions",
             summary="next-token prediction on packed token shards", objectives=("next_token_loss", "token_nll_sum"))


@hookimpl
def rung_register_commands(register):
    register("prepare", impl="rung_pretrain.cli:prepare",
             summary="Prepare a corpus: read, clean, dedup, train the tokenizer, write token shards.")
