"""A run owns its output folder: one lock file, with its owner's pid and host.

Two runs writing one folder interleave their metrics and each other's checkpoints, and the
first reports a final model that is the second's. `owned(folder)` takes
`folder/.rung-lock` for the run's lifetime (rank 0 of a distributed run takes it for all
ranks); a second run refuses in one line naming the owner. A lock whose owner is gone (the
same host, a pid that no longer runs: a killed run) is taken over; one held from another host
is left alone, since its pid cannot be checked from here.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from rung.errors import RungError

LOCK_NAME = ".rung-lock"


class FolderInUse(RungError):
    """Another live run owns the output folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def _owner(lock: Path) -> dict:
    try:
        data = json.loads(lock.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # unreadable or half-written: treated as stale below


def _stale(owner: dict) -> bool:
    pid, host = owner.get("pid"), owner.get("host")
    if not isinstance(pid, int) or not isinstance(host, str):
        return True
    return host == socket.gethostname() and not _alive(pid)


@contextlib.contextmanager
def owned(folder: str | Path, what: str = "run") -> Iterator[Path]:
    """Hold `folder`'s lock while the block runs; a FolderInUse error if a live run holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
          "what": what}
    text = json.dumps(me)
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _owner(lock)
            if not _stale(owner):
                raise FolderInUse(
                    f"{folder} is in use by another {owner.get('what', 'run')} (pid {owner.get('pid')} on "
                    f"{owner.get('host')}, since {owner.get('started', '?')}); wait for it, or choose another "
                    f"output_dir (remove {lock} only if that run is gone)") from None
            tmp = folder / f"{LOCK_NAME}.{os.getpid()}"
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, lock)  # take the stale lock over; re-read: two takers, one winner
            if _owner(lock).get("pid") == os.getpid():
                break
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        break
    else:
        raise FolderInUse(f"{folder}: could not take its lock ({lock}); another run is starting there")
    try:
        yield folder
    finally:
        if _owner(lock).get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                lock.unlink()
