"""A prepared shards folder: what identifies it, whether it is up to date, and the handle a
trainer reads it through.

`fingerprint` hashes what the shards depend on (the options that change the output, the
sources' files, the tokenizer); `prepare` writes it in ``manifest.json`` and `reuse` skips
the work when it matches. `PreparedData` is what `prepare` and `open_prepared` give back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rung.errors import RungError

FORMAT = 1


@dataclass
class PreparedData:
    """Token shards ready to train on, with the tokenizer that made them."""

    dir: Path
    tokenizer: Any
    manifest: dict[str, Any]
    report: list[dict[str, Any]] = field(default_factory=list)
    skipped: bool = False
    sampling: str = "random"

    @property
    def train_tokens(self) -> int:
        return int(self.manifest["splits"]["train"]["tokens"])

    @property
    def validation_tokens(self) -> int:
        return int(self.manifest["splits"]["validation"]["tokens"])

    def train_batches(self, batch_size: int, seq_len: int, *, seed: int = 0, rank: int = 0,
                      world_size: int = 1, sampling: str | None = None) -> Any:
        """A `TokenBatches` stream (a `rung.interfaces.BatchStream`) over the train split."""
        from rung_pretrain.reader import TokenBatches

        return TokenBatches(self.dir, batch_size, seq_len, split="train", sampling=sampling or self.sampling,
                            seed=seed, rank=rank, world_size=world_size)

    def validation_batches(self, batch_size: int, seq_len: int, *, max_batches: int | None = None,
                           rank: int = 0, world_size: int = 1) -> list[dict[str, Any]]:
        """Fixed validation windows, the same every call (see reader.validation_batches)."""
        from rung_pretrain.reader import validation_batches

        return validation_batches(self.dir, batch_size, seq_len, max_batches=max_batches, rank=rank,
                                  world_size=world_size)

    def unigram_loss(self) -> float:
        """Nats/token of a unigram model fit on train tokens, on validation tokens."""
        from rung_pretrain.reader import unigram_loss

        return unigram_loss(self.dir)


def open_prepared(directory: str | Path, sampling: str = "random") -> PreparedData:
    """Shards written earlier by `prepare`, with their tokenizer; no config needed."""
    from rung_tokenizers import load_tokenizer

    from rung_pretrain.reader import load_manifest

    directory = Path(directory)
    manifest = load_manifest(directory)
    tokenizer = load_tokenizer(directory / manifest["tokenizer"]["dir"])
    return PreparedData(directory, tokenizer, manifest, manifest.get("report", []), skipped=True, sampling=sampling)


def tokenizer_section(config: Any) -> dict[str, Any]:
    """The config's tokenizer section as the fingerprint and manifest record it."""
    section = getattr(config, "tokenizer", None)
    if section is None:
        return {"name": "bpe"}
    out = section.model_dump(mode="json")
    path = out.get("path")
    if path:  # a tokenizer loaded from a file: its content counts, not its name
        file = Path(path) / "tokenizer.json" if Path(path).is_dir() else Path(path)
        out["path_sha256"] = hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else None
    return out


def fingerprint(options: Any, sources: list[Any], tokenizer_section: dict[str, Any]) -> str:
    """What the shards depend on: options that change the output, the sources' files, the tokenizer."""
    data = options.model_dump(mode="json", exclude={"workers", "logging_dir", "sampling", "sources"})
    payload = {"format": FORMAT, "data": data, "tokenizer": tokenizer_section,
               "sources": [s.fingerprint() for s in sources]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def reuse(out: Path, stamp: str, sampling: str) -> PreparedData | None:
    """The shards in `out` if their manifest matches `stamp` and their files check out."""
    path = out / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    if manifest.get("fingerprint") != stamp:
        return None
    from rung_pretrain.reader import TokenShards

    try:
        for split in ("train", "validation"):
            TokenShards(out, split, verify="sizes")
        prepared = open_prepared(out, sampling=sampling)
    except RungError:
        return None
    return prepared
