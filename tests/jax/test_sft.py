"""rung-lora's `sft` trainer on the jax backend: the same config as on torch, `backend.name: jax`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rung_lora.synthetic import write_task

RUNG = str(Path(sys.executable).with_name("rung"))


def test_sft_on_jax_lowers_held_out_loss_and_saves_a_model(tmp_path, jax_env):
    train, held = write_task("arithmetic", tmp_path / "data", train=256, eval=16, seed=0)
    config = tmp_path / "sft.yaml"
    config.write_text(json.dumps({
        "output_dir": str(tmp_path / "out"),
        "backend": {"name": "jax", "model": "test"},
        "tokenizer": {"name": "byte"},
        "data": {"name": "chat_jsonl", "path": str(train)},
        "trainer": {"name": "sft", "steps": 24, "batch_size": 16, "warmup_steps": 2, "log_every": 8,
                    "eval_every": 24, "learning_rate": 3e-3,
                    "eval_data": {"name": "chat_jsonl", "path": str(held)}},
        "logging": {"sinks": [{"name": "jsonl"}]},
    }))
    proc = subprocess.run([RUNG, "run", str(config)], env=jax_env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    evals = [m["eval_loss"] for m in metrics if "eval_loss" in m]
    assert len(evals) == 2 and evals[-1] < evals[0] - 1.0, evals
    model = tmp_path / "out" / "model"
    assert (model / "model.safetensors").is_file() and (model / "tokenizer.json").is_file()
    # The fine-tuned jax model serves on the torch backend too (same weights on disk).
    import rung

    reply = rung.ask(rung.backend("torch", model=str(model)), "12+34=", max_tokens=4)
    assert reply.usage.completion_tokens >= 1
