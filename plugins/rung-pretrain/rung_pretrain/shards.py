"""Token shards: tokenize documents in parallel into binary files with an index and metadata.

A shard is three files with one stem (`train/00003_0000`):
  `.tokens` uint16 (vocab <= 65535) or uint32, little-endian, every document followed by eos
  `.idx`    uint64 end offset (in tokens) of each document
  `.json`   {"tokens", "documents", "dtype", "xxh64", "vocab_size", "tokenizer"}; written
            last, so a shard without it was never finished
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from rung_pretrain.documents import nbytes
from rung_pretrain.progress import ProgressFile


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<u4")


def is_validation(doc_id: str, val_fraction: float) -> bool:
    """A document's split, from a hash of its id: stable whatever the number of workers."""
    if val_fraction <= 0:
        return False
    import xxhash

    return xxhash.xxh64_intdigest(doc_id.encode("utf-8", "surrogatepass")) / 2.0**64 < val_fraction


class ShardWriter:
    """Appends documents to `<folder>/<rank>_<n>.tokens`, starting a new shard when full."""

    def __init__(self, folder: str | Path, rank: int, vocab_size: int, tokenizer_hash: str,
                 max_tokens: int = 100_000_000) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rank, self.vocab_size, self.tokenizer_hash = rank, vocab_size, tokenizer_hash
        self.dtype = token_dtype(vocab_size)
        self.max_tokens = max_tokens
        self.files: list[str] = []
        self._number = 0
        self._handle: Any = None

    def _open(self) -> None:
        import xxhash

        self.stem = f"{self.rank:05d}_{self._number:04d}"
        self._number += 1
        self._handle = open(self.folder / f"{self.stem}.tokens", "wb")
        self._ends: list[int] = []
        self._tokens = 0
        self._digest = xxhash.xxh64()

    def add(self, ids: Any) -> None:
        """One document's ids (the eos must already end them)."""
        if self._handle is None:
            self._open()
        array = np.asarray(ids, dtype=self.dtype)
        data = array.tobytes()
        self._handle.write(data)
        self._digest.update(data)
        self._tokens += array.size
        self._ends.append(self._tokens)
        if self._tokens >= self.max_tokens:
            self._finish()

    def _finish(self) -> None:
        if self._handle is None:
            return
        self._handle.close()
        np.asarray(self._ends, dtype="<u8").tofile(self.folder / f"{self.stem}.idx")
        meta = {"tokens": self._tokens, "documents": len(self._ends), "dtype": self.dtype.str,
                "xxh64": self._digest.hexdigest(), "vocab_size": self.vocab_size,
                "tokenizer": self.tokenizer_hash}
        tmp = self.folder / f"{self.stem}.json.tmp"
        tmp.write_text(json.dumps(meta) + "\n")
        os.replace(tmp, self.folder / f"{self.stem}.json")
        self.files.append(self.stem)
        self._handle = None

    def close(self) -> list[str]:
        self._finish()
        return self.files


class TokenizeToShards(PipelineStep):
    """Tokenizes this task's documents in small batches and writes train/validation shards.

    Each document is encoded without special tokens and followed by the eos id.
    """

    type = "🔢 - TOKENIZER"
    name = "token shards"

    def __init__(self, output_dir: str, tokenizer_file: str, eos_id: int, vocab_size: int,
                 tokenizer_hash: str, val_fraction: float = 0.01, max_shard_tokens: int = 100_000_000,
                 batch_docs: int = 64, progress_dir: str | None = None, threads: bool = False) -> None:
        super().__init__()
        self.output_dir, self.tokenizer_file = output_dir, tokenizer_file
        self.eos_id, self.vocab_size, self.tokenizer_hash = eos_id, vocab_size, tokenizer_hash
        self.val_fraction, self.max_shard_tokens, self.batch_docs = val_fraction, max_shard_tokens, batch_docs
        self.progress_dir, self.threads = progress_dir, threads

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if not self.threads:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(self.tokenizer_file)
        # encode_batch_fast: the same ids without character offsets, ~15% less CPU
        encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
        writers = {split: ShardWriter(Path(self.output_dir) / split, rank, self.vocab_size, self.tokenizer_hash,
                                      self.max_shard_tokens) for split in ("train", "validation")}
        progress = ProgressFile(self.progress_dir, rank)
        batch: list[Any] = []

        def flush() -> None:
            encodings = encode([doc.text for doc in batch], add_special_tokens=False)
            for doc, encoding in zip(batch, encodings):
                ids = encoding.ids
                ids.append(self.eos_id)
                split = "validation" if is_validation(doc.id, self.val_fraction) else "train"
                writers[split].add(ids)
                self.stat_update(f"{split}_docs")
                self.stat_update(f"{split}_tokens", value=len(ids), unit="doc")
                progress.add(nbytes(doc))
            batch.clear()

        try:
            for doc in data:
                batch.append(doc)
                if len(batch) >= self.batch_docs:
                    flush()
            if batch:
                flush()
            for writer in writers.values():
                writer.close()
        finally:
            progress.close()
        return
        yield  # a generator, like every datatrove step
