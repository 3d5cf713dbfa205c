"""A killed `rung prepare` leaves no process behind (issue 16, orphans).

`rung prepare` runs its stages on datatrove's LocalPipelineExecutor: a `multiprocess` Manager
process and a pool of workers (forked, or from a fork server when JAX is loaded). Before
`rung_pretrain.workers`, a SIGKILL of the command left the manager running with parent pid 1.
Here the real command is started on a small corpus, killed with SIGKILL once its workers
exist, and every process it had started must be gone within a bounded wait.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("datatrove")
if not Path("/proc/self/stat").exists():
    pytest.skip("reads the process table from /proc (Linux)", allow_module_level=True)

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda sigma omega".split()


def make_corpus(folder: Path, files: int = 60, lines: int = 150) -> Path:
    """About 1 MB of distinct text files (enough that the stages take a moment)."""
    rng = random.Random(0)
    folder.mkdir(parents=True)
    for i in range(files):
        text = "\n".join(" ".join(f"{rng.choice(WORDS)}{rng.randint(0, 999)}" for _ in range(12))
                         for _ in range(lines))
        (folder / f"doc{i:03d}.txt").write_text(text + "\n")
    return folder


def write_config(tmp_path: Path) -> Path:
    corpus = make_corpus(tmp_path / "corpus")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "run"),
        "backend": {"name": "torch", "model": "test"},
        "tokenizer": {"name": "bpe", "vocab_size": 400},
        "data": {"name": "corpus", "sources": [{"name": "files", "paths": [str(corpus)]}], "workers": 2},
    }))
    return path


def process_table() -> dict[int, tuple[int, int, str]]:
    """{pid: (parent pid, session id, state)} of every process now."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[3]), fields[0])
    return table


def descendants(root: int, table: dict[int, tuple[int, int, str]]) -> set[int]:
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, (parent, _, _) in table.items() if parent in frontier} - found
        found |= frontier
    return found


def living(pids: set[int], session: int) -> dict[int, str]:
    """The processes among `pids`, or in `session`, still running (zombies are gone)."""
    table = process_table()
    return {pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
            for pid, (_, sid, state) in table.items()
            if (pid in pids or sid == session) and state != "Z" and pid != os.getpid()
            if Path(f"/proc/{pid}/cmdline").exists()}


def kill_when_working(command: list[str], cwd: Path) -> tuple[set[int], subprocess.Popen]:
    """Start `command` in its own session, SIGKILL it once it has a manager and two workers
    (three children); returns every process it had started by then."""
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    started: set[int] = set()
    try:
        while proc.poll() is None:
            table = process_table()
            children = {pid for pid, (parent, _, _) in table.items() if parent == proc.pid}
            started |= descendants(proc.pid, table)
            if len(children) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"it ended before its workers were seen: {proc.stderr.read().decode()}"
        started |= descendants(proc.pid, process_table())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.stderr.close()
    return started, proc


def assert_nothing_left(started: set[int], session: int) -> None:
    deadline = time.monotonic() + 15
    left = living(started, session)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = living(started, session)
    for pid in left:  # leave none running after the test either
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left after the kill: {left}"


def test_a_killed_rung_prepare_leaves_no_process(tmp_path):
    config = write_config(tmp_path)
    rung = str(Path(sys.executable).with_name("rung"))
    started, proc = kill_when_working([rung, "prepare", str(config), "--quiet"], tmp_path)
    assert len(started) >= 3, started
    assert_nothing_left(started, proc.pid)


def test_a_killed_prepare_with_fork_server_workers_leaves_no_process(tmp_path):
    """With JAX loaded, the workers come from a fork server (forking a process that runs JAX's
    threads can deadlock): the server and its workers go too."""
    pytest.importorskip("jax")
    config = write_config(tmp_path)
    script = tmp_path / "prepare_with_jax.py"
    script.write_text("import jax  # noqa: F401  (workers start from a fork server)\n"
                      "from rung_pretrain import prepare\n\n"
                      "if __name__ == '__main__':\n"
                      f"    prepare({str(config)!r}, progress=False)\n")
    started, proc = kill_when_working([sys.executable, str(script)], tmp_path)
    assert len(started) >= 3, started
    assert_nothing_left(started, proc.pid)


SERVER_LEFT_RUNNING = """
import contextlib, os, signal, sys, time
import multiprocess
from rung_pretrain.workers import ctrl_c_ends_workers, dying_with_parent


def serve():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a Manager's server process does
    print(os.getpid(), flush=True)  # only now deaf to the Ctrl-C the test sends
    time.sleep(600)


if __name__ == "__main__":
    with dying_with_parent("fork"), {guard}:
        # what a Ctrl-C inside datatrove's `multiprocess.Manager()` leaves: the manager's server
        # started (not a daemon, deaf to SIGINT) but no finalizer yet to shut it down at exit
        server = multiprocess.Process(target=serve)
        server.start()
        time.sleep(600)
"""


def run_until_ctrl_c(tmp_path: Path, guard: str, hung_after_s: float) -> tuple[int | None, int]:
    """Start the script above in its own session, Ctrl-C its group once the server ignores SIGINT
    (CI once sent it sooner: the server died of it, the exit had nothing to wait on);
    returns (its exit code, None if it still ran `hung_after_s` later; the server's pid)."""
    script = tmp_path / "server_left_running.py"
    script.write_text(SERVER_LEFT_RUNNING.format(guard=guard))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        server = int(proc.stdout.readline())
        os.killpg(proc.pid, signal.SIGINT)
        try:
            return proc.wait(timeout=hung_after_s), server
        except subprocess.TimeoutExpired:
            return None, server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_ctrl_c_ends_prepare_even_with_a_manager_left_running(tmp_path):
    """datatrove starts its Manager before its try/finally: a Ctrl-C while it started left the
    manager serving and the process's exit joining it forever (a CI run hung so, in
    test_kills). `ctrl_c_ends_workers` kills the workers and exits 130 at once."""
    code, server = run_until_ctrl_c(tmp_path, "ctrl_c_ends_workers()", hung_after_s=120)
    assert code == 130
    assert_nothing_left({server}, -1)


def test_without_the_guard_such_a_manager_hangs_the_exit(tmp_path):
    """The check above can fail: with KeyboardInterrupt left to Python, the exit waits on the server."""
    code, server = run_until_ctrl_c(tmp_path, "contextlib.nullcontext()", hung_after_s=5)
    assert code is None, f"exit {code}"
    assert_nothing_left({server}, -1)
