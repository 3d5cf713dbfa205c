"""Writes that meet a full disk: one line naming the path and the space needed, no temporary
file left behind.

A write on a full disk fails deep inside a library (safetensors, orbax's tensorstore, numpy,
a datatrove worker) with an OSError, or with that library's own exception carrying the
system's message. `writing(path, needed, remove=...)` wraps a write: when what escapes it is
a full disk (`is_disk_full`: ENOSPC, EDQUOT, or EFBIG, a file over the filesystem's or the
process's size limit), the temporary paths in `remove` are deleted and a `DiskFullError`
says, in one line, what could not be written, about how much it needed and how much is free
(`shutil.disk_usage`, measured after the clean-up). Everything else passes through unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from rung.errors import RungError

FULL_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}

# Libraries that are not Python (tensorstore under orbax) raise their own exception types and
# keep only the system's text: these are the texts of the errnos above.
_FULL_DISK_TEXTS = tuple(os.strerror(code) for code in sorted(FULL_DISK_ERRNOS))

_REASONS = {
    errno.ENOSPC: "no space left on the disk",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "a file would pass the size limit of its filesystem or of this process (ulimit -f)",
}


class DiskFullError(RungError):
    """A write failed because the disk (or a quota, or a file size limit) is full."""


def full_disk_errno(exc: BaseException | None) -> int | None:
    """The full-disk errno behind `exc` (itself, its cause or context, or a member of an
    exception group), or None when the failure is something else."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, DiskFullError):
            return errno.ENOSPC
        if isinstance(current, OSError) and current.errno in FULL_DISK_ERRNOS:
            return current.errno
        text = str(current)
        for code in sorted(FULL_DISK_ERRNOS):
            if os.strerror(code) in text:
                return code
        pending.extend([current.__cause__, current.__context__, *getattr(current, "exceptions", ())])
    return None


def is_disk_full(exc: BaseException | None) -> bool:
    """True when `exc` is (or was caused by) a write that found the disk full."""
    return full_disk_errno(exc) is not None


def size_text(nbytes: float) -> str:
    """`nbytes` for a person: 512 B, 3.4 kB, 1.2 MB, 5.0 GB."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(nbytes) < 1000 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    raise AssertionError("unreachable")


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the filesystem holding `path` (its nearest existing folder), or None."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def remove_paths(paths: Iterable[str | Path]) -> None:
    """Delete each path (a folder with its contents, or a file); a missing one is fine."""
    for path in paths:
        path = Path(path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()


Removable = Iterable[str | Path] | Callable[[], Iterable[str | Path]]


def disk_full_error(path: str | Path, needed: int | None, exc: BaseException | None = None, *,
                    remove: Removable = (), note: str = "") -> DiskFullError:
    """The one-line error for a write of about `needed` bytes to `path` that found the disk
    full; the paths in `remove` (or that it returns, when a callable: temporary names known
    only after the write began) are deleted first, so the free space said is what is left."""
    remove_paths(remove() if callable(remove) else remove)
    code = full_disk_errno(exc) or errno.ENOSPC
    if isinstance(exc, DiskFullError):
        return exc
    parts = [f"cannot write {path}: {_REASONS[code]}"]
    if needed is not None:
        parts.append(f"it needs about {size_text(needed)}")
    free = free_bytes(path)
    if free is not None:
        parts.append(f"{size_text(free)} free there")
    message = "; ".join(parts)
    return DiskFullError(message + (f" ({note})" if note else ""))


@contextlib.contextmanager
def writing(path: str | Path, needed: int | None = None, *, remove: Removable = (),
            note: str = "") -> Iterator[None]:
    """Write `path` (about `needed` bytes) inside this block; a full disk becomes one
    `DiskFullError` line, with the temporary `remove` paths deleted. Other errors pass."""
    remove = remove if callable(remove) else list(remove)
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        raise disk_full_error(path, needed, exc, remove=remove, note=note) from exc
