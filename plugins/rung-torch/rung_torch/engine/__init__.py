"""rung-torch's training engine: the step, optimizer, checkpoints, distribution and metrics
under the core's loop (`rung.loop`).

`TorchEngine(model, options)` is what `TorchBackend.engine()` returns; trainers call
`engine.fit(objective, batches, training_options, run, evaluate=None)`.
"""

from rung_torch.engine.loop import TorchEngine

__all__ = ["TorchEngine"]
