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

`ctrl_c_ends_workers()` covers Ctrl-C. A terminal's Ctrl-C reaches every process of the group,
and a multiprocessing Pool does not survive that: a worker that dies while holding the task
queue's read lock leaves `Pool.terminate()` waiting on that lock forever, and `rung prepare`
hung so (seen in CI). Inside the block, SIGINT in the process that started the workers kills
them and ends it at once with exit 130, as the CLI does for Ctrl-C elsewhere: the same state a
kill -9 leaves, which the next `rung prepare` starts over from (it removes a partial run's files).
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


def _descendants(root: int) -> list[int]:
    """Every process below `root` (children first), read from /proc; [] where there is none."""
    parents: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for name in entries:
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as stat:
                    parents[int(name)] = int(stat.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in found]
        found += children
        frontier += children
    return found


def _kill_workers_and_exit(signum: int, frame: object) -> None:
    if os.getpid() != _interrupt_owner[0]:  # a worker (forked with this handler): Ctrl-C as usual
        raise KeyboardInterrupt
    import multiprocess

    pids = set(_descendants(os.getpid())) | {p.pid for p in multiprocess.active_children() if p.pid}
    for pid in pids:
        with contextlib.suppress(OSError):  # gone already, or not ours: the exit goes on regardless
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.write("rung: interrupted\n")
        sys.stderr.flush()
    os._exit(130)


_interrupt_owner = [0]


@contextlib.contextmanager
def ctrl_c_ends_workers() -> Iterator[None]:
    """Inside this block, Ctrl-C (SIGINT) kills the worker processes and exits 130 at once
    instead of raising KeyboardInterrupt into a Pool that may hang (see the module's note).
    Only in the main thread (the only one that can set a signal handler); elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved_owner = _interrupt_owner[0]
    _interrupt_owner[0] = os.getpid()
    saved = signal.signal(signal.SIGINT, _kill_workers_and_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, saved)
        _interrupt_owner[0] = saved_owner
