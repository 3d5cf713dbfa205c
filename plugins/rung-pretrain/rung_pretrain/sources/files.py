"""Local files, folders and globs: plain text, Markdown, source code, JSONL, Parquet."""

from __future__ import annotations

import fnmatch
import glob
import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rung.errors import RungError
from rung.records import Document

from rung_pretrain.sources.base import Skip, SourceBase

SKIP_DIRS = {"__pycache__", "node_modules", "site-packages", "dist-packages"}
GLOB_CHARS = set("*?[")


def file_format(path: str, wanted: str = "auto") -> str:
    if wanted != "auto":
        return wanted
    lower = path.lower()
    if lower.endswith((".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")):
        return "jsonl"
    if lower.endswith(".parquet"):
        return "parquet"
    return "text"


def decode_text(data: bytes) -> str | None:
    """UTF-8 text (a BOM dropped), or None if the bytes are not text (invalid UTF-8, NUL)."""
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


class FilesSource(SourceBase):
    """Files, folders (walked recursively, hidden and cache folders left out) and globs."""

    label = "files"

    def __init__(self, options: Any, **_: Any) -> None:
        super().__init__(options)
        self._units: list[tuple[str, int]] | None = None
        self._names: dict[str, str] = {}
        self.ignore_dirs: tuple[str, ...] = ()  # absolute folders never read (a run's own outputs)

    # ---------------------------------------------------------------- listing

    def roots(self) -> list[str]:
        return list(self.options.paths)

    def _accept(self, path: str, from_folder: bool) -> bool:
        if any(fnmatch.fnmatch(path, pattern) for pattern in getattr(self.options, "exclude", [])):
            return False
        suffixes = getattr(self.options, "suffixes", [])
        if from_folder and suffixes:
            lower = path.lower()
            return any(lower.endswith(s) for s in suffixes)
        return True

    def _walk(self, folder: str) -> Iterator[str]:
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS and self._keep_dir(root, d)
                             and os.path.abspath(os.path.join(root, d)) not in self.ignore_dirs)
            for name in sorted(files):
                if not name.startswith("."):
                    yield os.path.join(root, name)

    def _keep_dir(self, root: str, name: str) -> bool:
        return True

    def units(self) -> list[tuple[str, int]]:
        if self._units is not None:
            return self._units
        found: dict[str, int] = {}
        for entry in self.roots():
            entry = os.path.expanduser(str(entry))
            matches: list[tuple[str, bool, str]] = []  # (path, from a folder, base for names)
            if GLOB_CHARS & set(entry):
                paths = sorted(glob.glob(entry, recursive=True))
                if not paths:
                    raise RungError(f"{self.label} source: no file matches '{entry}'")
                base = _glob_base(entry)
                for path in paths:
                    if os.path.isdir(path):
                        matches += [(p, True, base) for p in self._walk(path)]
                    else:
                        matches.append((path, False, base))
            elif os.path.isdir(entry):
                matches = [(p, True, entry) for p in self._walk(entry)]
            elif os.path.isfile(entry):
                matches = [(entry, False, os.path.dirname(entry))]
            else:
                raise RungError(f"{self.label} source: '{entry}' is not a file, folder or matching glob")
            for path, from_folder, base in matches:
                if not os.path.isfile(path) or not self._accept(path, from_folder):
                    continue
                key = os.path.abspath(path)
                if any(key.startswith(folder + os.sep) for folder in self.ignore_dirs):
                    continue
                if key not in found:
                    found[key] = os.path.getsize(key)
                    self._names[key] = os.path.relpath(key, os.path.abspath(base or ".")).replace(os.sep, "/")
        self._units = list(found.items())
        return self._units

    def _mtime(self, key: str) -> Any:
        try:
            return os.stat(key).st_mtime_ns
        except OSError:
            return ""

    def name_of(self, key: str) -> str:
        if not self._names:
            self.units()
        return self._names.get(key, key)

    # ---------------------------------------------------------------- reading

    def read_unit(self, key: str) -> Iterator[Document | Skip]:
        name = f"{self.label}:{self.name_of(key)}"
        kind = file_format(key, getattr(self.options, "format", "auto"))
        if kind == "jsonl":
            yield from self._read_jsonl(key, name)
        elif kind == "parquet":
            yield from self._read_parquet(key, name)
        else:
            yield from self._read_text(key, name)

    def _read_text(self, path: str, name: str) -> Iterator[Document | Skip]:
        limit = getattr(self.options, "max_file_bytes", None)
        try:
            size = os.path.getsize(path)
            if limit is not None and size > limit:
                yield Skip("too_large", size, name)
                return
            data = Path(path).read_bytes()
        except OSError:
            yield Skip("unreadable", 0, name)
            return
        text = decode_text(data)
        if text is None:
            yield Skip("undecodable", len(data), name)
            return
        yield Document(text=text, id=name, source=self.label)

    def _read_jsonl(self, path: str, name: str) -> Iterator[Document | Skip]:
        field = self.options.text_field
        opener = gzip.open if path.lower().endswith(".gz") else open
        try:
            with opener(path, "rb") as handle:
                for number, line in enumerate(handle, 1):
                    where = f"{name}#{number}"
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except UnicodeDecodeError:
                        yield Skip("undecodable", len(line), where)
                        continue
                    except (ValueError, RecursionError):  # not JSON; nested past the decoder's limit
                        yield Skip("unparsable", len(line), where)
                        continue
                    text = record.get(field) if isinstance(record, dict) else None
                    if not isinstance(text, str):
                        yield Skip("no_text_field", len(line), where)
                        continue
                    yield Document(text=text, id=where, source=self.label)
        except (OSError, EOFError) as exc:  # a truncated gzip, an unreadable file
            yield Skip("unreadable", 0, f"{name} ({type(exc).__name__})")

    def _read_parquet(self, path: str, name: str) -> Iterator[Document | Skip]:
        import pyarrow.parquet as pq

        field = self.options.text_field
        try:
            parquet = pq.ParquetFile(path)
        except Exception:
            yield Skip("unparsable", os.path.getsize(path), name)
            return
        columns = parquet.schema_arrow.names
        if field not in columns:
            raise RungError(f"{path}: no column '{field}' (text_field); columns: {', '.join(columns)}")
        row = 0
        for batch in parquet.iter_batches(columns=[field], batch_size=1024):
            for value in batch.column(0).to_pylist():
                row += 1
                where = f"{name}#{row}"
                if isinstance(value, bytes):
                    value = decode_text(value)
                    if value is None:
                        yield Skip("undecodable", 0, where)
                        continue
                if not isinstance(value, str):
                    yield Skip("no_text_field", 0, where)
                    continue
                yield Document(text=value, id=where, source=self.label)


def _glob_base(pattern: str) -> str:
    parts = Path(pattern).parts
    base = []
    for part in parts:
        if GLOB_CHARS & set(part):
            break
        base.append(part)
    return str(Path(*base)) if base else "."
