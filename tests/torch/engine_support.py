"""Pieces the engine tests share: a tiny model, a seeded token stream, an objective, a Run.

Imported by the tests and by the scripts they start in subprocesses (`engine_train.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

VOCAB = 64
SEQ = 16


class CountingTokens:
    """An endless, seeded stream of learnable sequences: each token is the previous + stride.

    Batch `i` holds `global_batch` rows; process `rank` of `world_size` gets its slice, so
    1 process x 2B rows sees what 2 processes x B rows see together. The position is the
    batch index: `state_dict()` -> {"index": i}.
    """

    def __init__(self, global_batch: int = 8, seq: int = SEQ, vocab: int = VOCAB, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        assert global_batch % world_size == 0
        self.global_batch, self.seq, self.vocab, self.seed = global_batch, seq, vocab, seed
        self.rank, self.world = rank, world_size
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.index])
        starts = rng.integers(0, self.vocab, size=(self.global_batch, 1))
        strides = rng.integers(1, 4, size=(self.global_batch, 1))
        rows = (starts + strides * np.arange(self.seq)[None, :]) % self.vocab
        per = self.global_batch // self.world
        self.index += 1
        return {"input_ids": rows[self.rank * per:(self.rank + 1) * per].astype(np.int64)}

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index}

    def load_state_dict(self, state) -> None:
        self.index = int(state["index"])


def objective(model, batch):
    """Next-token cross-entropy, plus accuracy as an extra metric."""
    from rung_torch.modeling import forward_logits

    ids = batch["input_ids"]
    logits = forward_logits(model, ids[:, :-1])
    target = ids[:, 1:]
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1))
    accuracy = (logits.argmax(-1) == target).float().mean()
    return loss, {"accuracy": accuracy}


def make_model(seed: int = 0, **architecture) -> torch.nn.Module:
    """rung's Transformer on the "test" preset (vocab 64); a broken model fails the tests."""
    from rung.model_config import preset
    from rung_torch.model import Transformer

    return Transformer(preset("test", vocab_size=VOCAB, max_seq_len=64, **architecture), seed=seed)


def backend_options(**overrides):
    """The backend options the engine reads."""
    from rung_torch.options import TorchOptions

    return TorchOptions(**{"model": "test", "device": "cpu", "precision": "fp32", **overrides})


def make_run(output_dir, seed: int = 0, sinks=("jsonl",)):
    """A real `rung.runner.Run` for a config with the torch backend and the given sinks."""
    from rung.config import make_config
    from rung.runner import Run

    config = make_config({
        "backend": {"name": "torch", "model": "test"},
        "output_dir": str(output_dir),
        "seed": seed,
        "logging": {"sinks": [{"name": name} for name in sinks]},
    })
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    return Run(config)


def training_options(**overrides):
    from rung.training import TrainingOptions

    base = dict(steps=8, batch_size=8, learning_rate=3e-3, warmup_steps=2, log_every=1,
                save_every=None, grad_clip=1.0, resume="never")
    return TrainingOptions(**{**base, **overrides})


def read_metrics(output_dir) -> dict[int, dict[str, Any]]:
    """The JSONL metrics of a run, the last record of each step (a resumed run re-logs some)."""
    import json

    records: dict[int, dict[str, Any]] = {}
    path = Path(output_dir) / "metrics.jsonl"
    if not path.exists():
        return records
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            records[record["step"]] = record
    return records
