"""Shared pieces of the staged-config tests: a small workspace (a text corpus, chat data), a
staged config over it, and the real `rung` command line run in a subprocess."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

#: pretrain -> sft -> eval -> export (gguf) -> serve, on rung's `test` preset, a few steps each.
LADDER = """\
output_dir: out
seed: 0
backend: {name: torch, device: cpu, precision: fp32}
stages:
  - name: pretrain
    backend: {model: test}
    tokenizer: {name: byte}
    data:
      name: corpus
      sources: [{name: files, paths: [corpus]}]
      shards: {val_fraction: 0.1}
      workers: 1
    trainer: {name: pretrain, steps: 6, batch_size: 4, seq_len: 32, log_every: 2, eval_every: 6,
              val_batches: 1, plot: false, print_samples: false}
  - name: sft
    backend: {model: {from: pretrain}}
    data: {name: chat_jsonl, path: chat/train.jsonl}
    trainer: {name: sft, steps: 4, batch_size: 8, log_every: 2}
  - name: eval
    backend: {model: {from: sft}}
    tasks: [{kind: perplexity, name: heldout, paths: [corpus/doc00.txt]}]
  - name: gguf
    kind: export
    model: {from: sft}
    format: gguf
    options: {outtype: f32}
  - name: serve
    backend: {model: {from: sft}}
"""


def write_workspace(folder: Path, config: str = LADDER) -> Path:
    """A text corpus, chat data and the staged config (ladder.yaml) in `folder`."""
    rng = random.Random(0)
    words = "the cat sat on a mat and then it ran to see the dog by the old tree".split()
    (folder / "corpus").mkdir(parents=True, exist_ok=True)
    for i in range(12):
        lines = (" ".join(rng.choice(words) for _ in range(12)) for _ in range(30))
        (folder / "corpus" / f"doc{i:02d}.txt").write_text("\n".join(lines), encoding="utf-8")
    (folder / "chat").mkdir(exist_ok=True)
    with (folder / "chat" / "train.jsonl").open("w", encoding="utf-8") as handle:
        for _ in range(48):
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            turns = [{"role": "user", "content": f"{a}+{b}="}, {"role": "assistant", "content": str(a + b)}]
            handle.write(json.dumps({"messages": turns}) + "\n")
    (folder / "ladder.yaml").write_text(config, encoding="utf-8")
    return folder / "ladder.yaml"


def rung_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "RUNG_DISABLE_TQDM": "1",
            "COLUMNS": "200"}


def rung(folder: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`rung ARGS...` in `folder`, the real command line in its own process."""
    done = subprocess.run([sys.executable, "-m", "rung.cli.main", *args], cwd=folder, env=rung_env(),
                          capture_output=True, text=True, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"rung {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def records(folder: Path) -> dict:
    return json.loads((folder / "out" / "stages.json").read_text(encoding="utf-8"))["stages"]


def run_ids(folder: Path) -> dict[str, str]:
    return {name: entry.get("run") for name, entry in records(folder).items()}


@pytest.fixture(scope="session")
def finished_ladder(tmp_path_factory) -> Path:
    """A workspace where `rung run ladder.yaml` has run every stage once (copy it before changing it)."""
    pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("ladder")
    write_workspace(folder)
    done = rung(folder, "run", "ladder.yaml")
    (folder / "first-run.txt").write_text(done.stdout + done.stderr, encoding="utf-8")
    return folder


@pytest.fixture
def ladder_copy(finished_ladder, tmp_path) -> Path:
    """A copy of the finished workspace this test may change (every path in it is relative)."""
    import shutil

    folder = tmp_path / "ladder"
    shutil.copytree(finished_ladder, folder)
    return folder
