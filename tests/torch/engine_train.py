"""Train the tiny model with TorchEngine: run by the engine tests in a subprocess / torchrun.

    python engine_train.py OUT [--steps 8] [--global-batch 8] [--save-every N] [--resume auto]
    torchrun --standalone --nproc_per_node 2 engine_train.py OUT ...

Writes OUT/metrics.jsonl and checkpoints (rank 0) and OUT/result.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine_support as sup  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--save-every", type=int, default=None)
    parser.add_argument("--resume", default="auto")
    parser.add_argument("--distributed", default="auto")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()

    hang_in_save = os.environ.get("ENGINE_TEST_HANG_IN_SAVE")
    if hang_in_save:
        # Stop inside the save of step N, after its tensors are written and before state.json,
        # so the test can SIGKILL a process in the middle of writing a checkpoint.
        from rung_torch.engine import checkpoint

        fsync = checkpoint._fsync_file

        def hanging_fsync(path):
            fsync(path)
            in_save = path.parent.name.startswith(f".tmp-step-{int(hang_in_save):08d}")
            if in_save and path.name == "optimizer.safetensors":
                Path(os.environ["ENGINE_TEST_MARKER"]).write_text("in save")
                while True:
                    time.sleep(1)

        checkpoint._fsync_file = hanging_fsync

    strategies = args.distributed.split(",")
    for strategy in strategies:
        # Several strategies (e.g. "ddp,fsdp"): one after the other in the same processes,
        # each from a fresh model, into OUT/<strategy>.
        out = Path(args.out) / strategy if len(strategies) > 1 else Path(args.out)
        train(args, strategy, out)


def train(args, strategy: str, out: Path) -> None:
    from rung_torch.engine import TorchEngine

    engine = TorchEngine(sup.make_model(0), sup.backend_options(precision=args.precision, distributed=strategy))
    batches = sup.CountingTokens(args.global_batch, rank=engine.rank, world_size=engine.world_size)
    options = sup.training_options(steps=args.steps, batch_size=args.global_batch // engine.world_size,
                                   grad_accum_steps=args.accum, save_every=args.save_every,
                                   resume=args.resume)
    run = sup.make_run(out, sinks=("console", "jsonl") if engine.rank == 0 else ())
    try:
        result = engine.fit(sup.objective, batches, options, run)
    finally:
        run.close()
    full = engine.state_dict()  # every rank: under FSDP it gathers the shards
    if engine.rank == 0:
        reference = sup.make_model(0).state_dict()
        whole = {k: tuple(v.shape) for k, v in full.items()} == {k: tuple(v.shape) for k, v in reference.items()}
        (out / "result.json").write_text(json.dumps(
            {"steps": result.steps, "final_loss": result.final_loss, "checkpoint": result.checkpoint,
             "world_size": engine.world_size, "strategy": engine.strategy, "whole_state_dict": whole}))


if __name__ == "__main__":
    main()
