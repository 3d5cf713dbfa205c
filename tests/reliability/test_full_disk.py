"""A full disk is one line, the previous checkpoint intact, no temporary file left (issue 16).

The disks here are real and really fill: a tmpfs of a few hundred kB mounted in a private
mount namespace (`unshare`, as root or through a user namespace) for the command under test,
whose writes then fail with ENOSPC; what is left on that disk is copied out for the checks.
The core's helper is also tested on a file size limit (RLIMIT_FSIZE: EFBIG), which needs no
mount at all. Before `rung.disk`, a checkpoint save ended in a traceback and left its `.tmp`
folder; `rung prepare` printed dozens of logging errors and tracebacks and left its work folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

RUNG = str(Path(sys.executable).with_name("rung"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "400"}  # lines unwrapped


def unshare_command() -> list[str]:
    return ["unshare", "--mount"] + ([] if os.geteuid() == 0 else ["--map-root-user"])


@pytest.fixture(scope="module")
def small_disks(tmp_path_factory):
    """Skips (saying why) where this machine cannot mount a tmpfs in a private namespace."""
    probe = tmp_path_factory.mktemp("probe")
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux's unshare to mount a small tmpfs")
    result = subprocess.run([*unshare_command(), "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"', str(probe)],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace here: {result.stderr.strip()}")


def run_on_small_disk(disk: Path, size: str, command: list[str], keep: Path) -> subprocess.CompletedProcess:
    """`command` with a tmpfs of `size` mounted at `disk`; what it left there is copied to `keep`."""
    disk.mkdir(parents=True, exist_ok=True)
    keep.mkdir(parents=True, exist_ok=True)
    script = 'mount -t tmpfs -o size="$1" tmpfs "$0" || exit 99; shift 2; "$@"; rc=$?; cp -a "$0/." "$KEEP/"; exit $rc'
    return subprocess.run([*unshare_command(), "sh", "-c", script, str(disk), size, "--", *command],
                          capture_output=True, text=True, timeout=600, env={**ENV, "KEEP": str(keep)})


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------ the core helper, on EFBIG


def test_a_write_over_the_file_size_limit_is_one_line_and_its_temporary_file_goes(tmp_path):
    """RLIMIT_FSIZE makes a real write fail with EFBIG (SIGXFSZ ignored): `rung.disk.writing`
    turns it into one DiskFullError line naming the path and the bytes needed, and removes
    the temporary file; the file that was there before is untouched."""
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old" * 100)
    script = textwrap.dedent(f"""
        import os, resource, signal
        from pathlib import Path
        from rung.disk import DiskFullError, writing
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        target = Path({str(target)!r})
        tmp = target.with_name(".weights.bin.tmp")
        try:
            with writing(target, 1_000_000, remove=[tmp], note="the old file is kept"):
                with open(tmp, "wb") as f:
                    for _ in range(100):
                        f.write(os.urandom(10_000))
                        f.flush()
                os.replace(tmp, target)
        except DiskFullError as exc:
            print(exc)
        """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    line = result.stdout.strip()
    assert "\n" not in line and line.startswith(f"cannot write {target}: a file would pass the size limit"), line
    assert "it needs about 1.0 MB" in line and "free there" in line and line.endswith("(the old file is kept)")
    assert files_under(tmp_path) == ["weights.bin"] and target.read_bytes() == b"old" * 100


# ------------------------------------------------------------------ a checkpoint save (torch)


def make_code_corpus(folder: Path) -> Path:
    folder.mkdir(parents=True)
    words = ["alpha", "beta", "gamma", "delta", "sigma", "omega", "theta", "kappa"]
    for i in range(24):
        body = "\n\n".join(f"def {words[(i + j) % 8]}_{j}(x, y={j}):\n    return x * {i} + y\n" for j in range(5))
        (folder / f"module_{i:02d}.py").write_text(f'"""Module {i}."""\n\n{body}')
    return folder


def training_config(tmp_path: Path, output_dir: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "output_dir": str(output_dir), "seed": 0,
        "tokenizer": {"name": "bpe", "vocab_size": 320},
        "data": {"name": "corpus", "sources": [{"name": "files", "paths": [str(make_code_corpus(tmp_path / "code"))]}],
                 "clean": {"minhash": False, "quality": False},
                 "shards": {"dir": str(tmp_path / "shards"), "val_fraction": 0.25}, "workers": 1},
        "backend": {"name": "torch", "model": "test", "precision": "fp32"},
        "trainer": {"name": "pretrain", "steps": 4, "batch_size": 8, "seq_len": 32, "learning_rate": 1e-2,
                    "warmup_steps": 1, "log_every": 2, "eval_every": 100, "sample_every": 100, "val_batches": 1,
                    "save_every": 2, "keep_checkpoints": 2},
        "logging": {"sinks": [{"name": "jsonl"}]},
    }))
    return path


def test_a_checkpoint_save_on_a_full_disk_is_one_line_and_keeps_the_previous_one(tmp_path, small_disks):
    """A ~580 kB checkpoint every 2 steps on a 900 kB disk: the first fits, the second does not.
    One line on stderr naming the checkpoint, the space it needs and what is free; no temporary
    folder; the first checkpoint intact, and the run resumes from it (off the small disk)."""
    pytest.importorskip("torch")
    disk, keep = tmp_path / "disk", tmp_path / "kept"
    config = training_config(tmp_path, disk / "run")
    prepared = subprocess.run([RUNG, "prepare", str(config), "--quiet"], capture_output=True, text=True,
                              timeout=300, env=ENV)  # the shards live off the small disk
    assert prepared.returncode == 0, prepared.stderr
    result = run_on_small_disk(disk, "900k", [RUNG, "run", str(config)], keep)
    assert result.returncode == 1, result.stdout + result.stderr
    # the run's own lines (data, model, progress) and then one error line, nothing else
    lines = result.stderr.strip().splitlines()
    noise = [line for line in lines[:-1] if any(word in line.lower() for word in ("error", "traceback", "exception"))]
    assert not noise, result.stderr
    lines = lines[-1:]
    checkpoints = disk / "run" / "checkpoints"
    assert lines[0].startswith(f"rung: error: cannot write {checkpoints / 'step-00000004'}: no space left on the disk;")
    assert "it needs about" in lines[0] and "kB free there" in lines[0]
    assert lines[0].endswith(f"(the previous checkpoint {checkpoints / 'step-00000002'} is kept)")

    kept = keep / "run" / "checkpoints"
    assert not [p.name for p in kept.iterdir() if p.name.startswith(".")], files_under(kept)
    assert sorted(p.name for p in kept.iterdir() if p.is_dir()) == ["step-00000002"]
    from rung_torch.engine.checkpoint import verify

    assert verify(kept / "step-00000002") is None  # every file has its recorded SHA-256

    resumed = subprocess.run([RUNG, "run", str(config), f"output_dir={keep / 'run'}"], capture_output=True,
                             text=True, timeout=300, env=ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {kept / 'step-00000002'} (step 2)" in resumed.stdout + resumed.stderr
    steps = [json.loads(line)["step"] for line in (keep / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 4


# ------------------------------------------------------------------ rung prepare


def test_rung_prepare_on_a_full_disk_is_one_line_and_removes_its_work_files(tmp_path, small_disks):
    """A ~600 kB corpus prepared onto a 256 kB disk with two workers: the clean copy cannot
    fit. One line on stderr (no logging errors, no traceback), naming the shards folder, an
    estimate of the space needed and what is free; nothing it wrote is left on the disk."""
    pytest.importorskip("datatrove")
    import random

    rng = random.Random(0)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):
        lines = (" ".join("".join(rng.choice("abcdefghij") for _ in range(6)) for _ in range(12)) for _ in range(150))
        (corpus / f"doc{i:02d}.txt").write_text("\n".join(lines) + "\n")
    disk, keep = tmp_path / "disk", tmp_path / "kept"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "output_dir": str(disk / "run"), "backend": {"name": "torch", "model": "test"},
        "tokenizer": {"name": "bpe", "vocab_size": 400},
        "data": {"name": "corpus", "sources": [{"name": "files", "paths": [str(corpus)]}], "workers": 2},
    }))
    result = run_on_small_disk(disk, "256k", [RUNG, "prepare", str(config), "--quiet"], keep)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{result.stderr[:3000]}"
    shards = disk / "run" / "data"
    assert lines[0].startswith(f"rung: error: cannot write {shards}: no space left on the disk; it needs about ")
    assert "kB free there" in lines[0] and "the files it wrote are removed" in lines[0]
    assert files_under(keep) == [], files_under(keep)
