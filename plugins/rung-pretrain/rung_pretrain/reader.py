"""Read token shards: numpy memmaps, verified against their metadata; no torch, no jax.

    stream = TokenBatches("runs/x/data", batch_size=8, seq_len=256, seed=0)
    batch = next(stream)        # {"input_ids": int64[8, 256], "targets": int64[8, 256]}

`targets` are already shifted (the `rung.objectives` convention): `targets[:, t]` is the token
that follows `input_ids[:, t]`.
Each batch is a function of (seed, rank, step) alone, so `state_dict()` is just the step and
a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rung.errors import RungError

SPLITS = ("train", "validation")
MANIFEST = "manifest.json"
_CHUNK = 1 << 24  # tokens per chunk when scanning whole files


def load_manifest(directory: str | Path) -> dict[str, Any]:
    """The shards folder's manifest.json, or a RungError saying how to make one."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise RungError(f"{path}: no token shards here (run `rung prepare CONFIG` first)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise RungError(f"{path}: corrupt manifest ({exc})") from None


def file_checksum(array: np.ndarray) -> str:
    """xxh64 of an array's bytes, chunk by chunk (what the writer records)."""
    import xxhash

    digest = xxhash.xxh64()
    flat = array.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        digest.update(memoryview(np.ascontiguousarray(flat[start : start + _CHUNK])).cast("B"))
    return digest.hexdigest()


class TokenShards:
    """One split of a shards folder as a single virtual token array, checked on open.

    `verify="full"` (default) checks sizes, the document index, the xxh64 checksum and that
    every token is below the vocabulary size; `"sizes"` checks sizes and the index only.
    """

    def __init__(self, directory: str | Path, split: str = "train", verify: str = "full") -> None:
        if split not in SPLITS:
            raise RungError(f"unknown split '{split}'; one of: {', '.join(SPLITS)}")
        if verify not in ("full", "sizes"):
            raise RungError(f"verify must be 'full' or 'sizes', not {verify!r}")
        self.directory = Path(directory)
        self.split = split
        self.manifest = load_manifest(self.directory)
        self.vocab_size = int(self.manifest["tokenizer"]["vocab_size"])
        self.dtype = np.dtype(self.manifest["dtype"])
        self.eos_id = self.manifest["tokenizer"].get("eos_id")
        names = self.manifest["splits"][split]["files"]
        self.files: list[Path] = []
        self.arrays: list[np.ndarray] = []
        self.num_documents = 0
        for name in names:
            array, documents = self._open(self.directory / split / name, verify)
            self.num_documents += documents
            if array.size:
                self.files.append(self.directory / split / name)
                self.arrays.append(array)
        sizes = [a.size for a in self.arrays]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64) if sizes else np.zeros(1, np.int64)
        self.num_tokens = int(self.starts[-1])
        expected = int(self.manifest["splits"][split]["tokens"])
        if self.num_tokens != expected:
            raise RungError(
                f"{self.directory / MANIFEST}: {split} split should hold {expected} tokens, its files hold "
                f"{self.num_tokens} (shards and manifest from different runs? run `rung prepare --force`)"
            )

    def _open(self, stem: Path, verify: str) -> tuple[np.ndarray, int]:
        meta_path = stem.with_suffix(".json")
        tokens_path = stem.with_suffix(".tokens")
        index_path = stem.with_suffix(".idx")
        for path in (meta_path, tokens_path, index_path):
            if not path.is_file():
                raise RungError(f"{path}: missing shard file "
                                "(the shards folder is incomplete; rerun `rung prepare --force`)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            tokens, documents = int(meta["tokens"]), int(meta["documents"])
        except (ValueError, KeyError, TypeError) as exc:
            raise RungError(f"{meta_path}: corrupt shard metadata ({exc})") from None
        if np.dtype(meta.get("dtype", self.dtype)) != self.dtype:
            raise RungError(f"{meta_path}: dtype {meta.get('dtype')} but the manifest says {self.dtype}")
        want = tokens * self.dtype.itemsize
        have = tokens_path.stat().st_size
        if have != want:
            what = "truncated" if have < want else "longer than its metadata says"
            raise RungError(f"{tokens_path}: shard is {what}: {have} bytes, expected {want} ({tokens} tokens)")
        if index_path.stat().st_size != documents * 8:
            raise RungError(
                f"{index_path}: document index is {index_path.stat().st_size} bytes, expected {documents * 8} "
                f"({documents} documents)"
            )
        array = np.memmap(tokens_path, dtype=self.dtype, mode="r") if tokens else np.zeros(0, self.dtype)
        if documents:
            index = np.fromfile(index_path, dtype="<u8")
            not_increasing = index.size > 1 and np.any(np.diff(index.astype(np.int64)) <= 0)
            if int(index[-1]) != tokens or not_increasing or index[0] == 0:
                raise RungError(f"{index_path}: document index does not match {tokens_path.name} (corrupt)")
        elif tokens:
            raise RungError(f"{meta_path}: {tokens} tokens but no documents (corrupt)")
        if verify == "full" and tokens:
            checksum = meta.get("xxh64")
            if checksum and file_checksum(array) != checksum:
                raise RungError(f"{tokens_path}: checksum mismatch: the shard is corrupt "
                                "(rerun `rung prepare --force`)")
            top = max(int(array[s : s + _CHUNK].max()) for s in range(0, tokens, _CHUNK))
            if top >= self.vocab_size:
                raise RungError(f"{tokens_path}: token id {top} >= vocab size {self.vocab_size} (corrupt)")
        return array, documents

    def take(self, start: int, length: int) -> np.ndarray:
        """`length` tokens from virtual position `start` (may span files), as int64."""
        out = np.empty(length, dtype=np.int64)
        file = int(np.searchsorted(self.starts, start, side="right")) - 1
        done = 0
        while done < length:
            array = self.arrays[file]
            offset = start + done - int(self.starts[file])
            n = min(length - done, array.size - offset)
            out[done : done + n] = array[offset : offset + n]
            done += n
            file += 1
        return out

    def chunks(self) -> Iterator[np.ndarray]:
        """Every token, in chunks of at most 16M (for statistics)."""
        for array in self.arrays:
            for start in range(0, array.size, _CHUNK):
                yield np.asarray(array[start : start + _CHUNK])

    def __repr__(self) -> str:
        return (f"TokenShards({str(self.directory)!r}, split={self.split!r}, tokens={self.num_tokens}, "
                f"files={len(self.arrays)})")


def _shards(source: str | Path | TokenShards, split: str, verify: str = "full") -> TokenShards:
    if isinstance(source, TokenShards):
        return source
    directory = getattr(source, "dir", source)  # a PreparedData works too
    return TokenShards(directory, split=split, verify=verify)


class TokenBatches:
    """An endless, deterministic stream of next-token batches: a `rung.interfaces.BatchStream`.

    sampling="random": batch `step` holds `batch_size` windows of `seq_len + 1` tokens at
    positions drawn by `numpy.random.default_rng([seed, rank, step])`.
    sampling="sequential": consecutive windows (overlapping by one token), window `i` for
    rank `i % world_size`, in order, starting over at the end.
    """

    def __init__(self, source: str | Path | TokenShards, batch_size: int, seq_len: int, *,
                 split: str = "train", sampling: str = "random", seed: int = 0, rank: int = 0,
                 world_size: int = 1, verify: str = "full") -> None:
        if sampling not in ("random", "sequential"):
            raise RungError(f"sampling must be 'random' or 'sequential', not {sampling!r}")
        if batch_size < 1 or seq_len < 1:
            raise RungError(f"batch_size and seq_len must be positive (got {batch_size}, {seq_len})")
        if not 0 <= rank < world_size:
            raise RungError(f"rank {rank} is not in 0..{world_size - 1}")
        self.shards = _shards(source, split, verify)
        self.batch_size, self.seq_len = batch_size, seq_len
        self.sampling, self.seed, self.rank, self.world_size = sampling, seed, rank, world_size
        self.step = 0
        n = self.shards.num_tokens
        if n < seq_len + 1:
            raise RungError(
                f"the {split} split of {self.shards.directory} has {n} tokens, fewer than seq_len + 1 = "
                f"{seq_len + 1}: lower seq_len or add data"
            )
        self._windows = (n - 1) // seq_len  # sequential windows in the whole stream
        self._rank_windows = len(range(rank, self._windows, world_size))
        if sampling == "sequential" and self._rank_windows == 0:
            raise RungError(f"the {split} split has {self._windows} windows of {seq_len}, "
                            f"none for rank {rank} of {world_size}")

    @property
    def tokens_per_epoch(self) -> int:
        return self.shards.num_tokens

    def starts(self, step: int) -> np.ndarray:
        """The start positions of the windows of batch `step`."""
        if self.sampling == "random":
            rng = np.random.default_rng([self.seed, self.rank, step])
            return rng.integers(0, self.shards.num_tokens - self.seq_len, size=self.batch_size)
        j = (np.arange(self.batch_size, dtype=np.int64) + step * self.batch_size) % self._rank_windows
        return (self.rank + self.world_size * j) * self.seq_len

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """Batch number `step` (what `next()` returns at that step)."""
        windows = np.stack([self.shards.take(int(s), self.seq_len + 1) for s in self.starts(step)])
        return {"input_ids": np.ascontiguousarray(windows[:, :-1]), "targets": np.ascontiguousarray(windows[:, 1:])}

    def __iter__(self) -> TokenBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        out = self.batch(self.step)
        self.step += 1
        return out

    @property
    def epoch(self) -> float:
        """Passes over the rank's data so far (in tokens)."""
        per_rank = self.shards.num_tokens / self.world_size
        return self.step * self.batch_size * self.seq_len / per_rank

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "sampling": self.sampling, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, "batch_size": self.batch_size, "seq_len": self.seq_len,
                "tokens": self.shards.num_tokens}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "step" not in state:
            raise RungError("a TokenBatches state needs 'step'")
        self.step = int(state["step"])

    def __repr__(self) -> str:
        return (f"TokenBatches({self.shards!r}, batch_size={self.batch_size}, seq_len={self.seq_len}, "
                f"sampling={self.sampling!r}, step={self.step})")


def validation_batches(source: str | Path | TokenShards, batch_size: int, seq_len: int, *,
                       max_batches: int | None = None, rank: int = 0, world_size: int = 1,
                       split: str = "validation", verify: str = "full") -> list[dict[str, np.ndarray]]:
    """Fixed windows of the validation split, the same on every call.

    Non-overlapping windows of `seq_len + 1` tokens; with `max_batches`, that many batches'
    worth of windows spread evenly over the whole split. Rank `r` gets every
    `world_size`-th window. Full batches only, unless there are fewer windows than a batch.
    """
    shards = _shards(source, split, verify)
    windows = (shards.num_tokens - 1) // seq_len
    if windows < 1:
        raise RungError(
            f"the {split} split of {shards.directory} has {shards.num_tokens} tokens, too few for one window "
            f"of {seq_len + 1}: raise data.shards.val_fraction or lower seq_len"
        )
    chosen = np.arange(windows, dtype=np.int64)
    if max_batches is not None and windows > max_batches * batch_size * world_size:
        chosen = np.unique(np.linspace(0, windows - 1, max_batches * batch_size * world_size).astype(np.int64))
    mine = chosen[rank::world_size]
    if mine.size == 0:
        mine = chosen[:1]
    full = mine.size // batch_size
    groups = [mine[i * batch_size : (i + 1) * batch_size] for i in range(full)] or [mine]
    out = []
    for group in groups:
        rows = np.stack([shards.take(int(w) * seq_len, seq_len + 1) for w in group])
        out.append({"input_ids": np.ascontiguousarray(rows[:, :-1]), "targets": np.ascontiguousarray(rows[:, 1:])})
    return out


def unigram_loss(source: str | Path | Any, *, alpha: float = 1.0) -> float:
    """Cross-entropy (nats/token) on validation tokens of a unigram model fit on train tokens.

    Add-`alpha` smoothing over the vocabulary. The baseline a pretrained model must beat.
    """
    train = _shards(source, "train")
    validation = _shards(source, "validation")
    if validation.num_tokens == 0:
        raise RungError(f"the validation split of {validation.directory} is empty: raise data.shards.val_fraction")
    counts = np.zeros(train.vocab_size, dtype=np.float64)
    for chunk in train.chunks():
        counts += np.bincount(chunk, minlength=train.vocab_size)[: train.vocab_size]
    logp = np.log(counts + alpha) - math.log(counts.sum() + alpha * train.vocab_size)
    total = 0.0
    for chunk in validation.chunks():
        total -= float(logp[chunk.astype(np.int64)].sum())
    return total / validation.num_tokens
