"""A run owns its output folder (rung.folder_lock): a second run refuses in one line naming the
owner; a lock whose owner is gone is taken over; the lock is released on exit, errors included."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from rung.folder_lock import LOCK_NAME, FolderInUse, owned


def test_a_second_owner_is_refused_with_the_first_named(tmp_path):
    with owned(tmp_path, "run"):
        lock = json.loads((tmp_path / LOCK_NAME).read_text())
        assert lock["pid"] == os.getpid() and lock["host"] == socket.gethostname()
        with pytest.raises(FolderInUse, match=rf"{tmp_path} is in use by another run \(pid {os.getpid()} on "):
            with owned(tmp_path):
                pass
    assert not (tmp_path / LOCK_NAME).exists()


def test_the_lock_is_released_when_the_run_fails(tmp_path):
    with pytest.raises(ValueError):
        with owned(tmp_path):
            raise ValueError("training broke")
    with owned(tmp_path):
        pass


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal
        from rung.folder_lock import owned
        with owned({str(tmp_path)!r}):
            print("held", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    child.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == child.pid  # left behind by kill -9
    with owned(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_a_live_owner_in_another_process_is_respected(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from rung.folder_lock import owned
        with owned({str(tmp_path)!r}, "prepare"):
            print("held", flush=True)
            sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUse, match=rf"in use by another prepare \(pid {child.pid} on "):
            with owned(tmp_path):
                pass
    finally:
        child.communicate("\n")
    assert child.returncode == 0 and not (tmp_path / LOCK_NAME).exists()


def test_a_lock_held_from_another_host_is_left_alone(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "then"}))
    with pytest.raises(FolderInUse, match=r"pid 1 on elsewhere, since then"):
        with owned(tmp_path):
            pass


def test_a_damaged_lock_file_is_stale(tmp_path):
    (tmp_path / LOCK_NAME).write_bytes(b"\x00\xff not json")
    with owned(tmp_path):
        pass


def test_two_rung_runs_on_one_folder(tmp_path):
    """The second `rung run` on a folder a live run owns exits non-zero with one line naming it."""
    pytest.importorskip("rung_torch")
    config = tmp_path / "run.yaml"
    config.write_text(textwrap.dedent(f"""
        backend: {{name: torch, model: test, device: cpu, precision: fp32}}
        tokenizer: {{name: byte}}
        data: {{name: files, paths: [{str(tmp_path / 'text.txt')!r}]}}
        trainer: {{name: pretrain, steps: 2, batch_size: 2, seq_len: 16, warmup_steps: 0, resume: never}}
        output_dir: {str(tmp_path / 'out')!r}
    """))
    (tmp_path / "text.txt").write_text("hello world. " * 200)
    with owned(tmp_path / "out"):
        done = subprocess.run([sys.executable, "-m", "rung.cli.main", "run", str(config)],
                              capture_output=True, text=True)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr
    assert f"{tmp_path / 'out'} is in use by another run (pid {os.getpid()}" in done.stderr
