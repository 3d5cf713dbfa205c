"""What a pretraining run tells its user: the model and token budget, the final summary
against the unigram baseline, the samples, and the loss plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rung_pretrain.metrics import RecordingRun, history
from rung_pretrain.trainer_options import PretrainOptions


def describe_model(console: Any, backend: Any, seq_len: int, opts: PretrainOptions) -> None:
    config = getattr(backend, "config", None)
    if config is None or not hasattr(config, "num_params"):
        return
    tokens = opts.steps * opts.grad_accum_steps * opts.batch_size * seq_len
    console.print(
        f"model: {config.num_params() / 1e6:.2f}M parameters ({config.n_layers} layers, dim {config.dim}, "
        f"vocabulary {config.vocab_size}); {opts.steps} steps x {opts.batch_size * opts.grad_accum_steps} x "
        f"{seq_len} tokens = {tokens / 1e6:.2f}M tokens per process",
        highlight=False, markup=False,
    )


def summary(baseline: float | None, val_loss: float | None, train_loss: float | None,
            val_bpb: float | None = None) -> str:
    """The run's last line: baseline, final validation loss (nats/token, perplexity, bits per byte)."""
    parts = []
    if baseline is not None:
        parts.append(f"unigram baseline {baseline:.4f} nats/token")
    if val_loss is not None:
        bpb = f", {val_bpb:.4f} bits/byte" if val_bpb is not None else ""
        text = f"final validation loss {val_loss:.4f} nats/token (perplexity {math.exp(min(val_loss, 50.0)):.1f}{bpb})"
        if baseline is not None:
            text += f", {abs(baseline - val_loss):.2f} nats {'below' if val_loss < baseline else 'ABOVE'} the baseline"
        parts.append(text)
    elif train_loss is not None:
        parts.append(f"final train loss {train_loss:.4f}")
    return "; ".join(parts)


def print_samples(samples: list[tuple[str, str]], path: Path) -> None:
    """The final samples on stdout (the generated text is the output) and in samples.txt."""
    blocks = []
    for i, (prompt, text) in enumerate(samples):
        blocks.append(f"----- sample {i + 1} (prompt {prompt!r}) -----\n{prompt}{text}\n")
    body = "\n".join(blocks)
    path.write_text(body, encoding="utf-8")
    print(body, flush=True)


def plot(run: Any, recorder: RecordingRun, baseline: float | None) -> Path | None:
    """loss.png in the run folder, from the whole run's history."""
    from rung_pretrain.plot import plot_losses

    return plot_losses(history(run, recorder), Path(run.output_dir) / "loss.png", baseline=baseline,
                       title=f"{Path(run.output_dir).name}: pretraining loss")
