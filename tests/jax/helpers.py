"""Small real pieces the jax tests share (imported by subprocess scripts too: no pytest here)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class SmallStream:
    """A deterministic, resumable BatchStream of a learnable pattern (ids count up mod vocab)."""

    def __init__(self, vocab: int, batch: int, seq: int, seed: int = 0) -> None:
        self.vocab, self.batch, self.seq, self.seed, self.pos = vocab, batch, seq, seed, 0

    def __iter__(self):
        return self

    def __next__(self):
        import numpy as np

        rng = np.random.default_rng([self.seed, self.pos])
        self.pos += 1
        start = rng.integers(0, self.vocab, size=(self.batch, 1))
        step = rng.integers(1, 3, size=(self.batch, 1))
        ids = (start + step * np.arange(self.seq + 1)) % self.vocab
        return {"input_ids": ids[:, :-1].astype(np.int64), "targets": ids[:, 1:].astype(np.int64)}

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = int(state["pos"])


class RecordingRun:
    """What an engine needs of `rung.runner.Run`: an output folder, `log` and `checkpointed`."""

    def __init__(self, output_dir) -> None:
        self.output_dir = Path(output_dir)
        self.logs: list[tuple[int, dict]] = []
        self.checkpoints: list[tuple[int, str]] = []

    def log(self, step, metrics) -> None:
        self.logs.append((step, dict(metrics)))

    def checkpointed(self, step, path) -> None:
        self.checkpoints.append((step, str(path)))


class FileRun(RecordingRun):
    """A RecordingRun that also appends each logged step to `losses.jsonl` (survives a kill)."""

    def log(self, step, metrics) -> None:
        super().log(step, metrics)
        with open(self.output_dir / "losses.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "loss": metrics.get("loss")}) + "\n")


class HangingStream(SmallStream):
    """Blocks forever once `hang_at` batches were taken: the test kills the process there."""

    def __init__(self, *args, hang_at: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hang_at = hang_at

    def __next__(self):
        if self.hang_at is not None and self.pos >= self.hang_at:
            time.sleep(3600)
        return super().__next__()


def read_losses(directory) -> dict[int, float]:
    path = Path(directory) / "losses.jsonl"
    return {row["step"]: row["loss"] for row in map(json.loads, path.read_text().splitlines())}


def run_script(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m tests.jax.scripts ARGS` with `env`; its output is shown when it fails."""
    proc = subprocess.run([sys.executable, "-m", "tests.jax.scripts", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"script {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return proc
