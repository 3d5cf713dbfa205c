"""A tiny real `rung run` for the sink tests: sft of the `test`-preset torch model on a few
arithmetic chats, a few steps, every step logged, evaluated at steps 0, 3 and 6."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

RUNG = str(Path(sys.executable).with_name("rung"))


def tiny_run(folder: Path, sinks: list[dict], env: dict[str, str] | None = None) -> tuple[Path, str]:
    """Train in `folder / "run"` with the jsonl sink and `sinks`; (the run folder, its stdout + stderr)."""
    from rung_lora.synthetic import write_task

    train, held = write_task("arithmetic", folder / "data", train=64, eval=8, seed=0)
    config = folder / "run.yaml"
    config.write_text(yaml.safe_dump({
        "output_dir": str(folder / "run"),
        "seed": 0,
        "backend": {"name": "torch", "model": "test", "device": "cpu", "precision": "fp32"},
        "tokenizer": {"name": "byte"},
        "data": {"name": "chat_jsonl", "path": str(train)},
        "trainer": {"name": "sft", "steps": 6, "batch_size": 8, "learning_rate": 1e-2, "warmup_steps": 1,
                    "log_every": 1, "eval_every": 3, "eval_data": {"name": "chat_jsonl", "path": str(held)},
                    "resume": "never"},
        "logging": {"sinks": [{"name": "jsonl"}, *sinks]},
    }), encoding="utf-8")
    done = subprocess.run([RUNG, "run", str(config)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "run", done.stdout + done.stderr


def jsonl_records(run_dir: Path) -> list[dict]:
    """What the core's jsonl sink wrote: the reference the other sinks are checked against."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
