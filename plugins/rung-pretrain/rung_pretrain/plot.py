"""The loss curves of a pretraining run as a PNG (matplotlib, headless).

    python -m rung_pretrain.plot runs/stdlib            # re-draw runs/stdlib/loss.png
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def plot_losses(
    records: Iterable[Mapping[str, Any]],
    path: str | Path,
    baseline: float | None = None,
    title: str = "pretraining loss",
) -> Path | None:
    """Train loss (`loss`) and validation loss (`val_loss`) against the step, with the unigram
    baseline as a horizontal line; returns the PNG's path, or None when there is nothing to draw."""
    train = [(r["step"], float(r["loss"])) for r in records if _number(r.get("loss"))]
    val = [(r["step"], float(r["val_loss"])) for r in records if _number(r.get("val_loss"))]
    if baseline is None:
        found = [float(r["unigram_loss"]) for r in records if _number(r.get("unigram_loss"))]
        baseline = found[-1] if found else None
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5), dpi=110)
    ax = figure.add_subplot()
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue", linewidth=1.2)
    if val:
        ax.plot(*zip(*val), label="validation loss", color="tab:orange", marker="o", markersize=3, linewidth=1.5)
    if baseline is not None:
        ax.axhline(baseline, color="tab:gray", linestyle="--", linewidth=1,
                   label=f"unigram baseline ({baseline:.2f})")
    if val:
        step, last = val[-1]
        ax.annotate(f"{last:.3f}", (step, last), textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, bbox_inches="tight")
    return path


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def main(argv: list[str] | None = None) -> int:
    from rung_pretrain.metrics import read_metrics

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m rung_pretrain.plot RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(args[0])
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        print(f"{metrics} not found", file=sys.stderr)
        return 1
    out = plot_losses(read_metrics(metrics), run_dir / "loss.png", title=f"{run_dir.name}: pretraining loss")
    print(out if out else "nothing to plot")
    return 0 if out else 1


if __name__ == "__main__":
    raise SystemExit(main())
