"""Checkpoints that are verified, not assumed: checksums of every file, and a resume that says
what it skipped.

A checkpoint overwritten in place at the same size looks complete by its sizes; only its
bytes can tell. Each framework's checkpoint records the SHA-256 of every file it wrote
(`digests`) and, on resume, `pick` takes the newest checkpoint whose files still match,
printing one line for each newer one it skipped and why. When every checkpoint is damaged,
resume is an error that names them (they are kept), never a silent start from step 0.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from rung.errors import RungError

MANIFEST = "rung-manifest.json"  # in a checkpoint folder whose format has no JSON of its own


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """The file's SHA-256, read in chunks (bounded memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def digests(folder: str | Path, names: Iterable[str] | None = None) -> dict[str, dict[str, int | str]]:
    """{relative path: {"size", "sha256"}} of `names` in `folder`, or of every file under it."""
    folder = Path(folder)
    if names is None:
        names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                       if p.is_file() and p.name != MANIFEST)
    return {name: {"size": (folder / name).stat().st_size, "sha256": sha256(folder / name)} for name in names}


def damage(folder: str | Path, expected: Mapping[str, Mapping[str, int | str]]) -> str | None:
    """What is wrong with `folder` against its recorded digests, or None when every file matches."""
    folder = Path(folder)
    for name, want in expected.items():
        path = folder / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if "size" in want and size != want["size"]:
            return f"{name} has {size} bytes, {want['size']} were written"
        if "sha256" in want and sha256(path) != want["sha256"]:
            return f"{name} has changed since it was written (its SHA-256 differs)"
    return None


def write_manifest(folder: str | Path) -> None:
    """Record the digests of every file under `folder` in its MANIFEST, atomically."""
    folder = Path(folder)
    files = digests(folder)  # before the temporary file exists
    tmp = folder / f".{MANIFEST}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump({"files": files}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, folder / MANIFEST)


def manifest_damage(folder: str | Path) -> str | None:
    """`damage` against the folder's MANIFEST; a folder without one (older rung) is not judged."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        expected = json.loads(path.read_bytes().decode("utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {MANIFEST} is unreadable"
    return damage(folder, expected)


def pick(candidates: Iterable[Path], check: Callable[[Path], str | None], where: str | Path) -> Path | None:
    """The first of `candidates` (newest first) that `check` finds undamaged; a line on the console
    for each one skipped; a RungError naming them all when none is usable."""
    skipped: list[tuple[Path, str]] = []
    for candidate in candidates:
        why = check(candidate)
        if why is None:
            if skipped:
                from rung.console import get_console

                for path, reason in skipped:
                    get_console().print(f"skipping damaged checkpoint {path}: {reason}", highlight=False,
                                        markup=False)
            return candidate
        skipped.append((candidate, why))
    if skipped:
        listed = "; ".join(f"{path.name}: {reason}" for path, reason in skipped)
        raise RungError(f"trainer.resume: every checkpoint in {where} is damaged ({listed}); they are kept: "
                        "set trainer.resume: never to start over, or resume from a copy")
    return None
