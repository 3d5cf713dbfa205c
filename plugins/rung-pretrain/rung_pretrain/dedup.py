"""Deduplication: exact (xxh64 of the text) and near (MinHash), across every task.

The first reading stage numbers each task's documents (`Tag`) and writes their exact hashes
(`ExactHashes`) and MinHash signatures (`MinhashSignatures`); datatrove's MinHash stages 2-3
and `ExactFind` decide which numbers go; the last reading stage, which sees exactly the same
document stream, drops them (`DedupFilter`) and counts each removal by reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.utils.word_tokenizers import WordTokenizer

from rung_pretrain.documents import INDEX, nbytes
from rung_pretrain.progress import ProgressFile


class Tag(PipelineStep):
    """Numbers the documents of this task's stream (dedup decisions refer to these numbers)."""

    type = "🏷 - TAG"
    name = "index"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for index, doc in enumerate(data):
            doc.metadata[INDEX] = index
            yield doc


class SplitWords(WordTokenizer):
    """Whitespace word splitting for MinHash shingles (datatrove's default needs spaCy)."""

    def word_tokenize(self, text: str) -> list[str]:
        return text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        return text.split("\n")

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [(m.start(), m.end()) for m in re.finditer(r"[^\n]+", text)]


class MinhashSignatures(MinhashDedupSignature):
    """datatrove's MinHash stage 1 with whitespace words, one hash per word (n-grams combined
    with numpy) and signatures computed in blocks so long documents keep memory flat."""

    name = "🎯 MinHash signatures"
    _BLOCK = 512

    def __init__(self, output_folder: str, config: MinhashConfig, progress_dir: str | None = None) -> None:
        super().__init__(output_folder=output_folder, config=config, language=SplitWords())
        self.progress_dir = progress_dir

    def get_shingles(self, text: str) -> np.ndarray:
        # Words: lower-cased, split on whitespace (datatrove's default simplification and
        # spaCy splitting cost ~5x more for the same near-duplicates on code and prose).
        words = text.lower().split()
        n = self.config.n_grams
        if len(words) < n:
            return np.zeros((0, 1), dtype=np.uint64)
        import xxhash

        hashes = np.fromiter(map(xxhash.xxh64_intdigest, words), dtype=np.uint64, count=len(words))
        count = len(words) - n + 1
        with np.errstate(over="ignore"):
            shingles = hashes[:count].copy()
            for j in range(1, n):
                shingles = shingles * np.uint64(0x100000001B3) + hashes[j : j + count]
        if self.config.hash_config.precision == 32:
            shingles &= np.uint64(0xFFFFFFFF)
        return shingles.reshape((-1, 1))

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        # Each of the num_buckets * hashes_per_bucket hash functions is x -> mix(a*x + b)
        # (mod 2**64, a odd, then an xor-shift): a bijection of 64-bit values, about twice
        # as fast in numpy as datatrove's (a*x + b) % (2**61 - 1), and as good at ordering.
        a, b = self.parameters
        a = a | np.uint64(1)
        low = None
        with np.errstate(over="ignore"):
            for start in range(0, shingles.shape[0], self._BLOCK):
                phv = shingles[start : start + self._BLOCK] * a
                phv += b
                phv ^= phv >> np.uint64(31)
                if self.config.hash_config.precision == 32:
                    phv &= np.uint64(self.config.hash_config.max)
                block_min = phv.min(axis=0)
                low = block_min if low is None else np.minimum(low, block_min)
        return [x.tolist() for x in np.split(low.astype(self.config.hash_config.np_dtype), self.config.num_buckets)]


class ExactHashes(PipelineStep):
    """Writes (xxh64 of the text, document number) for every document of this task."""

    type = "🫂 - DEDUP"
    name = "exact hashes"

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        import xxhash

        hashes: list[int] = []
        for doc in data:
            hashes.append(xxhash.xxh64_intdigest(doc.text.encode("utf-8", "surrogatepass")))
            yield doc
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        np.asarray(hashes, dtype=np.uint64).tofile(Path(self.folder) / f"{rank:05d}.hashes")


def _read_removals(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype="<u4") if path.is_file() else np.zeros(0, dtype="<u4")


class ExactFind(PipelineStep):
    """Finds exact duplicates across all tasks; keeps the copy that MinHash keeps, else the first.

    Writes `<rank>.remove` (sorted uint32 document numbers) for each task.
    """

    type = "🫂 - DEDUP"
    name = "exact duplicates"

    def __init__(self, folder: str, tasks: int, minhash_folder: str | None = None) -> None:
        super().__init__()
        self.folder, self.tasks, self.minhash_folder = folder, tasks, minhash_folder

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        folder = Path(self.folder)
        hashes, ranks, indices = [], [], []
        for task in range(self.tasks):
            h = (
                np.fromfile(folder / f"{task:05d}.hashes", dtype=np.uint64)
                if (folder / f"{task:05d}.hashes").is_file()
                else np.zeros(0, np.uint64)
            )
            hashes.append(h)
            ranks.append(np.full(h.size, task, dtype=np.int64))
            indices.append(np.arange(h.size, dtype=np.int64))
        h, r, i = np.concatenate(hashes), np.concatenate(ranks), np.concatenate(indices)
        # documents MinHash removes lose the tie: a survivor of MinHash is kept if there is one
        removed_by_minhash = np.zeros(h.size, dtype=bool)
        if self.minhash_folder:
            offsets = np.concatenate([[0], np.cumsum([x.size for x in hashes])])
            for task in range(self.tasks):
                gone = _read_removals(Path(self.minhash_folder) / f"{task:06d}.remove").astype(np.int64)
                removed_by_minhash[offsets[task] + gone] = True
        order = np.lexsort((i, r, removed_by_minhash, h))  # by hash, survivors first, then position
        sorted_h = h[order]
        first = np.ones(order.size, dtype=bool)
        first[1:] = sorted_h[1:] != sorted_h[:-1]
        # a group whose best member MinHash removes is left to MinHash (not an exact removal)
        group_start = np.maximum.accumulate(np.where(first, np.arange(order.size), 0))
        best_removed = removed_by_minhash[order][group_start]
        duplicate = ~first & ~best_removed
        for task in range(self.tasks):
            mine = np.sort(i[order][duplicate & (r[order] == task)]).astype("<u4")
            mine.tofile(folder / f"{task:05d}.remove")
            self.stat_update("duplicates", value=int(mine.size))
        return None


class DedupFilter(PipelineStep):
    """Drops the documents that exact dedup and MinHash chose, by their number in the stream."""

    type = "🫂 - DEDUP"
    name = "dedup filter"

    def __init__(self, exact_folder: str | None, minhash_folder: str | None, progress_dir: str | None = None) -> None:
        super().__init__()
        self.exact_folder, self.minhash_folder, self.progress_dir = exact_folder, minhash_folder, progress_dir

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        exact = (
            set(_read_removals(Path(self.exact_folder) / f"{rank:05d}.remove").tolist()) if self.exact_folder else set()
        )
        near = (
            set(_read_removals(Path(self.minhash_folder) / f"{rank:06d}.remove").tolist())
            if self.minhash_folder
            else set()
        )
        progress = ProgressFile(self.progress_dir, rank)
        try:
            for doc in data:
                size = nbytes(doc)
                progress.add(size)
                self.stat_update("docs_in")
                self.stat_update("bytes_in", value=size, unit="bytes")
                index = doc.metadata[INDEX]
                reason = "exact_duplicate" if index in exact else "near_duplicate" if index in near else None
                if reason:
                    self.stat_update(f"removed/{reason}")
                    self.stat_update(f"removed_bytes/{reason}", value=size, unit="bytes")
                    continue
                self.stat_update("docs_out")
                self.stat_update("bytes_out", value=size, unit="bytes")
                yield doc
        finally:
            progress.close()
