"""Worker processes that die with the process that started them.

datatrove's LocalPipelineExecutor starts a `multiprocess` Manager (a server process holding
the task queue and counters) and a Pool of workers. When `rung prepare` is killed with
SIGKILL nothing tells them: the pool's workers may finish their task first, and the manager
keeps running forever with parent pid 1. A killed run must leave no process behind.

`dying_with_parent()` covers every process forked while it is active: an at-fork hook asks
Linux (prctl PR_SET_PDEATHSIG) to send the child SIGKILL when its parent dies, and exits at
once if the parent is already gone (a kill between the fork and the prctl). A fork server
(started by exec, with no fork hook) preloads this module, which finds the pid of the process
that started it in `RUNG_DIE_WITH_PARENT` and so dies with it; its workers, forked by it with
the hook on, die with the server. (A fork server would otherwise outlive its killed parent:
its workers hold its "alive" pipe open, and they wait on queues they hold both ends of.)
Where prctl is missing (macOS), a daemon thread in the child polls its parent pid instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

ENV = "RUNG_DIE_WITH_PARENT"
_PR_SET_PDEATHSIG = 1

_active = False
_parent = [0]


def _before_fork() -> None:
    _parent[0] = os.getpid()


def _after_fork_in_child() -> None:
    if _active:
        die_with_parent(_parent[0])


def die_with_parent(parent: int) -> None:
    """Make this process end when `parent` (the process that forked it) ends."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent:  # the parent died before the prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="rung-watch-parent").start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def _owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _started_inside() -> None:
    """In a process started by exec inside `dying_with_parent` (a fork server): die with the
    process that started it, and make the processes it forks die with it."""
    global _active
    owner = os.environ.get(ENV, "")
    if not owner.isdigit():
        return
    if os.getppid() == int(owner):
        _active = True
        die_with_parent(int(owner))
    elif not _owner_alive(int(owner)):  # the owner was killed before this process got here
        os._exit(1)


_started_inside()


@contextlib.contextmanager
def dying_with_parent(start_method: str) -> Iterator[None]:
    """Inside this block, every process forked from this one (and, for "forkserver", from
    the fork server it starts) ends when its parent ends."""
    global _active
    saved, saved_env = _active, os.environ.get(ENV)
    _active = True
    os.environ[ENV] = str(os.getpid())
    if start_method == "forkserver":
        from multiprocess import forkserver

        preload = list(getattr(forkserver._forkserver, "_preload_modules", None) or ["__main__"])
        if __name__ not in preload:  # first: before `__main__`, whose imports may take seconds
            forkserver.set_forkserver_preload([__name__, *preload])
    try:
        yield
    finally:
        _active = saved
        if saved_env is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = saved_env
