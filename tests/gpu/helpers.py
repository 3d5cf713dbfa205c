"""Small real pieces the `cuda` tests share (also imported by fsdp_train.py in a subprocess)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

VOCAB = 64
SEQ = 16


class StrideTokens:
    """An endless, seeded, resumable stream of learnable rows: each id is the previous plus a
    row's stride (1 to 3), modulo `vocab`, offset by `low` (a BatchStream)."""

    def __init__(self, batch: int = 8, seq: int = SEQ, vocab: int = VOCAB, low: int = 0, seed: int = 0) -> None:
        self.batch, self.seq, self.vocab, self.low, self.seed, self.index = batch, seq, vocab, low, seed, 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.index])
        self.index += 1
        starts = rng.integers(0, self.vocab, size=(self.batch, 1))
        strides = rng.integers(1, 4, size=(self.batch, 1))
        rows = self.low + (starts + strides * np.arange(self.seq)[None, :]) % self.vocab
        return {"input_ids": rows.astype(np.int64)}

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index}

    def load_state_dict(self, state) -> None:
        self.index = int(state["index"])


class RecordingRun:
    """What an engine needs of a run: an output folder, `log` and `checkpointed`."""

    def __init__(self, output_dir) -> None:
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.seed = 0
        self.logs: list[tuple[int, dict]] = []

    def log(self, step, metrics) -> None:
        self.logs.append((step, dict(metrics)))

    def checkpointed(self, step, path) -> None:
        pass

    def series(self, key: str) -> list[float]:
        return [metrics[key] for _, metrics in self.logs if key in metrics]


def tiny_model(seed: int = 0, vocab: int = VOCAB, **architecture):
    """rung's Transformer on the `test` preset (~31k parameters besides embeddings)."""
    from rung.model_config import preset
    from rung_torch.model import Transformer

    return Transformer(preset("test", vocab_size=vocab, max_seq_len=64, **architecture), seed=seed)


def torch_options(device, **overrides):
    from rung_torch.options import TorchOptions

    return TorchOptions(**{"model": "test", "device": str(device), "precision": "fp32", **overrides})


def training_options(**overrides):
    from rung.training import TrainingOptions

    base = dict(steps=8, batch_size=8, learning_rate=3e-3, warmup_steps=2, log_every=1, save_every=None,
                grad_clip=1.0, resume="never", keep_checkpoints=1)
    return TrainingOptions(**{**base, **overrides})


def next_token_loss(model, batch):
    """rung's own next-token objective (the one the pretrain trainer asks for by name)."""
    from rung_torch.objectives import next_token_loss as objective

    return objective(model, batch)


def train(model, device, run_dir, steps: int = 8, objective=None, stream=None, **options):
    """`steps` engine steps of the tiny model on `device`; the engine and the run that logged them."""
    from rung_torch.engine import TorchEngine

    engine = TorchEngine(model, torch_options(device, **options))
    run = RecordingRun(run_dir)
    engine.fit(objective or next_token_loss, stream or StrideTokens(), training_options(steps=steps), run)
    return engine, run


def falling(losses: list[float]) -> bool:
    """The mean of the last third of `losses` is below the mean of the first third."""
    third = max(1, len(losses) // 3)
    return float(np.mean(losses[-third:])) < float(np.mean(losses[:third]))
