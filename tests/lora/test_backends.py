"""One `lora` config, trained through `rung run` on torch and on jax (only `backend.name` differs):
held-out loss falls, the task metric is measured, only the adapters train, and the saved adapter
loads back on its base and changes what the model generates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from rung_lora.synthetic import write_task

RUNG = str(Path(sys.executable).with_name("rung"))
PROMPTS = ["<|im_start|>user\n12+34=<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\n7+58=<|im_end|>\n<|im_start|>assistant\n"]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lora-backends")
    train, held = write_task("arithmetic", folder / "data", train=128, eval=8, seed=0)
    path = folder / "lora.yaml"
    path.write_text(yaml.safe_dump({
        "output_dir": str(folder / "torch"),
        "seed": 0,
        "backend": {"name": "torch", "model": "test", "device": "cpu", "precision": "fp32"},
        "tokenizer": {"name": "byte"},
        "data": {"name": "chat_jsonl", "path": str(train)},
        "trainer": {"name": "lora", "r": 8, "steps": 12, "batch_size": 16, "learning_rate": 3e-2, "warmup_steps": 2,
                    "log_every": 4, "eval_every": 12, "eval_data": {"name": "chat_jsonl", "path": str(held)},
                    "eval_metric": "exact_match", "eval_generate": 4, "max_new_tokens": 4, "merge": True,
                    "resume": "never"},
        "logging": {"sinks": [{"name": "jsonl"}]},
    }), encoding="utf-8")
    return path


def rung_run(config: Path, *overrides: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([RUNG, "run", str(config), *overrides], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out: dict[str, np.ndarray] = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update({k: v.astype(np.float32) for k, v in load_file(str(file)).items()})
    return out


def sampled(backend, prompts) -> list[str]:
    """Seeded samples: the same model gives the same text; a changed distribution, other text.
    (Greedy answers of a random base barely trained for a few steps are all newlines.)"""
    import rung

    return [backend.generate(rung.GenerationRequest(prompt=p, raw=True, max_tokens=12, temperature=1.0,
                                                    seed=i)).text
            for i, p in enumerate(prompts)]


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_the_same_lora_config_trains_on_each_framework(config_file, framework):
    if framework == "jax":
        pytest.importorskip("rung_jax.backend")
    out = config_file.parent / framework
    rung_run(config_file, f"backend.name={framework}", f"output_dir={out}")

    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [m["eval_loss"] for m in metrics if "eval_loss" in m]
    assert len(evals) == 2 and evals[-1] < evals[0] - 0.1, evals  # before the first step and after the last
    assert sum("eval_exact_match" in m for m in metrics) == 2
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert losses[-1] < losses[0], losses
    counts = next(m for m in metrics if "trainable_params" in m)
    assert 0 < counts["trainable_params"] < 0.2 * counts["total_params"]

    # The adapter holds LoRA factors only, in PEFT's names, and says what it was trained on.
    adapter = out / "adapter"
    factors = weights(adapter)
    assert factors and all(".lora_A." in k or ".lora_B." in k for k in factors), sorted(factors)[:4]
    assert any(np.abs(v).max() > 0 for k, v in factors.items() if ".lora_B." in k)  # B starts at zero
    note = json.loads((adapter / "rung_adapter.json").read_text())
    assert note["backend"] == framework and note["base"] == str((out / "base").resolve())
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"] and config["r"] == 8

    # Only the adapters trained: the merged model is the untouched base plus the adapters' update.
    base, merged = weights(out / "base"), weights(out / "model")
    assert sorted(base) == sorted(merged)
    changed = {k for k in base if not np.allclose(base[k], merged[k], atol=1e-6)}
    assert changed and all(k.rsplit(".", 2)[-2] in config["target_modules"] for k in changed), sorted(changed)

    # The adapter loads back on its base (merged in) and changes the model's answers.
    import rung
    from rung_lora import load_adapter

    backend = rung.backend(framework, model=str(out / "base"), device="cpu", precision="fp32")
    before = sampled(backend, PROMPTS)
    load_adapter(backend, str(adapter))
    after = sampled(backend, PROMPTS)
    assert after != before, (before, after)
    served = rung.backend(framework, model=str(out / "model"), device="cpu", precision="fp32")
    assert sampled(served, PROMPTS) == after  # = the merged model the run saved

    # The byte tokenizer had no chat template; the model trained on chatml conversations is
    # saved with chatml (so it is served in the format it learnt), the preset base with none.
    from rung.records import Message

    assert served.tokenizer.apply_chat_template([Message("user", "12+34=")]) == PROMPTS[0]
    assert json.loads((adapter / "tokenizer_config.json").read_text())["chat_template"] == note["chat_template"]
    assert "chat_template" not in json.loads((out / "base" / "tokenizer_config.json").read_text())
