"""Killed and resumed: `kill -9` and Ctrl-C at seeded points of `rung prepare`, pretrain, sft
and lora, each followed by the next run resuming, end where an uninterrupted run ends.

Every run is a real `rung` subprocess on a tiny config (the byte tokenizer, the `test` preset,
a few steps, data made here). A point is a place in the run's progress, not a delay, so it is
the same on a slow machine: for prepare, the k-th stage saying it is complete (datatrove's
completion files); for training, step k's line appearing in metrics.jsonl. The points are
drawn from one seeded generator. Kill -9 goes to the rung process alone (what `kill -9 PID`
does); Ctrl-C is SIGINT to its whole process group (what a terminal sends).

After each interruption: the rung process exited as it should (killed; 130 for Ctrl-C) and
none of the processes it had started (read from /proc just before the signal) is left running.
After the last run: the same shards byte for byte (prepare), the same loss at every step and
the same final loss, bit for bit (the torch engine resumes weights, optimizer, schedule, RNG
and data position exactly: tests/engines/test_engine_contract.py), and no temporary file
(`.tmp-*`, `*.partial`, `*.tmp`) nor lock under the output folders.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("datatrove")

RUNG = str(Path(sys.executable).with_name("rung"))
# Every kill point below is drawn from this, in file order; RUNG_KILL_SEED=N tries other points.
POINTS = random.Random(int(os.environ.get("RUNG_KILL_SEED", "16")))
STEPS, SAVE_EVERY = 12, 4
GONE_WITHIN_S = 30  # how long the processes a killed run started may take to go (they must go)
HUNG_AFTER_S = 600  # a run not ended this long after its signal hangs: fail, do not stall the suite
TEMPORARY = (".tmp-*", "*.partial", "*.tmp", ".rung-lock")


# ---------------------------------------------------------------- processes


def process_start(pid: int) -> str | None:
    """The start time of `pid` (to tell it from a later process given the same pid), or None
    if it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def descendants(root: int) -> dict[int, str]:
    """Every process below `root` (children, theirs, ...) with its start time, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
    found, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                start = process_start(pid)
                if start is not None:
                    found[pid] = start
                    frontier.append(pid)
    return found


def still_running(processes: dict[int, str]) -> dict[int, str]:
    """Those of `processes` that still run (the same pid with the same start time)."""
    return {pid: start for pid, start in processes.items() if process_start(pid) == start}


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def rung(args: list[str], log: Path) -> subprocess.Popen:
    """`rung ARGS` in a session of its own (so Ctrl-C can go to its process group), output to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen([RUNG, *args], stdout=out, stderr=subprocess.STDOUT, env=environment(),
                                start_new_session=True)


def interrupt(args: list[str], log: Path, at: Callable[[], bool], how: str, seen: int = 0) -> dict[int, str]:
    """Run `rung ARGS` until `at()` holds and at least `seen` processes it started have been
    seen, then kill -9 it or press Ctrl-C; check it ended so and left no process behind. Returns
    the processes it had started (every one seen while it ran: a pool between two stages may
    have none at the very moment of the kill)."""
    proc = rung(args, log)
    started: dict[int, str] = {}
    try:
        while not (at() and len(started) >= seen):
            if proc.poll() is not None:
                raise AssertionError(f"the run ended (exit {proc.returncode}) before the point:\n{tail(log)}")
            started.update(descendants(proc.pid))
            time.sleep(0.02)
        started.update(descendants(proc.pid))
        if how == "kill -9":
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait() == -signal.SIGKILL
        else:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                code = proc.wait(timeout=HUNG_AFTER_S)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"Ctrl-C: `rung {args[0]}` still running {HUNG_AFTER_S} s later (hung):\n"
                                     f"{tail(log)}") from None
            assert code == 130, f"Ctrl-C: exit {code}, not 130:\n{tail(log)}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + GONE_WITHIN_S
    while still_running(started) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = still_running(started)
    for pid in left:  # do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert not left, f"after {how} of `rung {args[0]}`, still running: " + "; ".join(
        f"{pid} ({command_of(pid)})" for pid in left)
    return started


def finish(args: list[str], log: Path) -> None:
    proc = rung(args, log)
    assert proc.wait() == 0, f"`rung {' '.join(args)}` failed:\n{tail(log)}"


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def temporary_files(*folders: Path) -> list[str]:
    return sorted(str(p) for folder in folders for pattern in TEMPORARY for p in folder.rglob(pattern))


# ---------------------------------------------------------------- points in a run's progress


def step_logged(run_dir: Path, step: int) -> Callable[[], bool]:
    """True once run_dir/metrics.jsonl holds a line it did not hold at this call for `step` or a
    later one (a resumed run rewrites the file to its history, so lines are compared, not offsets;
    a later step counts in case the run resumed from a checkpoint past `step`)."""
    metrics = run_dir / "metrics.jsonl"

    def lines() -> set[bytes]:
        try:
            return set(metrics.read_bytes().split(b"\n")[:-1])  # whole lines only
        except FileNotFoundError:
            return set()

    before = lines()
    return lambda: any((json_step(line) or 0) >= step for line in lines() - before)


def json_step(line: bytes) -> int | None:
    try:
        return int(json.loads(line).get("step"))
    except (ValueError, AttributeError, TypeError):
        return None


def stages_completed(shards: Path, count: int) -> Callable[[], bool]:
    """True once prepare's tasks have written `count` completion files (7 in all: two workers
    for each stage but the one finding duplicates)."""
    return lambda: len(list((shards / ".work").glob("logs/*/completions/*"))) >= count


def step_losses(run_dir: Path) -> dict[int, float]:
    """Each step's loss as the run's latest history has it (a resumed step replaces the first)."""
    from rung.jsonl import latest_history, read_jsonl

    history = latest_history(record for record, _ in read_jsonl(run_dir / "metrics.jsonl"))
    return {r["step"]: r["loss"] for r in history if "loss" in r}


def training_points() -> tuple[int, int]:
    """A step to kill -9 at, and a later one for Ctrl-C (two steps on: a kill lands a step late)."""
    first = POINTS.randint(2, STEPS - 6)
    return first, POINTS.randint(first + 2, STEPS - 2)


def kill_then_ctrl_c_then_finish(config: Path, run_dir: Path, log: Path) -> None:
    first, second = training_points()
    interrupt(["run", str(config)], log, step_logged(run_dir, first), "kill -9")
    interrupt(["run", str(config)], log, step_logged(run_dir, second), "Ctrl-C")
    finish(["run", str(config)], log)


def assert_same_training(run_dir: Path, reference_dir: Path, result_loss: float, log: Path) -> None:
    resumed, straight = step_losses(run_dir), step_losses(reference_dir)
    assert sorted(resumed) == sorted(straight) == list(range(1, STEPS + 1))
    differ = {s: (resumed[s], straight[s]) for s in straight if resumed[s] != straight[s]}
    assert not differ, f"steps whose loss differs after kill -9, Ctrl-C and resume (resumed, straight): {differ}"
    assert f"final loss {result_loss:.4f}" in log.read_text(), tail(log)


# ---------------------------------------------------------------- data and configs


def make_corpus(folder: Path, files: int = 16) -> Path:
    words = ["alpha", "beta", "gamma", "delta", "sigma", "omega", "theta", "kappa"]
    folder.mkdir(parents=True)
    for i in range(files):
        body = "\n".join(f"def {words[(i + j) % 8]}_{j}(x):\n    return x * {i + j}\n" for j in range(6))
        (folder / f"module_{i:02d}.py").write_text(f'"""Module {i}."""\n\n{body}', encoding="utf-8")
    return folder


def chat_file(path: Path) -> Path:
    lines = [json.dumps({"messages": [{"role": "user", "content": f"{a}+{b}="},
                                      {"role": "assistant", "content": str(a + b)}]})
             for a in range(8) for b in range(8)]
    path.write_text("\n".join(lines) + "\n")
    return path


TRAINING = {"steps": STEPS, "save_every": SAVE_EVERY, "log_every": 1, "batch_size": 4, "learning_rate": 1e-2}


def pretrain_config(root: Path, corpus: Path, name: str) -> dict:
    return {
        "output_dir": str(root / name), "seed": 0, "tokenizer": {"name": "byte"},
        "data": {"name": "corpus", "sources": [{"name": "files", "paths": [str(corpus)]}],
                 "clean": {"minhash": False, "quality": False}, "workers": 2,
                 "shards": {"dir": str(root / f"{name}-shards"), "val_fraction": 0.25}},
        "backend": {"name": "torch", "model": "test", "device": "cpu", "precision": "fp32"},
        "trainer": {"name": "pretrain", **TRAINING, "seq_len": 32, "eval_every": 100, "sample_every": 100,
                    "val_batches": 1, "sample_tokens": 4, "final_sample_tokens": 4},
        "logging": {"sinks": [{"name": "jsonl"}]},
    }


def tuning_config(root: Path, name: str, trainer: str, model: str, data: Path) -> dict:
    section = {"name": trainer, **TRAINING}
    if trainer == "lora":
        section["r"] = 4
    return {"output_dir": str(root / name), "seed": 0,
            "backend": {"name": "torch", "model": model, "device": "cpu", "precision": "fp32"},
            "tokenizer": {"name": "byte"}, "data": {"name": "chat_jsonl", "path": str(data)},
            "trainer": section, "logging": {"sinks": [{"name": "jsonl"}]}}


def write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def in_process(config: dict):
    """The uninterrupted reference, run here (no process start to pay)."""
    import rung

    return rung.run(config)


# ---------------------------------------------------------------- the tests


def test_prepare_and_pretrain_killed_and_interrupted_end_as_one_uninterrupted_run(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    straight = in_process(pretrain_config(tmp_path, corpus, "straight"))
    config = write(tmp_path / "pretrain.yaml", pretrain_config(tmp_path, corpus, "killed"))
    run_dir, shards, log = tmp_path / "killed", tmp_path / "killed-shards", tmp_path / "killed.log"

    # A kill lands while the other worker may finish its task too: the second point is two on.
    first = POINTS.randint(1, 2)
    # Not before two of its processes were seen (so there are workers a kill could leave behind):
    # a fast first stage's workers can come and go between two looks, 20 ms apart (CI saw one).
    interrupt(["prepare", str(config)], log, stages_completed(shards, first), "kill -9", seen=2)
    interrupt(["prepare", str(config)], log, stages_completed(shards, POINTS.randint(first + 2, 6)), "Ctrl-C")
    kill_then_ctrl_c_then_finish(config, run_dir, log)

    reference = tmp_path / "straight-shards"
    for folder in ("train", "validation", "tokenizer"):
        names = sorted(p.relative_to(reference) for p in (reference / folder).rglob("*") if p.is_file())
        assert names and names == sorted(p.relative_to(shards) for p in (shards / folder).rglob("*") if p.is_file())
        for name in names:
            assert (shards / name).read_bytes() == (reference / name).read_bytes(), f"shard {name} differs"
    assert_same_training(run_dir, tmp_path / "straight", straight.final_loss, log)
    assert not temporary_files(run_dir, shards)


@pytest.fixture(scope="module")
def sft_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    data = chat_file(root / "chat.jsonl")
    result = in_process(tuning_config(root, "straight", "sft", "test", data))
    return root, data, result


def test_sft_killed_and_interrupted_ends_as_one_uninterrupted_run(sft_reference):
    root, data, straight = sft_reference
    config = write(root / "sft.yaml", tuning_config(root, "killed", "sft", "test", data))
    log = root / "killed.log"
    kill_then_ctrl_c_then_finish(config, root / "killed", log)
    assert_same_training(root / "killed", root / "straight", straight.final_loss, log)
    assert not temporary_files(root / "killed")


def test_lora_killed_and_interrupted_ends_as_one_uninterrupted_run(sft_reference):
    root, data, _ = sft_reference
    base = str(root / "straight" / "model")
    straight = in_process(tuning_config(root, "lora-straight", "lora", base, data))
    config = write(root / "lora.yaml", tuning_config(root, "lora-killed", "lora", base, data))
    log = root / "lora-killed.log"
    kill_then_ctrl_c_then_finish(config, root / "lora-killed", log)
    assert_same_training(root / "lora-killed", root / "lora-straight", straight.final_loss, log)
    assert not temporary_files(root / "lora-killed")
