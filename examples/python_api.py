"""The Python API end to end: build a config in code, run it, then prompt the model it made.

    .venv/bin/python examples/python_api.py [FOLDER]     # default: rung's own source code

The same as `rung run examples/pretrain_folder.yaml data.sources.0.paths=FOLDER ...` on the
command line: the CLI is a thin layer over these calls. A few minutes on a 2-core CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import rung

ROOT = Path(__file__).resolve().parents[1]
folder = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "core")

# 1. A run config as a plain dict: each section names its plugin and that plugin's options.
#    rung.make_config validates it exactly as `rung config validate` validates a YAML file.
config = rung.make_config(
    {
        "output_dir": "runs/python-api",
        "tokenizer": {"name": "bpe", "vocab_size": 1024},
        "data": {"name": "corpus", "sources": [{"name": "files", "paths": [folder]}],
                 "shards": {"val_fraction": 0.1}},
        "backend": {"name": "torch", "model": "test"},   # or "jax": the only change needed
        "trainer": {"name": "pretrain", "steps": 150, "batch_size": 16, "seq_len": 128,
                    "learning_rate": 3e-3, "warmup_steps": 10, "log_every": 25, "eval_every": 75,
                    "sample_every": 150, "sample_prompts": ["def "]},
    },
    overrides=["seed=1"],   # dotted overrides, as on the command line
)

# 2. Run it: prepare the corpus, train the tokenizer, pretrain, save the model.
result = rung.run(config)
print(f"trained {result.steps} steps; final loss {result.final_loss:.3f}; outputs in {result.output_dir}")

# 3. Any backend by name, with its options: here the model this run saved.
model = rung.backend("torch", model=str(Path(result.output_dir) / "model"))
completion = model.generate(rung.GenerationRequest(prompt="def ", max_tokens=40, temperature=0.8, seed=0))
print("generated:", repr(completion.text), f"({completion.usage.completion_tokens} tokens, {completion.finish_reason})")

# 4. Streaming, the same model.
for delta in model.stream(rung.GenerationRequest(prompt="class ", max_tokens=30, seed=1, temperature=0.8)):
    print(delta.text, end="", flush=True)
print()
