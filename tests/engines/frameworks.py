"""The two engines as the contract tests see them: a tiny real model, its objective, and how
to read back what the engine did (the applied learning rate, the train/eval switch).

`test` preset models (vocabulary 64) of rung-torch and rung-jax, a deterministic batch stream
that a test can poison (a NaN loss), end or interrupt at a chosen batch, and a run context
that keeps what the loop logs and reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

VOCAB, SEQ = 64, 16


class Tokens:
    """An endless, seeded, resumable stream of learnable rows (each id the previous + stride).

    Batch `i` has `batch` rows of `input_ids` and shifted `targets`, and a `scale` the test
    objective multiplies the loss by: NaN in batch `nan_at`. `end_at`: the stream ends
    (StopIteration) there; `stop_at`: it raises `Interrupted` there, as a killed run stops.
    """

    def __init__(self, batch: int = 8, seed: int = 0, nan_at: int | None = None,
                 end_at: int | None = None, stop_at: int | None = None) -> None:
        self.batch, self.seed, self.nan_at, self.end_at, self.stop_at = batch, seed, nan_at, end_at, stop_at
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.index == self.end_at:
            raise StopIteration
        if self.index == self.stop_at:
            raise Interrupted(f"stopped before batch {self.index}")
        rng = np.random.default_rng([self.seed, self.index])
        starts = rng.integers(0, VOCAB, size=(self.batch, 1))
        strides = rng.integers(1, 4, size=(self.batch, 1))
        rows = (starts + strides * np.arange(SEQ + 1)[None, :]) % VOCAB
        scale = np.full((self.batch,), np.nan if self.index == self.nan_at else 1.0, np.float32)
        self.index += 1
        return {"input_ids": rows[:, :-1].astype(np.int64), "targets": rows[:, 1:].astype(np.int64),
                "scale": scale}

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index}

    def load_state_dict(self, state) -> None:
        self.index = int(state["index"])


class Halves:
    """Each batch of `inner` as two micro-batches of half the rows."""

    def __init__(self, inner: Tokens) -> None:
        self.inner, self.pending = inner, None

    def __next__(self):
        if self.pending is None:
            batch = next(self.inner)
            half = len(batch["input_ids"]) // 2
            self.pending = {k: v[half:] for k, v in batch.items()}
            return {k: v[:half] for k, v in batch.items()}
        out, self.pending = self.pending, None
        return out

    def state_dict(self):
        return {"inner": self.inner.state_dict()}

    def load_state_dict(self, state):
        self.inner.load_state_dict(state["inner"])


class Interrupted(Exception):
    """The run was stopped from outside (what a kill does, in-process)."""


class RecordingRun:
    """A `rung.context.RunContext` as the engines use it: it keeps what the loop logs and reports."""

    config = None
    seed = 0

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.logs: dict[int, dict[str, Any]] = {}
        self.checkpoints: list[tuple[int, str]] = []

    def log(self, step, metrics) -> None:
        assert step not in self.logs, f"step {step} logged twice"
        self.logs[step] = dict(metrics)

    def checkpointed(self, step, path) -> None:
        assert Path(path).is_dir(), path
        self.checkpoints.append((step, str(path)))


def training_options(**overrides):
    from rung.training import TrainingOptions

    base = dict(steps=4, batch_size=8, learning_rate=3e-3, warmup_steps=2, log_every=1,
                save_every=None, grad_clip=1.0, resume="never")
    return TrainingOptions(**{**base, **overrides})


class TorchFramework:
    name = "torch"

    def __init__(self) -> None:
        import torch

        self.torch = torch

    def engine(self, precision: str = "fp32"):
        from rung.model_config import preset
        from rung_torch.engine import TorchEngine
        from rung_torch.model import Transformer
        from rung_torch.options import TorchOptions

        model = Transformer(preset("test", vocab_size=VOCAB, max_seq_len=64), seed=0)
        return TorchEngine(model, TorchOptions(model="test", device="cpu", precision=precision))

    @staticmethod
    def objective(model, batch):
        import torch

        from rung_torch.objectives import next_token_loss

        loss, _ = next_token_loss(model, batch)
        scale = torch.as_tensor(batch["scale"]).float().mean()
        return loss * scale, {"scale": scale}

    def loss(self, model, batch) -> float:
        """The model's loss on `batch` (called inside the engine's evaluation context)."""
        from rung_torch.objectives import next_token_loss

        return float(next_token_loss(model, batch)[0])

    def applied_lr(self, engine) -> float:
        return engine._steps.optimizer.param_groups[0]["lr"]  # every group gets the same rate

    def in_eval_mode(self, model) -> bool:
        return not model.training and not any(m.training for m in model.modules())

    def gradients_off(self, model) -> bool:
        return not self.torch.is_grad_enabled()

    def weights(self, engine) -> dict[str, np.ndarray]:
        return {k: v.numpy().copy() for k, v in engine.state_dict().items()}

    def checkpoint_name(self, step: int) -> str:
        return f"step-{step:08d}"


class JaxFramework:
    name = "jax"

    def engine(self, precision: str = "fp32"):
        from flax import nnx

        from rung.model_config import preset
        from rung_jax.engine import JaxEngine
        from rung_jax.model import init_model

        model = init_model(preset("test", vocab_size=VOCAB), seed=0)
        # The Llama has no dropout; this one is never called: it shows the train/eval switch.
        model.probe = nnx.Dropout(0.5)
        return JaxEngine(model, precision=precision)

    @staticmethod
    def objective(model, batch):
        import jax.numpy as jnp

        from rung_jax.objectives import next_token_loss

        loss, _ = next_token_loss(model, batch)
        scale = jnp.mean(batch["scale"])
        return loss * scale, {"scale": scale}

    def loss(self, model, batch) -> float:
        from rung_jax.objectives import next_token_loss

        return float(next_token_loss(model, batch)[0])

    def applied_lr(self, engine) -> float:
        return float(engine._steps.opt_state.hyperparams["learning_rate"])

    def in_eval_mode(self, model) -> bool:
        return model.probe.deterministic is True

    def gradients_off(self, model) -> bool:
        import jax
        from flax import nnx

        leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
        return bool(leaves) and not any(isinstance(x, jax.core.Tracer) for x in leaves)

    def weights(self, engine) -> dict[str, np.ndarray]:
        from flax import nnx

        return {".".join(map(str, p)): np.asarray(v.get_value())
                for p, v in nnx.to_flat_state(nnx.state(engine.model, nnx.Param))}

    def checkpoint_name(self, step: int) -> str:
        return str(step)
