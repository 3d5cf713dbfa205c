"""The GGUF file a `model` option names: the file itself, or a model folder's export, cached.

A folder (rung's or a transformers one, or a LoRA adapter: rung-gguf merges it) is exported
through the core's export registry by name (`rung.exporting.export("gguf", ...)`, registered
by rung-gguf), so this plugin never imports the exporter. The file is cached beside the
weights, in `<folder>/.llamacpp/<folder name>-<outtype>-<fingerprint>.gguf`: the fingerprint
hashes the name, size and modification time of every file in the folder, so new weights (a
training run saved again), a new tokenizer or config give a new file and a second load of the
same folder exports nothing. The export is written under a temporary name and renamed into
place (a crashed export never leaves a file that looks complete); older exports of the same
outtype are removed once the new one is in place. A folder that cannot be written to (a
read-only download) caches in ~/.cache/rung/llamacpp/ instead.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from rung.errors import ConfigError, RungError

CACHE_FOLDER = ".llamacpp"
GGUF_MAGIC = b"GGUF"


def gguf_for(model: str | Path, outtype: str) -> Path:
    """The GGUF file of `model` (a .gguf file, checked; or a folder, exported once per content)."""
    source = Path(model).expanduser()
    if source.is_dir():
        return cached_export(source, outtype)
    if not source.is_file():
        raise ConfigError(f"backend.model: '{source}' is neither a .gguf file nor a model folder")
    check_gguf(source)
    return source


def check_gguf(path: Path) -> None:
    """A one-line RungError unless `path` starts like a GGUF file."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise RungError(f"backend.model: cannot read '{path}' ({exc.strerror or exc})") from None
    if head != GGUF_MAGIC:
        raise RungError(f"backend.model: '{path}' is not a GGUF file (it does not start with 'GGUF'); give a .gguf "
                        "file or a model folder (rung export --format gguf writes one)")


def fingerprint(folder: Path) -> str:
    """A short hash of what the export reads: each file's name, size and modification time."""
    digest = hashlib.sha256()
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name == CACHE_FOLDER or entry.suffix == ".gguf" or entry.name == "Modelfile" or not entry.is_file():
            continue
        stat = entry.stat()
        digest.update(f"{entry.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def cache_folder(folder: Path) -> Path:
    """Where `folder`'s exports are kept: beside it, or the user's cache where it is read-only."""
    beside = folder / CACHE_FOLDER
    try:
        beside.mkdir(exist_ok=True)
        if os.access(beside, os.W_OK):
            return beside
    except OSError:
        pass
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rung" / "llamacpp"
    where = home / hashlib.sha256(str(folder.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    where.mkdir(parents=True, exist_ok=True)
    return where


def cached_export(folder: Path, outtype: str) -> Path:
    """`folder` as GGUF (`outtype` weights), exported now unless an export of its content exists."""
    stem = f"{folder.resolve().name or 'model'}-{outtype}"
    cache = cache_folder(folder)
    target = cache / f"{stem}-{fingerprint(folder)}.gguf"
    if target.is_file():
        return target
    from rung.exporting import export

    with tempfile.TemporaryDirectory(prefix=".export-", dir=cache) as scratch:
        written = export("gguf", folder, Path(scratch) / target.name, {"outtype": outtype, "modelfile": False})
        os.replace(written, target)
    for old in cache.glob(f"{stem}-*.gguf"):  # exports of earlier weights: stale now
        if old != target and len(old.name) == len(target.name):
            old.unlink(missing_ok=True)
    return target
