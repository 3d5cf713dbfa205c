"""Cleaning steps: datatrove pipeline steps that count what they do.

Every step records, through datatrove's stats, `docs_in`, `bytes_in`, `docs_out`,
`bytes_out`, `changed` and, per reason, `removed/<reason>` and `removed_bytes/<reason>`;
`report()` turns a stage's merged stats into the cleaning report.

`reader_and_filters(...)` builds the reader and the filters in one place, so the first
MinHash stage (signatures) and the last (filter) see exactly the same document stream.
"""

from __future__ import annotations

import json
import os
import re
import time
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.data import Document as DTDocument
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.utils.word_tokenizers import WordTokenizer

from rung.records import Document

from rung_pretrain.sources.base import Skip, Unit

NBYTES = "nbytes"
INDEX = "rung_index"


def nbytes(doc: DTDocument) -> int:
    value = doc.metadata.get(NBYTES)
    if value is None:
        value = doc.metadata[NBYTES] = len(doc.text.encode("utf-8", "surrogatepass"))
    return value


class ProgressFile:
    """Bytes a task has processed, written now and then to a small JSON file the parent polls."""

    def __init__(self, folder: str | None, rank: int, every: float = 0.25) -> None:
        self.path = Path(folder) / f"{rank:05d}.json" if folder else None
        self.every, self.last, self.bytes, self.docs = every, 0.0, 0, 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, nbytes: int, docs: int = 1) -> None:
        self.bytes += nbytes
        self.docs += docs
        now = time.monotonic()
        if self.path is not None and now - self.last > self.every:
            self.last = now
            self._write(False)

    def close(self) -> None:
        if self.path is not None:
            self._write(True)

    def _write(self, done: bool) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"bytes": self.bytes, "docs": self.docs, "done": done}))
        os.replace(tmp, self.path)


def read_progress(folder: str | Path) -> tuple[int, int]:
    """(bytes, docs) summed over the progress files of a stage."""
    total = docs = 0
    for path in Path(folder).glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        total += data.get("bytes", 0)
        docs += data.get("docs", 0)
    return total, docs


# ------------------------------------------------------------------------------ reading


def balance(units: Sequence[Unit], world_size: int) -> list[list[Unit]]:
    """Deal units to workers, largest first to the least loaded: balanced and deterministic."""
    loads = [0] * world_size
    shares: list[list[Unit]] = [[] for _ in range(world_size)]
    for index, unit in sorted(enumerate(units), key=lambda pair: (-pair[1].size, pair[0])):
        worker = min(range(world_size), key=lambda w: (loads[w], w))
        loads[worker] += unit.size
        shares[worker].append((index, unit))
    return [[unit for _, unit in sorted(share, key=lambda pair: pair[0])] for share in shares]


class SourceReader(PipelineStep):
    """Reads the units of rung sources dealt to this task; counts what it must skip."""

    type = "📖 - READER"
    name = "rung sources"

    def __init__(self, sources: Sequence[Any], units: Sequence[Unit], progress_dir: str | None = None) -> None:
        super().__init__()
        self.sources = list(sources)
        self.units = list(units)
        self.progress_dir = progress_dir

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        progress = ProgressFile(self.progress_dir, rank)
        mine = balance(self.units, world_size)[rank]
        try:
            for unit in mine:
                source = self.sources[unit.source]
                for item in source.read_unit(unit.key):
                    if isinstance(item, Skip):
                        self.stat_update(f"skipped/{item.reason}")
                        self.stat_update(f"skipped_bytes/{item.reason}", value=item.nbytes, unit="bytes")
                        progress.add(item.nbytes)
                        continue
                    text = item.text
                    try:
                        size = len(text.encode("utf-8"))
                    except UnicodeEncodeError:  # lone surrogates (from JSON) cannot be UTF-8
                        text = _SURROGATE.sub("\ufffd", text)
                        size = len(text.encode("utf-8"))
                    doc = DTDocument(text=text, id=item.id, metadata={"source": item.source, NBYTES: size})
                    self.stat_update("docs_out")
                    self.stat_update("bytes_out", value=size, unit="bytes")
                    progress.add(size)
                    yield doc
        finally:
            progress.close()


# ------------------------------------------------------------------------------ cleaning


class CleanStep(PipelineStep):
    """A step that may change or remove each document, and counts both."""

    type = "🧹 - CLEAN"

    def apply(self, doc: DTDocument) -> str | None:
        """Change `doc` in place (return None) or return why it must go."""
        raise NotImplementedError

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            size = nbytes(doc)
            self.stat_update("docs_in")
            self.stat_update("bytes_in", value=size, unit="bytes")
            text = doc.text
            with self.track_time():
                reason = self.apply(doc)
            if reason is not None:
                self.stat_update(f"removed/{reason}")
                self.stat_update(f"removed_bytes/{reason}", value=size, unit="bytes")
                continue
            if doc.text is not text and doc.text != text:
                doc.metadata.pop(NBYTES, None)
                self.stat_update("changed")
            size = nbytes(doc)
            self.stat_update("docs_out")
            self.stat_update("bytes_out", value=size, unit="bytes")
            yield doc


class Normalize(CleanStep):
    name = "unicode normalisation"

    def __init__(self, form: str = "NFC") -> None:
        super().__init__()
        self.form = form

    def apply(self, doc: DTDocument) -> str | None:
        if not unicodedata.is_normalized(self.form, doc.text):
            doc.text = unicodedata.normalize(self.form, doc.text)
        return None


# C0 controls except tab, newline, carriage return and form feed; DEL; C1 controls.
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")
_ASCII_CONTROL = bytes([*range(0, 9), 0x0B, *range(0x0E, 0x20), 0x7F])
_ALLOWED_C0 = np.zeros(32, dtype=bool)
_ALLOWED_C0[[9, 10, 12, 13]] = True


def _codepoints(text: str) -> np.ndarray:
    """The code points of `text` as a uint32 array (for vectorised character tests)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
# Lone surrogates cannot be encoded as UTF-8; replace them.
_SURROGATE = re.compile("[\ud800-\udfff]")


class ControlChars(CleanStep):
    name = "control characters"

    def apply(self, doc: DTDocument) -> str | None:
        if doc.text.isascii():  # fast path: bytes.translate deletes at memory speed
            data = doc.text.encode("ascii")
            kept = data.translate(None, _ASCII_CONTROL)
            if len(kept) != len(data):
                doc.text = kept.decode("ascii")
            return None
        points = _codepoints(doc.text)
        control = ((points < 32) & ~_ALLOWED_C0[np.minimum(points, 31)]) | ((points >= 0x7F) & (points <= 0x9F))
        if control.any():
            doc.text = _CONTROL.sub("", doc.text)
        return None


class Strip(CleanStep):
    name = "strip trailing whitespace"

    def apply(self, doc: DTDocument) -> str | None:
        text = doc.text.rstrip()
        if len(text) != len(doc.text):
            doc.text = text
        return None


class LengthFilter(CleanStep):
    name = "length"

    def __init__(self, min_chars: int = 1, max_chars: int | None = None) -> None:
        super().__init__()
        self.min_chars, self.max_chars = min_chars, max_chars

    def apply(self, doc: DTDocument) -> str | None:
        n = len(doc.text)
        if n == 0 and self.min_chars > 0:
            return "empty"
        if n < self.min_chars:
            return "too_short"
        if self.max_chars is not None and n > self.max_chars:
            return "too_long"
        return None


_ASCII_SPACE = b" \t\n\r\x0b\x0c"
_ASCII_LETTERS = bytes(range(65, 91)) + bytes(range(97, 123))
_ASCII_SPACE_MASK = np.zeros(128, dtype=bool)
_ASCII_SPACE_MASK[list(_ASCII_SPACE)] = True


class QualityFilter(CleanStep):
    """Cheap heuristics that catch data blobs, generated files and boilerplate."""

    name = "quality"

    def __init__(self, min_alpha_fraction: float | None = 0.25, max_line_chars: int | None = 20_000,
                 max_duplicate_line_fraction: float | None = 0.5, min_words: int | None = None) -> None:
        super().__init__()
        self.min_alpha_fraction = min_alpha_fraction
        self.max_line_chars = max_line_chars
        self.max_duplicate_line_fraction = max_duplicate_line_fraction
        self.min_words = min_words

    def apply(self, doc: DTDocument) -> str | None:
        text = doc.text
        if self.min_words is not None and len(text.split()) < self.min_words:
            return "too_few_words"
        if self.min_alpha_fraction is not None:
            if text.isascii():  # fast path: bytes.translate runs at memory speed
                data = text.encode("ascii")
                visible = len(data.translate(None, _ASCII_SPACE))
                letters = len(data) - len(data.translate(None, _ASCII_LETTERS))
            else:  # every non-ASCII character from U+00C0 on counts as a letter (a heuristic)
                points = _codepoints(text)
                visible = points.size - int(np.count_nonzero(_ASCII_SPACE_MASK[np.minimum(points, 127)]))
                low = points | 32
                letters = int(np.count_nonzero((low >= 97) & (low <= 122)) + np.count_nonzero(points >= 0xC0))
            if visible and letters / visible < self.min_alpha_fraction:
                return "few_letters"
        lines = text.split("\n")
        if self.max_line_chars is not None and max(map(len, lines)) > self.max_line_chars:
            return "long_line"
        if self.max_duplicate_line_fraction is not None:
            long_lines = [line for line in map(str.strip, lines) if len(line) >= 10]
            if len(long_lines) >= 10:
                repeats = len(long_lines) - len(set(long_lines))
                if repeats / len(long_lines) > self.max_duplicate_line_fraction:
                    return "repeated_lines"
        return None


class Tag(PipelineStep):
    """Numbers the documents of this task's stream (dedup decisions refer to these numbers)."""

    type = "🏷 - TAG"
    name = "index"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for index, doc in enumerate(data):
            doc.metadata[INDEX] = index
            yield doc


def reader_and_filters(sources: Sequence[Any], units: Sequence[Unit], clean: Any,
                       progress_dir: str | None = None) -> list[PipelineStep]:
    """The reader and the cleaning steps, built the same way for every stage that reads."""
    steps: list[PipelineStep] = [SourceReader(sources, units, progress_dir)]
    if clean.normalize:
        steps.append(Normalize(clean.normalize))
    if clean.control_chars:
        steps.append(ControlChars())
    if clean.strip:
        steps.append(Strip())
    if clean.min_chars > 0 or clean.max_chars is not None:
        steps.append(LengthFilter(clean.min_chars, clean.max_chars))
    if clean.quality.enabled:
        q = clean.quality
        steps.append(QualityFilter(q.min_alpha_fraction, q.max_line_chars, q.max_duplicate_line_fraction, q.min_words))
    steps.append(Tag())
    return steps


# ------------------------------------------------------------------------------ dedup


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
            h = np.fromfile(folder / f"{task:05d}.hashes", dtype=np.uint64) if (folder / f"{task:05d}.hashes").is_file() else np.zeros(0, np.uint64)
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
        exact = set(_read_removals(Path(self.exact_folder) / f"{rank:05d}.remove").tolist()) if self.exact_folder else set()
        near = set(_read_removals(Path(self.minhash_folder) / f"{rank:06d}.remove").tolist()) if self.minhash_folder else set()
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


class TextWriter(PipelineStep):
    """Writes the cleaned documents of a task as JSONL ({"id", "text"}): the clean corpus."""

    type = "💽 - WRITER"
    name = "clean corpus"

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        path = Path(self.folder) / f"{rank:05d}.jsonl"
        with open(path.with_suffix(".tmp"), "w", encoding="utf-8") as out:
            for doc in data:
                out.write(json.dumps({"id": doc.id, "text": doc.text}, ensure_ascii=False) + "\n")
                self.stat_update("docs")
                yield doc
        os.replace(path.with_suffix(".tmp"), path)


def read_clean(folder: str | Path, files: Sequence[str] | None = None) -> Iterator[tuple[str, str]]:
    """(id, text) of the clean corpus, in a fixed order."""
    paths = [Path(folder) / f for f in files] if files is not None else sorted(Path(folder).glob("*.jsonl"))
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                yield record["id"], record["text"]


# ------------------------------------------------------------------------------ report


STEP_ORDER = ["rung sources", "unicode normalisation", "control characters", "strip trailing whitespace",
              "length", "quality", "dedup filter"]


STEP_LABELS = {"rung sources": "read", "unicode normalisation": "normalize", "control characters": "control chars",
               "strip trailing whitespace": "strip", "length": "length", "quality": "quality", "dedup filter": "dedup"}


def report_from_stats(stats_files: Sequence[Path]) -> list[dict[str, Any]]:
    """The cleaning report: one entry per step, from datatrove's merged stats.json files."""
    entries: dict[str, dict[str, Any]] = {}
    for path in stats_files:
        if not Path(path).is_file():
            continue
        for step in json.loads(Path(path).read_text()):
            name = step["name"].split(": ", 1)[-1]
            if name not in STEP_ORDER:
                continue
            if name == "dedup filter" or name not in entries:
                entries[name] = _entry(name, step["stats"])
    return [entries[name] for name in STEP_ORDER if name in entries]


def _total(stats: dict[str, Any], key: str) -> int:
    value = stats.get(key)
    if value is None:
        return 0
    if isinstance(value, dict):
        return int(value.get("total", 0))
    return int(value)


def _entry(name: str, stats: dict[str, Any]) -> dict[str, Any]:
    removed: dict[str, dict[str, int]] = {}
    for key in stats:
        for prefix in ("removed/", "skipped/"):
            if key.startswith(prefix):
                reason = key[len(prefix):]
                removed[reason] = {"docs": _total(stats, key),
                                   "bytes": _total(stats, f"{prefix[:-1]}_bytes/{reason}")}
    entry = {
        "step": STEP_LABELS.get(name, name),
        "docs_in": _total(stats, "docs_in"),
        "docs_out": _total(stats, "docs_out"),
        "bytes_in": _total(stats, "bytes_in"),
        "bytes_out": _total(stats, "bytes_out"),
        "changed": _total(stats, "changed"),
        "removed": removed,
    }
    if name == "rung sources":
        entry["docs_in"] = entry["docs_out"] + sum(r["docs"] for r in removed.values())
        entry["bytes_in"] = entry["bytes_out"] + sum(r["bytes"] for r in removed.values())
    return entry
